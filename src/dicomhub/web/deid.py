"""De-identification over HTTP, under ``/deid``: runs, a dry-run preview, re-identification.

Every route takes ``Authorization: Bearer <token>`` (``dicomhub token create``):
starting a run and previewing need the ``deidentifier`` grant on the project,
re-identification the ``reidentifier`` grant; listing runs needs a valid token.
A refusal is 401 (no or unknown/revoked token) or 403 (no grant), and audited.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomhub.errors import InvalidRequest
from dicomhub.model.access import Access
from dicomhub.model.caller import Caller, Channel
from dicomhub.services.archive import Archive
from dicomhub.services.governance import ROLE_DEIDENTIFIER, Unauthenticated
from dicomhub.web.errors import json_object, row_id

__all__ = ["routes"]

_MAX_BODY = 1 << 20


def _text(body: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{key!r} must be a non-empty string")
    return value


def _words(body: dict[str, Any], key: str = "options") -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{key!r} must be a list of option names")
    return value


def _regions(body: dict[str, Any]) -> list[tuple[int, int, int, int]]:
    value = body.get("mask", [])
    if not isinstance(value, list) or not all(
        isinstance(r, list) and len(r) == 4 and all(isinstance(v, int) for v in r) for r in value
    ):
        raise InvalidRequest("'mask' must be a list of [x, y, width, height] regions")
    return [(r[0], r[1], r[2], r[3]) for r in value]


def routes(archive: Archive) -> list[BaseRoute]:
    deid = archive.deid

    def caller_of(request: Request) -> tuple[Caller, str | None]:
        caller, principal, _access = identified(request)
        return caller, principal

    def identified(request: Request) -> tuple[Caller, str | None, Access | None]:
        # The grants too: an OpenID Connect role claim may give deidentifier on a project.
        principal, access = archive.governance.identify(request.headers.get("authorization"))
        address = request.client.host if request.client else ""
        return Caller(Channel.HTTP, principal or "", address), principal, access

    async def start(request: Request) -> JSONResponse:
        """Start a run: ``{project, study | series, reason, options?, burned_in?, mask?}`` -> 202
        and the run."""
        body = await json_object(request, _MAX_BODY)
        project = str(_text(body, "project"))
        caller, principal, access = await run_in_threadpool(identified, request)
        await run_in_threadpool(
            deid.authorize, principal, ROLE_DEIDENTIFIER, project, "deid-run-start", caller, access
        )
        run = await run_in_threadpool(
            lambda: deid.start_run(
                project,
                str(_text(body, "reason")),
                caller,
                study_uid=_text(body, "study", required=False),
                series_uid=_text(body, "series", required=False),
                options=_words(body),
                burned_in=_text(body, "burned_in", required=False),
                mask=_regions(body),
            )
        )
        return JSONResponse(run, status_code=202, headers={"Location": f"/deid/jobs/{run['id']}"})

    def known_caller(request: Request) -> None:
        _caller, principal = caller_of(request)
        if principal is None:
            raise Unauthenticated("listing de-identification runs needs the credentials of a principal")

    async def list_runs(request: Request) -> JSONResponse:
        await run_in_threadpool(known_caller, request)
        try:
            limit = max(1, min(int(request.query_params.get("limit", "100")), 10000))
        except ValueError as exc:
            raise InvalidRequest("limit must be an integer") from exc
        return JSONResponse(await run_in_threadpool(deid.runs, limit))

    async def show_run(request: Request) -> JSONResponse:
        await run_in_threadpool(known_caller, request)
        run_id = row_id(str(request.path_params["id"]), "a run id")
        return JSONResponse(await run_in_threadpool(deid.run, run_id))

    async def preview(request: Request) -> JSONResponse:
        """Dry run on one stored instance: ``{project, instance, options?}``; nothing is stored."""
        body = await json_object(request, _MAX_BODY)
        project = str(_text(body, "project"))
        caller, principal, access = await run_in_threadpool(identified, request)
        await run_in_threadpool(
            deid.authorize, principal, ROLE_DEIDENTIFIER, project, "deid-preview", caller, access
        )
        return JSONResponse(
            await run_in_threadpool(deid.preview, project, str(_text(body, "instance")), _words(body), caller)
        )

    async def reidentify(request: Request) -> JSONResponse:
        """``{values: [...]}`` -> the originals behind each replacement value."""
        project = str(request.path_params["project"])
        body = await json_object(request, _MAX_BODY)
        caller, principal = await run_in_threadpool(caller_of, request)
        values = body.get("values")
        if not isinstance(values, list):
            values = []
        found = await run_in_threadpool(deid.reidentify, project, [str(v) for v in values], principal, caller)
        return JSONResponse(found)

    return [
        Route("/jobs", start, methods=["POST"]),
        Route("/jobs", list_runs, methods=["GET"]),
        Route("/jobs/{id}", show_run, methods=["GET"]),
        Route("/preview", preview, methods=["POST"]),
        Route("/projects/{project}/reidentify", reidentify, methods=["POST"]),
    ]
