"""``/admin/routes``: the routing rules with their queue depth, the queue's items, a
manual retry, and the routing of one study (administrators only, as every
``/admin`` route; docs/routing.md)."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomhub.errors import InvalidRequest
from dicomhub.model.identifiers import require_uid
from dicomhub.model.routing import STATES
from dicomhub.services.archive import Archive

__all__ = ["route_paths", "routes"]

_NO_STORE = {"Cache-Control": "no-store"}


def routes(archive: Archive) -> list[BaseRoute]:
    """The routes mounted at ``/admin``."""
    routing = archive.routing

    async def rules(_request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(routing.rules), headers=_NO_STORE)

    async def queue(request: Request) -> JSONResponse:
        q = request.query_params
        raw = q.get("limit", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= 10000:
            raise InvalidRequest("limit must be an integer from 1 to 10000")
        state, route = q.get("state", ""), q.get("route", "")
        if not state and not route and "limit" not in q:
            return JSONResponse(await run_in_threadpool(routing.depth), headers=_NO_STORE)
        found = await run_in_threadpool(routing.items, state, route, int(raw))
        return JSONResponse(found, headers=_NO_STORE)

    async def retry(request: Request) -> JSONResponse:
        q = request.query_params
        dead = q.get("dead", "false").lower()
        if dead not in ("true", "false", "1", "0"):
            raise InvalidRequest("dead must be true or false")
        count = await run_in_threadpool(routing.retry, q.get("route", ""), dead in ("true", "1"))
        return JSONResponse({"requeued": count}, headers=_NO_STORE)

    async def study(request: Request) -> JSONResponse:
        uid = require_uid(request.path_params["study"], "StudyInstanceUID")
        return JSONResponse(await run_in_threadpool(routing.study_status, uid), headers=_NO_STORE)

    return [
        Route("/routes", rules, methods=["GET"]),
        Route("/routes/queue", queue, methods=["GET"]),
        Route("/routes/retry", retry, methods=["POST"]),
        Route("/routes/studies/{study}", study, methods=["GET"]),
    ]


_ERROR = {"$ref": "#/components/schemas/Error"}
_STATE = {"type": "string", "enum": list(STATES)}
_COUNTS = {
    "type": "object",
    "description": "Items per state.",
    "additionalProperties": {"type": "integer"},
}
_ITEM: dict[str, Any] = {
    "type": "object",
    "required": ["route", "destination", "study_instance_uid", "sop_instance_uid", "state", "attempts"],
    "properties": {
        "route": {"type": "string"},
        "destination": {"type": "string", "description": "A peer name or folder:PATH."},
        "study_instance_uid": {"type": "string"},
        "sop_instance_uid": {"type": "string"},
        "state": _STATE,
        "attempts": {"type": "integer", "description": "Failed attempts so far."},
        "not_before": {"type": "string", "format": "date-time"},
        "owner": {"type": ["string", "null"], "description": "The node sending it now."},
        "lease_until": {"type": ["string", "null"], "format": "date-time"},
        "last_error": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
}
_DEPTH: dict[str, Any] = {
    "type": "object",
    "required": ["route", "destination", "state", "count"],
    "properties": {
        "route": {"type": "string"},
        "destination": {"type": "string"},
        "state": _STATE,
        "count": {"type": "integer"},
    },
}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def route_paths() -> dict[str, Any]:
    """The OpenAPI path items of ``/admin/routes``."""
    bad = _json("A bad parameter.", _ERROR)
    return {
        "/admin/routes": {
            "get": {
                "summary": "The routing rules ([[route]]), each with its queue depth per destination "
                "and state.",
                "responses": {
                    "200": _json(
                        "One object per rule.",
                        {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "on", "when", "to", "queue"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "on": {"type": "string", "enum": ["stored", "stable"]},
                                    "when": {"type": "object"},
                                    "to": {"type": "array", "items": {"type": "string"}},
                                    "transfer_syntax": {"type": ["string", "null"]},
                                    "max_attempts": {"type": "integer"},
                                    "queue": {"type": "object", "additionalProperties": _COUNTS},
                                },
                            },
                        },
                    )
                },
            }
        },
        "/admin/routes/queue": {
            "get": {
                "summary": "The outbound queue: its depth per route, destination and state; with state, "
                "route or limit, its items (oldest first).",
                "parameters": [
                    {"name": "state", "in": "query", "schema": _STATE},
                    {"name": "route", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100},
                    },
                ],
                "responses": {
                    "200": _json(
                        "Depth rows, or items.",
                        {"type": "array", "items": {"oneOf": [_DEPTH, _ITEM]}},
                    ),
                    "400": bad,
                },
            }
        },
        "/admin/routes/retry": {
            "post": {
                "summary": "Send failed items again now, their attempts counted afresh: dead ones, and "
                "(without dead=true) those waiting for a retry.",
                "parameters": [
                    {"name": "route", "in": "query", "schema": {"type": "string"}},
                    {"name": "dead", "in": "query", "schema": {"type": "boolean", "default": False}},
                ],
                "responses": {
                    "200": _json(
                        "How many items were requeued.",
                        {
                            "type": "object",
                            "required": ["requeued"],
                            "properties": {"requeued": {"type": "integer"}},
                        },
                    ),
                    "400": bad,
                },
            }
        },
        "/admin/routes/studies/{study}": {
            "get": {
                "summary": "The routing of one study: its queue items and their counts per route, "
                "destination and state.",
                "parameters": [
                    {"name": "study", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _json(
                        "The study's routing.",
                        {
                            "type": "object",
                            "required": ["study_instance_uid", "routes", "items"],
                            "properties": {
                                "study_instance_uid": {"type": "string"},
                                "routes": {
                                    "type": "object",
                                    "additionalProperties": {
                                        "type": "object",
                                        "additionalProperties": _COUNTS,
                                    },
                                },
                                "items": {"type": "array", "items": _ITEM},
                            },
                        },
                    ),
                    "400": bad,
                },
            }
        },
    }
