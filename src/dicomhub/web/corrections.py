"""Corrections over REST (as ``dicomhub study modify|split|merge|corrections`` and
``dicomhub patient merge``; docs/corrections.md).

``POST /api/studies/{study}/modify`` ``{"set": {Keyword: value}, "new_uids": bool,
"source": "reject"|"keep", "reason": str}``; ``POST /api/studies/{study}/split``
``{"series": [uid, ...], "set": {...}, "reason": str}``; ``POST
/api/studies/{study}/merge`` ``{"sources": [uid, ...], "force": bool, "reason": str}``;
``POST /api/patient-merges`` ``{"into": id, "from": id, "reason": str}``; ``GET
/admin/corrections[?study=uid]``. Each needs the ``administer`` action; each
answers the correction record (the list for the GET).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomhub.errors import InvalidRequest
from dicomhub.services.archive import Archive
from dicomhub.services.corrections import CorrectionService
from dicomhub.web.auth import caller_of
from dicomhub.web.errors import json_object

__all__ = ["admin_routes", "api_routes"]

_MAX_BODY = 64 * 1024
_NO_STORE = {"Cache-Control": "no-store"}


def _fields(body: dict[str, Any], known: dict[str, type]) -> dict[str, Any]:
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(known)})")
    for name, kind in known.items():
        if name in body and not isinstance(body[name], kind):
            raise InvalidRequest(f"{name!r} must be a {'list' if kind is list else kind.__name__}")
    for name in ("series", "sources"):
        if name in body and not all(isinstance(v, str) for v in body[name]):
            raise InvalidRequest(f"{name!r} must list UIDs as strings")
    return body


def _service(archive: Archive) -> CorrectionService:
    if archive.corrections is None:  # bootstrap always wires it; a hand-made Archive may not
        raise InvalidRequest("corrections are not available in this archive")
    return archive.corrections


def api_routes(archive: Archive) -> list[BaseRoute]:
    """The ``/api`` routes (POSTs that correct)."""

    def endpoint(known: dict[str, type], call: Callable[[Request, dict[str, Any]], Any]) -> Any:
        async def handle(request: Request) -> JSONResponse:
            body = _fields(await json_object(request, _MAX_BODY), known)
            done = await run_in_threadpool(lambda: call(request, body))
            return JSONResponse(done, headers=_NO_STORE)

        return handle

    def modify(request: Request, body: dict[str, Any]) -> Any:
        return _service(archive).modify(
            caller_of(request), str(request.path_params["study"]), body.get("set", {}),
            new_uids=body.get("new_uids", False), source=body.get("source", "reject"),
            reason=body.get("reason", ""),
        )  # fmt: skip

    def split(request: Request, body: dict[str, Any]) -> Any:
        return _service(archive).split(
            caller_of(request), str(request.path_params["study"]), body.get("series", []),
            body.get("set", {}), reason=body.get("reason", ""),
        )  # fmt: skip

    def merge(request: Request, body: dict[str, Any]) -> Any:
        return _service(archive).merge_studies(
            caller_of(request), str(request.path_params["study"]), body.get("sources", []),
            force=body.get("force", False), reason=body.get("reason", ""),
        )  # fmt: skip

    def merge_patients(request: Request, body: dict[str, Any]) -> Any:
        return _service(archive).merge_patients(
            caller_of(request), body.get("into", ""), body.get("from", ""), reason=body.get("reason", "")
        )

    modify_fields = {"set": dict, "new_uids": bool, "source": str, "reason": str}
    return [
        Route("/studies/{study}/modify", endpoint(modify_fields, modify), methods=["POST"]),
        Route(
            "/studies/{study}/split",
            endpoint({"series": list, "set": dict, "reason": str}, split),
            methods=["POST"],
        ),  # fmt: skip
        Route(
            "/studies/{study}/merge",
            endpoint({"sources": list, "force": bool, "reason": str}, merge),
            methods=["POST"],
        ),  # fmt: skip
        Route(
            "/patient-merges",
            endpoint({"into": str, "from": str, "reason": str}, merge_patients),
            methods=["POST"],
        ),  # fmt: skip
    ]


def admin_routes(archive: Archive) -> list[BaseRoute]:
    """``GET /admin/corrections``: the correction records, newest first."""

    async def corrections(request: Request) -> JSONResponse:
        study = request.query_params.get("study") or None
        found = await run_in_threadpool(lambda: _service(archive).records(caller_of(request), study))
        return JSONResponse(found, headers=_NO_STORE)

    return [Route("/corrections", corrections, methods=["GET"])]
