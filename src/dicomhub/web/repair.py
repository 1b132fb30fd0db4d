"""``POST /admin/repair``: restore damaged or missing blobs from peers (docs/repair.md).

Under ``/admin``, so with access control on a caller needs ADMINISTER. The
answer is the report itself (synchronous): a repair fetches only the
damaged instances, and a caller who wants a whole archive checked without
holding a request open runs ``dicomhub repair`` instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomhub.errors import DicomhubError, InvalidRequest
from dicomhub.services.archive import Archive
from dicomhub.web.auth import caller_of
from dicomhub.web.errors import json_object

__all__ = ["repair_paths", "routes"]

_MAX_BODY = 1 << 20  # room for some thousands of Study Instance UIDs


def _strings(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{key} must be a list of strings")
    return value


def routes(archive: Archive) -> list[BaseRoute]:
    """The route mounted at ``/admin``."""

    async def repair(request: Request) -> JSONResponse:
        """``{"from": [PEER...], "studies": [UID...], "dry_run": false}``, each optional."""
        body = await json_object(request, _MAX_BODY)
        unknown = set(body) - {"from", "studies", "dry_run"}
        if unknown:
            raise InvalidRequest(f"unknown keys: {', '.join(sorted(unknown))}")
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise InvalidRequest("dry_run must be true or false")
        peers, studies = _strings(body, "from"), _strings(body, "studies")
        if archive.repair is None:
            raise DicomhubError("repair is not available in this server")
        report = await run_in_threadpool(
            archive.repair.repair, studies, peers, dry_run=dry_run, caller=caller_of(request)
        )
        return JSONResponse(
            {**dataclasses.asdict(report), "ok": report.ok}, headers={"Cache-Control": "no-store"}
        )

    return [Route("/repair", repair, methods=["POST"])]


_ERROR = {
    "description": "",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_ITEM: dict[str, Any] = {
    "type": "object",
    "required": ["sop_instance_uid", "study_instance_uid", "blob_key", "problem", "outcome", "reason"],
    "properties": {
        "sop_instance_uid": {"type": "string"},
        "study_instance_uid": {"type": "string"},
        "series_instance_uid": {"type": "string"},
        "blob_key": {"type": "string", "description": "The damaged blob."},
        "problem": {"type": "string", "enum": ["missing", "size-mismatch", "digest-mismatch", "unreadable"]},
        "detail": {"type": "string"},
        "outcome": {"type": "string", "enum": ["repaired", "planned", "failed"]},
        "source": {"type": "string", "description": "The peer the copy came (or would be asked) from."},
        "reason": {"type": "string", "description": "How the copy was proven, or why none was taken."},
        "new_blob_key": {"type": "string"},
    },
}


def repair_paths() -> dict[str, Any]:
    """The OpenAPI path item of ``POST /admin/repair``."""
    return {
        "/admin/repair": {
            "post": {
                "tags": ["Admin"],
                "operationId": "repairFromPeers",
                "summary": "Restore missing or damaged blobs from peers, after verifying each copy.",
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "from": {
                                        "type": "array",
                                        "items": {"type": "string"},
                                        "description": "Peers, asked in this order (default: every "
                                        "migration-source peer).",
                                    },
                                    "studies": {
                                        "type": "array",
                                        "items": {"type": "string"},
                                        "description": "Only these studies (default: every instance).",
                                    },
                                    "dry_run": {"type": "boolean", "default": False},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "The report; ok is false while an instance stays damaged.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["checked", "dry_run", "peers", "items", "ok"],
                                    "properties": {
                                        "checked": {"type": "integer"},
                                        "dry_run": {"type": "boolean"},
                                        "peers": {"type": "array", "items": {"type": "string"}},
                                        "items": {"type": "array", "items": _ITEM},
                                        "ok": {"type": "boolean"},
                                    },
                                }
                            }
                        },
                    },
                    "400": {**_ERROR, "description": "A bad body, a bad UID or a peer without an address."},
                    "404": {**_ERROR, "description": "No such peer."},
                },
            }
        }
    }
