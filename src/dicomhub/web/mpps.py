"""``/api/mpps``: the Modality Performed Procedure Steps received, with their status and
the orders they are linked to (as ``dicomhub mpps list``); read-only, as the
modalities are the only writers. Reading takes what reading orders takes.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomhub.errors import InvalidRequest
from dicomhub.model.mpps import PerformedStepStatus
from dicomhub.services.archive import Archive
from dicomhub.web.auth import caller_of

__all__ = ["mpps_paths", "routes"]

_STATUS_NAMES = {s.name.lower(): s for s in PerformedStepStatus}


def _query(request: Request) -> dict[str, Any]:
    params = request.query_params
    try:
        status = [_STATUS_NAMES[s.lower().replace(" ", "_")] for s in params.getlist("status")]
    except KeyError as exc:
        raise InvalidRequest(
            f"unknown status {exc.args[0]!r} (in_progress, completed, discontinued)"
        ) from None
    linked_text = params.get("linked", "")
    if linked_text not in ("", "true", "false"):
        raise InvalidRequest("linked must be true or false")
    try:
        limit = max(1, min(int(params.get("limit", "1000")), 10000))
    except ValueError:
        raise InvalidRequest("limit must be an integer") from None
    return {"status": status, "linked": None if not linked_text else linked_text == "true", "limit": limit}


def routes(archive: Archive) -> list[BaseRoute]:
    """The routes mounted at ``/api``."""
    mpps = archive.mpps

    async def list_steps(request: Request) -> JSONResponse:
        found = await run_in_threadpool(mpps.steps, caller_of(request), **_query(request))
        return JSONResponse([s.public() for s in found])

    async def show_step(request: Request) -> JSONResponse:
        uid = str(request.path_params["mpps"])
        caller = caller_of(request)

        def find() -> dict[str, object]:
            step = mpps.show(uid, caller)
            return {**step.public(), "attributes": step.dataset().to_json_dict()}

        return JSONResponse(await run_in_threadpool(find))

    return [
        Route("/mpps", list_steps, methods=["GET"]),
        Route("/mpps/{mpps}", show_step, methods=["GET"]),
    ]


# ---------------------------------------------------------------- OpenAPI

_STRING = {"type": "string"}
_NULLABLE = {"type": ["string", "null"]}
_ERROR = {"$ref": "#/components/schemas/Error"}
_STEP: dict[str, Any] = {
    "type": "object",
    "description": "A performed procedure step (as `dicomhub mpps list --json`).",
    "required": ["sop_instance_uid", "status", "linked_orders", "linked"],
    "properties": {
        "sop_instance_uid": _STRING,
        "status": {"type": "string", "enum": [s.value for s in PerformedStepStatus]},
        "modality": _STRING,
        "patient_id": _STRING,
        "calling_ae_title": _STRING,
        "scheduled_steps": {"type": "array", "items": {"type": "object"}},
        "linked_orders": {"type": "array", "items": _STRING},
        "linked": {"type": "boolean"},
        "created_at": _NULLABLE,
        "updated_at": _NULLABLE,
        "attributes": {"type": "object"},
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def mpps_paths() -> dict[str, Any]:
    """The OpenAPI paths of these routes (merged into the document)."""
    errors = {
        "400": _error("A malformed parameter."),
        "401": {"$ref": "#/components/responses/Unauthorized"},
        "403": _error("The caller may not read orders."),
    }
    return {
        "/api/mpps": {
            "get": {
                "operationId": "listPerformedProcedureSteps",
                "summary": "Performed procedure steps (MPPS), oldest first",
                "tags": ["Orders"],
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "description": "Only steps in this state (repeatable).",
                        "schema": {"type": "string", "enum": list(_STATUS_NAMES)},
                    },
                    {
                        "name": "linked",
                        "in": "query",
                        "description": "true: only steps linked to an order; false: only unscheduled ones.",
                        "schema": {"type": "string", "enum": ["true", "false"]},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "At most this many (1-10000).",
                        "schema": {"type": "integer"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The steps.",
                        "content": {"application/json": {"schema": {"type": "array", "items": _STEP}}},
                    },
                    **errors,
                },
            }
        },
        "/api/mpps/{mpps}": {
            "get": {
                "operationId": "getPerformedProcedureStep",
                "summary": "One performed procedure step with its attributes (DICOM JSON)",
                "tags": ["Orders"],
                "parameters": [
                    {
                        "name": "mpps",
                        "in": "path",
                        "required": True,
                        "description": "The performed procedure step's SOP Instance UID.",
                        "schema": _STRING,
                    }
                ],
                "responses": {
                    "200": {"description": "The step.", "content": {"application/json": {"schema": _STEP}}},
                    **errors,
                    "404": _error("No such step."),
                },
            }
        },
    }
