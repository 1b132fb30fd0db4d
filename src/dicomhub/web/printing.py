"""``/print/jobs``: the print jobs the Print SCP made (as ``dicomhub print-jobs``), and
the PNG of each film; read-only, as the printing modalities are the only writers.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dicomhub.errors import InvalidRequest
from dicomhub.services.archive import Archive
from dicomhub.web.auth import caller_of

__all__ = ["routes"]


def routes(archive: Archive) -> list[BaseRoute]:
    """The routes mounted at ``/print``."""
    printing = archive.printing

    async def list_jobs(request: Request) -> JSONResponse:
        try:
            limit = max(1, min(int(request.query_params.get("limit", "100")), 1000))
        except ValueError:
            raise InvalidRequest("limit must be an integer") from None
        found = await run_in_threadpool(printing.jobs, caller_of(request), limit)
        return JSONResponse([job.as_json() for job in found])

    async def show_job(request: Request) -> JSONResponse:
        job = await run_in_threadpool(printing.job, str(request.path_params["job"]), caller_of(request))
        return JSONResponse(job.as_json())

    async def film(request: Request) -> Response:
        number = int(request.path_params["number"])
        job_id = str(request.path_params["job"])
        data = await run_in_threadpool(printing.film_png, job_id, number, caller_of(request))
        return Response(data, media_type="image/png")

    return [
        Route("/jobs", list_jobs, methods=["GET"]),
        Route("/jobs/{job}", show_job, methods=["GET"]),
        Route("/jobs/{job}/films/{number:int}.png", film, methods=["GET"]),
    ]
