"""``dicomhub order add|list|show|cancel|discontinue`` and ``dicomhub patient list|show|set``:
order context for sites without an order system (docs/orders.md).

The commands act as the operator at the command line (:meth:`Caller.cli`), audited
like every other channel; they work on the index directly, while the server runs or not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import TYPE_CHECKING

from dicomhub.cli.options import ARCHIVE
from dicomhub.cli.registry import arg, command, group
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

if TYPE_CHECKING:
    from dicomhub.services.archive import Archive

__all__: list[str] = []

group("order", help="orders (imaging service requests) and their scheduled steps")
group("patient", help="patients of record (demographics as the order system knows them)")


def _archive(settings: Settings) -> Archive:
    from dicomhub.bootstrap import open_archive

    return open_archive(settings)


def _code(text: str) -> CodedEntry:
    value, _, rest = text.partition("^")
    scheme, _, meaning = rest.partition("^")
    return CodedEntry(value, scheme, meaning)


@command(
    "order add",
    help="schedule an order: one requested procedure with one step",
    shared=ARCHIVE,
    args=(
        arg("--accession-number", required=True),
        arg("--patient-id", required=True),
        arg("--issuer", default="", help="Issuer of Patient ID"),
        arg("--patient-name", default="", help="DICOM PN: Family^Given"),
        arg("--birth-date", default="", help="YYYYMMDD"),
        arg("--sex", default="", choices=["", "M", "F", "O"]),
        arg("--modality", required=True),
        arg("--procedure-id", help="Requested Procedure ID (default: the Accession Number)"),
        arg("--description", default="", help="Requested Procedure Description"),
        arg("--code", default="", metavar="VALUE^SCHEME^MEANING", help="Requested Procedure Code"),
        arg("--step-id", help="Scheduled Procedure Step ID (default: the procedure id)"),
        arg("--station-ae-title", default=""),
        arg("--station-name", default=""),
        arg("--start", help="scheduled start, ISO 8601 local time (YYYY-MM-DDTHH:MM)"),
        arg("--performing-physician", default=""),
        arg("--referring-physician", default=""),
        arg("--study-instance-uid", default=""),
    ),
)
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
    with _archive(settings) as archive:
        placed = archive.orders.place_order(order, Caller.cli(), patient)
    print(f"dicomhub: order {placed.order_id} scheduled (Accession Number {placed.accession_number})")
    return 0


def _row(o: Order) -> str:
    modalities = ",".join(sorted({s.modality for s in o.steps if s.modality})) or "-"
    status = o.status.value
    return f"{o.order_id}  {o.accession_number:<16} {status:<12} {modalities:<6} {o.patient} {o.patient_name}"


@command(
    "order list",
    help="orders, oldest first",
    shared=ARCHIVE,
    args=(
        arg("--status", action="append", default=[], choices=[s.name.lower() for s in StepStatus]),
        arg("--patient-id"),
        arg("--issuer", default=""),
        arg("--json", action="store_true"),
    ),
)
def _list(settings: Settings, args: argparse.Namespace) -> int:
    status = [StepStatus[s.upper()] for s in args.status]
    patient = PatientRef(args.patient_id, args.issuer) if args.patient_id else None
    with _archive(settings) as archive:
        found = archive.orders.orders(Caller.cli(), status=status, patient=patient)
    if args.json:
        print(json.dumps([o.public() for o in found], indent=2))
    else:
        for o in found:
            print(_row(o))
    return 0


def _one(settings: Settings, args: argparse.Namespace, action: str) -> int:
    with _archive(settings) as archive:
        key = OrderKey(order_id=args.order)
        try:
            archive.orders.order(key, Caller.cli())
        except NotFound:
            key = OrderKey(accession_number=args.order)  # not an id: an Accession Number
        if action == "show":
            shown = archive.orders.order(key, Caller.cli()).public()
            shown["studies"] = [s.public() for s in archive.links.linked_studies(key, Caller.cli())]
            print(json.dumps(shown, indent=2))
            return 0
        change = (
            archive.orders.cancel_order if action == "cancel" else archive.orders.discontinue_order
        )
        done = change(key, Caller.cli())
    print(f"dicomhub: order {done.order_id} is {done.status.value}")
    return 0


@command(
    "patient list",
    help="patients of record",
    shared=ARCHIVE,
    args=(arg("--json", action="store_true"),),
)
def _patients(settings: Settings, args: argparse.Namespace) -> int:
    with _archive(settings) as archive:
        found = archive.orders.patients(Caller.cli())
    if args.json:
        print(json.dumps([p.public() for p in found], indent=2))
    else:
        for p in found:
            merged = f"  (merged into {p.merged_into})" if p.merged_into else ""
            print(f"{p.ref!s:<32} {p.patient_name:<32} {p.patient_birth_date:<8} {p.patient_sex}{merged}")
    return 0


@command(
    "patient show",
    help="one patient of record, as JSON",
    shared=ARCHIVE,
    args=(arg("patient_id"), arg("--issuer", default="")),
)
def _patient(settings: Settings, args: argparse.Namespace) -> int:
    with _archive(settings) as archive:
        found = archive.orders.patient(Caller.cli(), ref=PatientRef(args.patient_id, args.issuer))
    print(json.dumps(found.public(), indent=2))
    return 0


_ORDER = (arg("order", help="the order's id or Accession Number"),)


@command("order show", help="one order, as JSON", shared=ARCHIVE, args=_ORDER)
def _show(settings: Settings, args: argparse.Namespace) -> int:
    return _one(settings, args, "show")


@command("order cancel", help="cancel an order none of whose steps started", shared=ARCHIVE, args=_ORDER)
def _cancel(settings: Settings, args: argparse.Namespace) -> int:
    return _one(settings, args, "cancel")


@command("order discontinue", help="discontinue an order's open steps", shared=ARCHIVE, args=_ORDER)
def _discontinue(settings: Settings, args: argparse.Namespace) -> int:
    return _one(settings, args, "discontinue")
