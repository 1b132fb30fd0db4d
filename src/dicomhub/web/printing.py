"""``/print/jobs``: the print jobs the Print SCP made (as ``dicomhub print-jobs``), the
PNG of each film and the job's PDF; read-only, as the printing modalities are the only
writers.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dicomhub.errors import InvalidRequest
from dicomhub.model.printjobs import ExecutionStatus
from dicomhub.services.archive import Archive
from dicomhub.services.printpdf import PDF_MEDIA_TYPE
from dicomhub.web.auth import caller_of

__all__ = ["print_paths", "routes"]


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

    async def pdf(request: Request) -> Response:
        job_id = str(request.path_params["job"])
        data = await run_in_threadpool(printing.job_pdf, job_id, caller_of(request))
        # inline: a browser shows the films; the name is the job's, for "save as".
        disposition = f'inline; filename="print-job-{job_id[:64]}.pdf"'
        return Response(data, media_type=PDF_MEDIA_TYPE, headers={"Content-Disposition": disposition})

    async def film(request: Request) -> Response:
        name = str(request.path_params["film"])
        number_text, dot, extension = name.partition(".")
        if not number_text.isdigit() or (dot and extension != "png") or len(number_text) > 6:
            raise InvalidRequest("a film is N.png, N its number from 1")
        number = int(number_text)
        job_id = str(request.path_params["job"])
        data = await run_in_threadpool(printing.film_png, job_id, number, caller_of(request))
        return Response(data, media_type="image/png")

    return [
        Route("/jobs", list_jobs, methods=["GET"]),
        # Before /jobs/{job}, which would take "ID.pdf" as a job id.
        Route("/jobs/{job}.pdf", pdf, methods=["GET"]),
        Route("/jobs/{job}", show_job, methods=["GET"]),
        # {film} is "N.png" (a template parameter must be a whole path segment in OpenAPI).
        Route("/jobs/{job}/films/{film}", film, methods=["GET"]),
    ]


# ---------------------------------------------------------------- OpenAPI

_STRING = {"type": "string"}
_ERROR = {"$ref": "#/components/schemas/Error"}
_FILM: dict[str, Any] = {
    "type": "object",
    "required": ["number", "film_box_uid", "images", "width", "height"],
    "properties": {
        "number": {"type": "integer"},
        "film_box_uid": _STRING,
        "images": {"type": "integer"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "size": {"type": "integer"},
        "sha256": _STRING,
    },
    "additionalProperties": _STRING,  # the film box attributes (ImageDisplayFormat, FilmSizeID, ...)
}
_JOB: dict[str, Any] = {
    "type": "object",
    "description": "A print job (as `dicomhub print-jobs --json`).",
    "required": ["id", "state", "source_ae", "films"],
    "properties": {
        "id": {"type": "string", "description": "The Print Job SOP Instance UID."},
        "state": {"type": "string", "enum": [s.value for s in ExecutionStatus]},
        "source_ae": _STRING,
        "film_session_uid": _STRING,
        "film_session": {"type": "object"},
        "color": {"type": "boolean"},
        "created_at": _STRING,
        "films": {"type": "array", "items": _FILM},
        "pdf": {
            "description": "The job's PDF (GET /print/jobs/{id}.pdf), null for jobs printed before PDFs.",
            "type": ["object", "null"],
            "properties": {"size": {"type": "integer"}, "sha256": _STRING},
        },
        "status_info": {
            "description": "Why the job failed (the operating-system printer's message), else null.",
            "type": ["string", "null"],
        },
        "archived_sop_instance_uid": {
            "description": "The Encapsulated PDF instance the job was archived as, else null.",
            "type": ["string", "null"],
        },
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def print_paths() -> dict[str, Any]:
    """The OpenAPI paths of these routes (merged into the document)."""
    errors = {
        "401": {"$ref": "#/components/responses/Unauthorized"},
        "403": _error("The caller may not query the whole archive."),
    }
    job = {
        "name": "job",
        "in": "path",
        "required": True,
        "description": "The job's id (its Print Job SOP Instance UID).",
        "schema": _STRING,
    }
    return {
        "/print/jobs": {
            "get": {
                "operationId": "listPrintJobs",
                "summary": "Print jobs received by the Print SCP, newest first",
                "tags": ["Printing"],
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "At most this many (1-1000, default 100).",
                        "schema": {"type": "integer"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The jobs.",
                        "content": {"application/json": {"schema": {"type": "array", "items": _JOB}}},
                    },
                    "400": _error("A malformed parameter."),
                    **errors,
                },
            }
        },
        "/print/jobs/{job}": {
            "get": {
                "operationId": "getPrintJob",
                "summary": "One print job and its films",
                "tags": ["Printing"],
                "parameters": [job],
                "responses": {
                    "200": {"description": "The job.", "content": {"application/json": {"schema": _JOB}}},
                    **errors,
                    "404": _error("No such job."),
                },
            }
        },
        "/print/jobs/{job}.pdf": {
            "get": {
                "operationId": "getPrintJobPdf",
                "summary": "The PDF of a print job: one page per film, each the film's size",
                "tags": ["Printing"],
                "parameters": [job],
                "responses": {
                    "200": {
                        "description": "The films as printed, lossless.",
                        "content": {PDF_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
                    },
                    **errors,
                    "404": _error("No such job, or a job printed before PDFs were kept."),
                },
            }
        },
        "/print/jobs/{job}/films/{film}": {
            "get": {
                "operationId": "getPrintFilm",
                "summary": "The PNG of one film of a print job",
                "tags": ["Printing"],
                "parameters": [
                    job,
                    {
                        "name": "film",
                        "in": "path",
                        "required": True,
                        "description": "`N.png`, N the film's number in the job (from 1).",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,6}(\\.png)?$"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The film as printed.",
                        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "400": _error("Not N.png."),
                    **errors,
                    "404": _error("No such job or film."),
                },
            }
        },
    }
