"""``/admin/webhooks``: each configured webhook, where it is in the change log, and its
delivery log (administrators only, as every ``/admin`` route)."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomhub.errors import InvalidRequest, NotFound
from dicomhub.services.archive import Archive

__all__ = ["routes", "webhook_paths"]


def routes(archive: Archive) -> list[BaseRoute]:
    """The routes mounted at ``/admin``."""
    hooks = archive.webhooks

    async def status(_request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(hooks.status), headers={"Cache-Control": "no-store"})

    async def deliveries(request: Request) -> JSONResponse:
        raw = request.query_params.get("limit", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= 10000:
            raise InvalidRequest("limit must be an integer from 1 to 10000")
        name = str(request.path_params["name"])
        try:
            found = await run_in_threadpool(hooks.deliveries, name, int(raw))
        except KeyError:
            raise NotFound(f"no webhook {name!r} is configured") from None
        return JSONResponse(found, headers={"Cache-Control": "no-store"})

    return [
        Route("/webhooks", status, methods=["GET"]),
        Route("/webhooks/{name}/deliveries", deliveries, methods=["GET"]),
    ]


_ERROR = {"$ref": "#/components/schemas/Error"}
_DELIVERY: dict[str, Any] = {
    "type": "object",
    "required": ["webhook", "seq", "event", "uid", "attempt", "outcome", "error", "at"],
    "properties": {
        "webhook": {"type": "string"},
        "seq": {"type": "integer", "description": "The change log entry delivered."},
        "event": {"type": "string"},
        "uid": {"type": "string"},
        "attempt": {"type": "integer"},
        "outcome": {"type": "string", "enum": ["delivered", "failed", "gave-up"]},
        "status_code": {"type": ["integer", "null"]},
        "error": {"type": "string"},
        "at": {"type": "string", "format": "date-time"},
    },
}


def webhook_paths() -> dict[str, Any]:
    """The OpenAPI path items of ``/admin/webhooks``."""
    return {
        "/admin/webhooks": {
            "get": {
                "summary": "The configured webhooks, their position in the change log and latest attempts.",
                "responses": {
                    "200": {
                        "description": "One object per webhook.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["name", "url", "events", "position", "deliveries"],
                                        "properties": {
                                            "name": {"type": "string"},
                                            "url": {"type": "string"},
                                            "events": {"type": "array", "items": {"type": "string"}},
                                            "position": {"type": "integer"},
                                            "deliveries": {"type": "array", "items": _DELIVERY},
                                        },
                                    },
                                }
                            }
                        },
                    }
                },
            }
        },
        "/admin/webhooks/{name}/deliveries": {
            "get": {
                "summary": "The delivery log of one webhook, newest first.",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The attempts.",
                        "content": {"application/json": {"schema": {"type": "array", "items": _DELIVERY}}},
                    },
                    "400": {
                        "description": "A bad limit.",
                        "content": {"application/json": {"schema": _ERROR}},
                    },
                    "404": {
                        "description": "No such webhook is configured.",
                        "content": {"application/json": {"schema": _ERROR}},
                    },
                },
            }
        },
    }
