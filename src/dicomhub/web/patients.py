"""``PUT /api/studies/{study}/patient``: file a stored study that arrived under the
wrong patient under the right one (as ``dicomhub study set-patient``).

The body names the patient (``patient_id``, optional ``issuer_of_patient_id``,
and optional demographics; missing ones come from the patient of record, else
the archive's patient with that Patient ID). Needs the ``administer`` action.
The answer is the patient the study is now filed under; its stored objects stay
as received and leave the archive corrected.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomhub.errors import InvalidRequest
from dicomhub.model.orders import PatientRef
from dicomhub.services.archive import Archive
from dicomhub.web.auth import caller_of
from dicomhub.web.errors import json_object
from dicomhub.web.orders import PATIENT_FIELDS

__all__ = ["SET_PATIENT_FIELDS", "routes"]

_MAX_BODY = 16 * 1024
SET_PATIENT_FIELDS = PATIENT_FIELDS


def _fields(body: dict[str, Any]) -> dict[str, str | None]:
    unknown = sorted(set(body) - set(SET_PATIENT_FIELDS))
    if unknown:
        raise InvalidRequest(
            f"unknown field(s) {', '.join(unknown)} (known: {', '.join(SET_PATIENT_FIELDS)})"
        )
    out: dict[str, str | None] = {}
    for name in SET_PATIENT_FIELDS:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"{name!r} must be a string")
        out[name] = None if value is None else value.strip()
    if not out["patient_id"]:
        raise InvalidRequest("'patient_id' is required")
    return out


def routes(archive: Archive) -> list[BaseRoute]:
    patients = archive.patients

    async def set_patient(request: Request) -> JSONResponse:
        f = _fields(await json_object(request, _MAX_BODY))
        done = await run_in_threadpool(
            lambda: patients.set_patient(
                str(request.path_params["study"]),
                PatientRef(f["patient_id"] or "", f["issuer_of_patient_id"] or ""),
                caller_of(request),
                patient_name=f["patient_name"],
                patient_birth_date=f["patient_birth_date"],
                patient_sex=f["patient_sex"],
            )
        )
        return JSONResponse({"study_instance_uid": done.study_instance_uid, **done.values()})

    return [Route("/studies/{study}/patient", set_patient, methods=["PUT"])]
