"""``dicomhub order add|list|show|cancel|discontinue`` and ``dicomhub patient list|show|set``:
order context for sites without an order system (docs/orders.md).

The commands act as the operator at the command line (:meth:`Caller.cli`), audited
like every other channel; they work on the index directly, while the server runs or not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from dicomhub.config import Settings
from dicomhub.errors import InvalidRequest, NotFound
from dicomhub.model.caller import Caller
from dicomhub.model.orders import (
    CodedEntry,
    Order,
    Patient,
    PatientRef,
    RequestedProcedure,
    ScheduledProcedureStep,
    StepStatus,
)
from dicomhub.services.orders import OrderKey

__all__ = ["add_commands"]


def add_commands(sub: Any, settings_args: Any) -> None:
    order = sub.add_parser("order", help="orders (imaging service requests) and their scheduled steps")
    actions = order.add_subparsers(dest="order_command", required=True)

    p = actions.add_parser("add", help="schedule an order: one requested procedure with one step")
    settings_args(p)
    p.add_argument("--accession-number", required=True)
    p.add_argument("--patient-id", required=True)
    p.add_argument("--issuer", default="", help="Issuer of Patient ID")
    p.add_argument("--patient-name", default="", help="DICOM PN: Family^Given")
    p.add_argument("--birth-date", default="", help="YYYYMMDD")
    p.add_argument("--sex", default="", choices=["", "M", "F", "O"])
    p.add_argument("--modality", required=True)
    p.add_argument("--procedure-id", help="Requested Procedure ID (default: the Accession Number)")
    p.add_argument("--description", default="", help="Requested Procedure Description")
    p.add_argument("--code", default="", metavar="VALUE^SCHEME^MEANING", help="Requested Procedure Code")
    p.add_argument("--step-id", help="Scheduled Procedure Step ID (default: the procedure id)")
    p.add_argument("--station-ae-title", default="")
    p.add_argument("--station-name", default="")
    p.add_argument("--start", help="scheduled start, ISO 8601 local time (YYYY-MM-DDTHH:MM)")
    p.add_argument("--performing-physician", default="")
    p.add_argument("--referring-physician", default="")
    p.add_argument("--study-instance-uid", default="")
    p.set_defaults(run=_add)

    p = actions.add_parser("list", help="orders, oldest first")
    settings_args(p)
    p.add_argument("--status", action="append", default=[], choices=[s.name.lower() for s in StepStatus])
    p.add_argument("--patient-id")
    p.add_argument("--issuer", default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_list)

    for name, help_text in (
        ("show", "one order, as JSON"),
        ("cancel", "cancel an order none of whose steps started"),
        ("discontinue", "discontinue an order's open steps"),
    ):
        p = actions.add_parser(name, help=help_text)
        settings_args(p)
        p.add_argument("order", help="the order's id or Accession Number")
        p.set_defaults(run=_one, order_action=name)

    patient = sub.add_parser(
        "patient", help="patients of record (demographics as the order system knows them)"
    )
    actions = patient.add_subparsers(dest="patient_command", required=True)
    p = actions.add_parser("list", help="patients of record")
    settings_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_patients)
    p = actions.add_parser("show", help="one patient of record, as JSON")
    settings_args(p)
    p.add_argument("patient_id")
    p.add_argument("--issuer", default="")
    p.set_defaults(run=_patient)


def _archive(settings: Settings) -> Any:
    from dicomhub.bootstrap import open_archive

    return open_archive(settings)


def _code(text: str) -> CodedEntry:
    value, _, rest = text.partition("^")
    scheme, _, meaning = rest.partition("^")
    return CodedEntry(value, scheme, meaning)


def _add(settings: Settings, args: argparse.Namespace) -> int:
    try:
        start = dt.datetime.fromisoformat(args.start) if args.start else None
    except ValueError:
        raise InvalidRequest(f"--start {args.start!r} is not an ISO 8601 date and time") from None
    procedure_id = args.procedure_id or args.accession_number
    patient = Patient(PatientRef(args.patient_id, args.issuer), args.patient_name, args.birth_date, args.sex)
    order = Order(
        accession_number=args.accession_number,
        patient=patient.ref,
        referring_physician=args.referring_physician,
        patient_name=args.patient_name,
        patient_birth_date=args.birth_date,
        patient_sex=args.sex,
        source="cli",
        procedures=(
            RequestedProcedure(
                procedure_id,
                args.description,
                _code(args.code),
                args.study_instance_uid,
                steps=(
                    ScheduledProcedureStep(
                        args.step_id or procedure_id,
                        modality=args.modality,
                        description=args.description,
                        station_ae_title=args.station_ae_title,
                        station_name=args.station_name,
                        start=start,
                        performing_physician=args.performing_physician,
                    ),
                ),
            ),
        ),
    )
    archive = _archive(settings)
    try:
        placed = archive.orders.place_order(order, Caller.cli(), patient)
    finally:
        archive.close()
    print(f"dicomhub: order {placed.order_id} scheduled (Accession Number {placed.accession_number})")
    return 0


def _row(o: Order) -> str:
    modalities = ",".join(sorted({s.modality for s in o.steps if s.modality})) or "-"
    status = o.status.value
    return f"{o.order_id}  {o.accession_number:<16} {status:<12} {modalities:<6} {o.patient} {o.patient_name}"


def _list(settings: Settings, args: argparse.Namespace) -> int:
    status = [StepStatus[s.upper()] for s in args.status]
    patient = PatientRef(args.patient_id, args.issuer) if args.patient_id else None
    archive = _archive(settings)
    try:
        found = archive.orders.orders(Caller.cli(), status=status, patient=patient)
    finally:
        archive.close()
    if args.json:
        print(json.dumps([o.public() for o in found], indent=2))
    else:
        for o in found:
            print(_row(o))
    return 0


def _one(settings: Settings, args: argparse.Namespace) -> int:
    archive = _archive(settings)
    try:
        key = OrderKey(order_id=args.order)
        try:
            archive.orders.order(key, Caller.cli())
        except NotFound:
            key = OrderKey(accession_number=args.order)  # not an id: an Accession Number
        if args.order_action == "show":
            print(json.dumps(archive.orders.order(key, Caller.cli()).public(), indent=2))
            return 0
        change = (
            archive.orders.cancel_order if args.order_action == "cancel" else archive.orders.discontinue_order
        )
        done = change(key, Caller.cli())
    finally:
        archive.close()
    print(f"dicomhub: order {done.order_id} is {done.status.value}")
    return 0


def _patients(settings: Settings, args: argparse.Namespace) -> int:
    archive = _archive(settings)
    try:
        found = archive.orders.patients(Caller.cli())
    finally:
        archive.close()
    if args.json:
        print(json.dumps([p.public() for p in found], indent=2))
    else:
        for p in found:
            merged = f"  (merged into {p.merged_into})" if p.merged_into else ""
            print(f"{p.ref!s:<32} {p.patient_name:<32} {p.patient_birth_date:<8} {p.patient_sex}{merged}")
    return 0


def _patient(settings: Settings, args: argparse.Namespace) -> int:
    archive = _archive(settings)
    try:
        found = archive.orders.patient(Caller.cli(), ref=PatientRef(args.patient_id, args.issuer))
    finally:
        archive.close()
    print(json.dumps(found.public(), indent=2))
    return 0
