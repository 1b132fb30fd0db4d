"""``/fhir``: create, update and read Patient and ServiceRequest (FHIR R4 REST, JSON).

The interactions are those of FHIR R4 3.1.0 (RESTful API): ``create`` (POST,
201 + Location), ``update`` (PUT at the id, update-as-create when the id is
new), ``read`` (GET), and ``capabilities`` (GET /fhir/metadata). Every error is
an OperationOutcome: 400 for a resource the R4B models reject (with their
message), 404 for an unknown id, 403 without the ``schedule`` action (writing)
or ``query``/``schedule`` (reading), 409 for a state change the order life
cycle refuses, 422 for a valid resource the server will not apply.

Authentication is the app's middleware; authorization is OrderService's, the
same as for HL7, the CLI and ``/api/orders``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dicomhub import __version__
from dicomhub.errors import Conflict, DicomhubError, InvalidRequest, NotFound
from dicomhub.model.caller import Caller
from dicomhub.model.orders import Order, Patient, StepStatus
from dicomhub.services.archive import Archive
from dicomhub.services.orders import OrderKey, OrderService
from dicomhub.telemetry.metrics import count_backend_error
from dicomhub.web.auth import caller_of
from dicomhub.web.errors import UnsupportedMediaType, decode_json_object, http_status
from dicomhub.web.fhir.resources import (
    FHIR_ID,
    Unprocessable,
    fhir_model,
    fhir_status,
    operation_outcome,
    order_from_fhir,
    order_to_fhir,
    parse_patient,
    parse_service_request,
    patient_from_fhir,
    patient_to_fhir,
    subject_of,
)

__all__ = ["FHIR_JSON", "FhirResponse", "answering_outcomes", "routes"]

LOGGER = logging.getLogger("dicomhub.web.fhir")

FHIR_JSON = "application/fhir+json"
# A Patient or ServiceRequest is a few kilobytes; this bounds what we parse.
_MAX_BODY = 1 << 20
# OperationOutcome issue types (FHIR R4 valueset issue-type) per HTTP status.
_ISSUE = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 409: "conflict",
          415: "not-supported", 422: "business-rule", 503: "transient"}  # fmt: skip

Endpoint = Callable[[Request], Awaitable[Response]]


class FhirResponse(JSONResponse):
    media_type = FHIR_JSON


def _outcome(exc: DicomhubError) -> Response:
    count_backend_error(exc, "http")
    status = 422 if isinstance(exc, Unprocessable) else http_status(exc)
    if status == 500:
        LOGGER.error("unexpected error: %s", exc, exc_info=exc)
        return FhirResponse(operation_outcome("fatal", "exception", "internal error"), status_code=500)
    return FhirResponse(
        operation_outcome("error", _ISSUE.get(status, "processing"), str(exc)), status_code=status
    )


def _answering_outcomes(endpoint: Endpoint) -> Endpoint:
    """FHIR clients expect an OperationOutcome for every failure, not our JSON error."""

    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except DicomhubError as exc:
            return _outcome(exc)

    run.__name__ = endpoint.__name__
    run.__doc__ = endpoint.__doc__
    return run


answering_outcomes = _answering_outcomes  # for the other /fhir route modules


async def _resource(request: Request) -> dict[str, Any]:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in (FHIR_JSON, "application/json"):
        raise UnsupportedMediaType(f"send the resource as {FHIR_JSON}, not {media or 'no media type'}")
    raw = await request.body()
    if len(raw) > _MAX_BODY:
        raise InvalidRequest(f"the resource is larger than {_MAX_BODY} bytes")
    return decode_json_object(raw)


def _path_id(request: Request, name: str) -> str:
    rid = str(request.path_params[name])
    if not FHIR_ID.match(rid):
        raise InvalidRequest(f"{rid[:80]!r} is not a FHIR id ([A-Za-z0-9-.], at most 64 characters)")
    return rid


def _same_id(body: dict[str, Any], rid: str) -> None:
    # FHIR R4 3.1.0.4 (update): the resource SHALL carry the id of the URL.
    if body.get("id") != rid:
        raise InvalidRequest(f"the resource's id {body.get('id')!r} is not the id of the URL {rid!r}")


def _answer(resource: dict[str, Any], status: int = 200) -> FhirResponse:
    headers = {}
    if status == 201:
        headers["Location"] = f"/fhir/{resource['resourceType']}/{resource['id']}"
    return FhirResponse(resource, status_code=status, headers=headers)


class _Intake:
    """The blocking half of each interaction (run in the thread pool)."""

    def __init__(self, orders: OrderService) -> None:
        self.orders = orders

    def patient_of(self, order: Order, caller: Caller) -> str:
        try:
            return self.orders.patient(caller, ref=order.patient).resource_id
        except NotFound:
            return ""

    def served_order(self, order: Order, caller: Caller) -> dict[str, Any]:
        return order_to_fhir(order, self.patient_of(order, caller))

    def put_patient(self, body: dict[str, Any], caller: Caller, rid: str) -> tuple[dict[str, Any], bool]:
        patient = patient_from_fhir(parse_patient(body))
        if rid:
            try:
                known = self.orders.patient(caller, ref=patient.ref)
            except NotFound:
                known = None
            if known is not None and known.resource_id != rid:
                # Its identifiers name a patient known under another id: not this resource.
                raise Conflict(f"Patient ID {patient.ref} is Patient/{known.resource_id}, not Patient/{rid}")
        stored, created = self.orders.put_patient(patient, caller, resource_id=rid)
        return patient_to_fhir(stored), created

    def _subject(self, resource: Any, caller: Caller) -> Patient:
        rid, ref = subject_of(resource)
        try:
            return self.orders.patient(caller, resource_id=rid, ref=ref)
        except NotFound:
            raise InvalidRequest(
                f"subject {resource.subject.reference or ref} is not a known Patient (create it first)"
            ) from None

    def create_order(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        resource = parse_service_request(body)
        if resource.status != "active":
            raise Unprocessable(f"a new ServiceRequest is active, not {resource.status!r}")
        order = order_from_fhir(resource, self._subject(resource, caller))
        return self.served_order(self.orders.place_order(order, caller), caller)

    def update_order(self, body: dict[str, Any], caller: Caller, rid: str) -> tuple[dict[str, Any], bool]:
        resource = parse_service_request(body)
        key = OrderKey(order_id=rid)
        try:
            existing: Order | None = self.orders.order(key, caller)
        except NotFound:
            existing = None
        status = str(resource.status)
        if existing is not None and existing.status.final and fhir_status(existing) == status:
            return self.served_order(existing, caller), False  # an update that changes nothing
        if status == "active":
            order = order_from_fhir(resource, self._subject(resource, caller), existing)
            stored = self.orders.replace_order(key, order, caller, create=True)
            return self.served_order(stored, caller), existing is None
        if existing is None:
            raise Unprocessable(f"a new ServiceRequest is active, not {status!r}")
        if status == "revoked":
            started = any(s.status is not StepStatus.SCHEDULED for s in existing.steps)
            moved = (self.orders.discontinue_order if started else self.orders.cancel_order)(key, caller)
        elif status == "completed":
            moved = self.orders.move_step(key, None, StepStatus.COMPLETED, caller)
        else:
            raise Unprocessable(f"status {status!r} is not supported (active, revoked, completed)")
        return self.served_order(moved, caller), False


@functools.cache
def _capabilities() -> dict[str, Any]:
    """The CapabilityStatement, validated by its FHIR model: made on the first
    ``/metadata`` request, as loading the FHIR models costs a start about 0.4 s."""
    interactions = [{"code": c} for c in ("read", "update", "create")]
    statement = fhir_model("CapabilityStatement").model_validate(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-01-01",
            "kind": "instance",
            "software": {"name": "dicomhub", "version": __version__},
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "resource": [
                        *(
                            {"type": kind, "interaction": interactions, "updateCreate": True}
                            for kind in ("Patient", "ServiceRequest")
                        ),
                        {
                            "type": "ImagingStudy",
                            "interaction": [{"code": "read"}, {"code": "search-type"}],
                            "searchParam": [
                                {"name": name, "type": kind}
                                for name, kind in (
                                    ("patient", "reference"),
                                    ("patient.identifier", "token"),
                                    ("identifier", "token"),
                                    ("basedon", "reference"),
                                    ("_id", "token"),
                                )
                            ],
                        },
                    ],
                }
            ],
        }
    )
    out: dict[str, Any] = statement.model_dump(mode="json", exclude_none=True, by_alias=True)
    return out


def routes(archive: Archive) -> list[BaseRoute]:
    """The routes mounted at ``/fhir``."""
    intake = _Intake(archive.orders)
    orders = archive.orders

    async def metadata(_request: Request) -> Response:
        return FhirResponse(await run_in_threadpool(_capabilities))

    async def create_patient(request: Request) -> Response:
        body = await _resource(request)
        # A known identifier updates that patient (200): one patient of record per Patient ID.
        served, created = await run_in_threadpool(intake.put_patient, body, caller_of(request), "")
        return _answer(served, 201 if created else 200)

    async def read_patient(request: Request) -> Response:
        rid = _path_id(request, "patient")
        patient = await run_in_threadpool(orders.patient, caller_of(request), resource_id=rid)
        return _answer(patient_to_fhir(patient))

    async def update_patient(request: Request) -> Response:
        rid = _path_id(request, "patient")
        body = await _resource(request)
        _same_id(body, rid)
        served, created = await run_in_threadpool(intake.put_patient, body, caller_of(request), rid)
        return _answer(served, 201 if created else 200)

    async def create_service_request(request: Request) -> Response:
        body = await _resource(request)
        served = await run_in_threadpool(intake.create_order, body, caller_of(request))
        return _answer(served, 201)

    async def read_service_request(request: Request) -> Response:
        rid = _path_id(request, "order")
        caller = caller_of(request)
        order = await run_in_threadpool(orders.order, OrderKey(order_id=rid), caller)
        return _answer(await run_in_threadpool(intake.served_order, order, caller))

    async def update_service_request(request: Request) -> Response:
        rid = _path_id(request, "order")
        body = await _resource(request)
        _same_id(body, rid)
        served, created = await run_in_threadpool(intake.update_order, body, caller_of(request), rid)
        return _answer(served, 201 if created else 200)

    table: list[tuple[str, Endpoint, str]] = [
        ("/metadata", metadata, "GET"),
        ("/Patient", create_patient, "POST"),
        ("/Patient/{patient}", read_patient, "GET"),
        ("/Patient/{patient}", update_patient, "PUT"),
        ("/ServiceRequest", create_service_request, "POST"),
        ("/ServiceRequest/{order}", read_service_request, "GET"),
        ("/ServiceRequest/{order}", update_service_request, "PUT"),
    ]
    return [Route(path, _answering_outcomes(endpoint), methods=[method]) for path, endpoint, method in table]
