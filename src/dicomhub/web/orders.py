"""``/api/orders`` and ``/api/patients``: orders and patients of record over REST,
for sites without an order system (the same use cases as ``dicomhub order``).

Not under ``/admin``: writing takes the ``schedule`` action (role scheduler) and
reading ``query`` at the archive scope or ``schedule``, which OrderService checks,
so a scheduler needs no administrator's rights. Answers are the JSON of
``Order.public()`` and ``Patient.public()`` (as ``dicomhub order show --json``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomhub.errors import InvalidRequest, NotFound
from dicomhub.model.orders import (
    CodedEntry,
    Order,
    Patient,
    PatientRef,
    RequestedProcedure,
    ScheduledProcedureStep,
    StepStatus,
)
from dicomhub.services.archive import Archive
from dicomhub.services.orders import OrderKey
from dicomhub.web.auth import caller_of
from dicomhub.web.errors import json_object

__all__ = ["ORDER_FIELDS", "PATIENT_FIELDS", "routes"]

_MAX_BODY = 64 * 1024
PATIENT_FIELDS = ("patient_id", "issuer_of_patient_id", "patient_name", "patient_birth_date", "patient_sex")
ORDER_FIELDS = (
    "accession_number", *PATIENT_FIELDS, "modality", "procedure_id", "description", "step_id",
    "station_ae_title", "station_name", "start", "performing_physician", "referring_physician",
    "study_instance_uid", "priority",
)  # fmt: skip


def _strings(body: dict[str, Any], allowed: tuple[str, ...], required: tuple[str, ...]) -> dict[str, str]:
    unknown = sorted(set(body) - set(allowed) - {"code"})
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(allowed)}, code)")
    out: dict[str, str] = {}
    for name in allowed:
        value = body.get(name, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise InvalidRequest(f"{name!r} must be a string")
        out[name] = value.strip()
    for name in required:
        if not out[name]:
            raise InvalidRequest(f"{name!r} is required")
    return out


def _code(value: object) -> CodedEntry:
    if value is None:
        return CodedEntry()
    if not isinstance(value, dict) or not all(isinstance(value.get(k, ""), str) for k in value):
        raise InvalidRequest("'code' must be an object {value, scheme, meaning} of strings")
    if set(value) - {"value", "scheme", "meaning"}:
        raise InvalidRequest("'code' has only value, scheme and meaning")
    return CodedEntry(value.get("value", ""), value.get("scheme", ""), value.get("meaning", ""))


def patient_from_body(body: dict[str, Any]) -> Patient:
    f = _strings(body, PATIENT_FIELDS, ("patient_id",))
    return Patient(
        PatientRef(f["patient_id"], f["issuer_of_patient_id"]),
        f["patient_name"],
        f["patient_birth_date"],
        f["patient_sex"],
    )


def order_from_body(body: dict[str, Any]) -> tuple[Order, Patient]:
    """One requested procedure with one step, as ``dicomhub order add`` makes it."""
    f = _strings(body, ORDER_FIELDS, ("accession_number", "patient_id", "modality"))
    try:
        start = dt.datetime.fromisoformat(f["start"]) if f["start"] else None
    except ValueError:
        raise InvalidRequest(f"'start' {f['start']!r} is not an ISO 8601 date and time") from None
    if start is not None and start.tzinfo is not None:
        start = start.astimezone().replace(tzinfo=None)  # DICOM DA/TM: local time
    priority = f["priority"].upper()
    if priority not in ("", "STAT", "HIGH", "ROUTINE", "MEDIUM", "LOW"):
        raise InvalidRequest(f"'priority' {f['priority']!r} is not STAT, HIGH, ROUTINE, MEDIUM or LOW")
    patient = Patient(
        PatientRef(f["patient_id"], f["issuer_of_patient_id"]),
        f["patient_name"],
        f["patient_birth_date"],
        f["patient_sex"],
    )
    procedure_id = f["procedure_id"] or f["accession_number"]
    step = ScheduledProcedureStep(
        f["step_id"] or procedure_id,
        modality=f["modality"],
        description=f["description"],
        station_ae_title=f["station_ae_title"],
        station_name=f["station_name"],
        start=start,
        performing_physician=f["performing_physician"],
    )
    order = Order(
        accession_number=f["accession_number"],
        patient=patient.ref,
        referring_physician=f["referring_physician"],
        patient_name=patient.patient_name,
        patient_birth_date=patient.patient_birth_date,
        patient_sex=patient.patient_sex,
        source="rest",
        procedures=(
            RequestedProcedure(
                procedure_id,
                f["description"],
                _code(body.get("code")),
                f["study_instance_uid"],
                priority,
                steps=(step,),
            ),
        ),
    )
    return order, patient


def _limit(request: Request) -> int:
    try:
        return max(1, min(int(request.query_params.get("limit", "1000")), 10000))
    except ValueError:
        raise InvalidRequest("limit must be an integer") from None


def routes(archive: Archive) -> list[BaseRoute]:
    """The routes mounted at ``/api``."""
    orders = archive.orders

    def _find(request: Request) -> Order:
        # By id, or (as the CLI) by Accession Number when no order has that id.
        caller = caller_of(request)
        name = str(request.path_params["order"])
        try:
            return orders.order(OrderKey(order_id=name), caller)
        except NotFound:
            return orders.order(OrderKey(accession_number=name), caller)

    async def list_orders(request: Request) -> JSONResponse:
        params = request.query_params
        try:
            status = [StepStatus[s.upper().replace(" ", "_")] for s in params.getlist("status")]
        except KeyError as exc:
            raise InvalidRequest(f"unknown status {exc.args[0]!r}") from None
        patient = (
            PatientRef(params["patient_id"], params.get("issuer", "")) if params.get("patient_id") else None
        )
        found = await run_in_threadpool(
            orders.orders, caller_of(request), status=status, patient=patient, limit=_limit(request)
        )
        return JSONResponse([o.public() for o in found])

    async def add_order(request: Request) -> JSONResponse:
        order, patient = order_from_body(await json_object(request, _MAX_BODY))
        placed = await run_in_threadpool(orders.place_order, order, caller_of(request), patient)
        return JSONResponse(placed.public(), status_code=201)

    def _shown(request: Request) -> dict[str, Any]:
        order = _find(request)
        shown = order.public()
        # Order read-back lists the studies linked to it (services/links.py).
        linked = archive.links.linked_studies(OrderKey(order_id=order.order_id), caller_of(request))
        shown["studies"] = [s.public() for s in linked]
        return shown

    async def show_order(request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(_shown, request))

    async def cancel_order(request: Request) -> JSONResponse:
        order = await run_in_threadpool(_find, request)
        done = await run_in_threadpool(
            orders.cancel_order, OrderKey(order_id=order.order_id), caller_of(request)
        )
        return JSONResponse(done.public())

    async def discontinue_order(request: Request) -> JSONResponse:
        order = await run_in_threadpool(_find, request)
        done = await run_in_threadpool(
            orders.discontinue_order, OrderKey(order_id=order.order_id), caller_of(request)
        )
        return JSONResponse(done.public())

    async def list_patients(request: Request) -> JSONResponse:
        found = await run_in_threadpool(orders.patients, caller_of(request), _limit(request))
        return JSONResponse([p.public() for p in found])

    async def add_patient(request: Request) -> JSONResponse:
        """Create the patient of record (201), or replace its demographics (200)."""
        patient = patient_from_body(await json_object(request, _MAX_BODY))
        stored, created = await run_in_threadpool(orders.put_patient, patient, caller_of(request))
        return JSONResponse(stored.public(), status_code=201 if created else 200)

    async def show_patient(request: Request) -> JSONResponse:
        patient = await run_in_threadpool(
            orders.patient, caller_of(request), resource_id=str(request.path_params["patient"])
        )
        return JSONResponse(patient.public())

    return [
        Route("/orders", list_orders, methods=["GET"]),
        Route("/orders", add_order, methods=["POST"]),
        Route("/orders/{order}", show_order, methods=["GET"]),
        Route("/orders/{order}/cancel", cancel_order, methods=["POST"]),
        Route("/orders/{order}/discontinue", discontinue_order, methods=["POST"]),
        Route("/patients", list_patients, methods=["GET"]),
        Route("/patients", add_patient, methods=["POST"]),
        Route("/patients/{patient}", show_patient, methods=["GET"]),
    ]
