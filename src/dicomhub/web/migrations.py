"""Migration jobs over HTTP: ``/migrations`` (create, list), ``/migrations/{id}`` (watch),
``/migrations/{id}/stop`` and ``/migrations/{id}/resume``.

The endpoints only record the job in the index; the server's background
worker runs it (the web layer knows no transfer protocol, see docs/migration.md).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomhub.errors import InvalidRequest
from dicomhub.model.access import Action
from dicomhub.services.access import Forbidden
from dicomhub.services.archive import Archive
from dicomhub.web.auth import caller_of
from dicomhub.web.errors import row_id

__all__ = ["routes"]


def _job_id(request: Request) -> int:
    return row_id(str(request.path_params["job_id"]), "a job id")


def routes(archive: Archive) -> list[BaseRoute]:
    service = archive.migration

    async def create(request: Request) -> JSONResponse:
        """Queue a migration from a remote archive, ``{"remote": NAME, ...}``, or to one,
        ``{"target": NAME, ...}``; with the selection ``"since": "YYYYMMDD", "until": ...,
        "modality": ..., "patients": [...]``, ``"parallel": N`` and optionally
        ``"deid": {"project": P, "reason": TEXT, "options": [...], "burned_in": ...}``."""
        try:
            body: Any = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            raise InvalidRequest("the body must be JSON") from exc
        if not isinstance(body, dict) or (
            not isinstance(body.get("remote"), str) == (not isinstance(body.get("target"), str))
        ):
            raise InvalidRequest(
                'the body must be a JSON object with "remote" (to pull from) or "target" (to push to)'
            )
        parallel = body.pop("parallel", 4)
        if not isinstance(parallel, int):
            raise InvalidRequest("parallel must be an integer")
        direction = "push" if "target" in body else "pull"
        name = body.pop("target") if direction == "push" else body.pop("remote")
        deid = body.pop("deid", None)
        if deid is not None:
            if not isinstance(deid, dict):
                raise InvalidRequest('"deid" must be an object with project, reason and options')
            caller = caller_of(request)
            project = deid.get("project")
            # /migrations needs ADMINISTER already; de-identifying also needs the project's grant.
            if not isinstance(project, str) or not caller.access.permits_project(
                Action.DEIDENTIFY, project
            ):
                raise Forbidden(f"{caller.who} may not de-identify for project {project!r}")
            actor = caller.principal or f"http:{caller.address or 'unknown'}"
            deid = {**deid, "actor": actor}
        job_id = await run_in_threadpool(
            lambda: service.create_job(name, body, parallel, direction=direction, transform=deid)
        )
        return JSONResponse(await run_in_threadpool(service.job, job_id), status_code=201)

    async def listing(_request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(service.jobs))

    async def one(request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(service.job, _job_id(request)))

    async def stop(request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(service.stop, _job_id(request)))

    async def resume(request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(service.resume, _job_id(request)))

    return [
        Route("/migrations", create, methods=["POST"]),
        Route("/migrations", listing, methods=["GET"]),
        Route("/migrations/{job_id}", one, methods=["GET"]),
        Route("/migrations/{job_id}/stop", stop, methods=["POST"]),
        Route("/migrations/{job_id}/resume", resume, methods=["POST"]),
    ]
