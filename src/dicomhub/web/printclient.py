"""``POST /print/requests``: print a study, series or some instances to a configured
DICOM printer (as ``dicomhub print``), answering with the outcome of each film.

The caller must be able to read the study (a study it may not read is not found).
The request blocks until the printer has answered every film: a print of a few films
takes seconds, and the caller wants the printer's statuses, not a job to poll.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomhub.errors import InvalidRequest, NotFound
from dicomhub.model.printclient import FILM_ORIENTATIONS, MEDIUM_TYPES, PrintRequest
from dicomhub.model.printing import FILM_SIZES
from dicomhub.services.archive import Archive
from dicomhub.web.auth import caller_of

__all__ = ["print_request_paths", "print_request_from_json", "routes"]

_MAXIMUM_BODY = 1 << 20
_TEXT_FIELDS = ("printer", "study", "series", "layout", "film_size", "orientation", "medium", "destination")
_FIELDS = frozenset({*_TEXT_FIELDS, "instances", "copies", "color"})


def print_request_from_json(body: Any) -> PrintRequest:
    """A :class:`PrintRequest` from the JSON object of ``POST /print/requests``.

    Raises
    ------
    InvalidRequest
        For a body that is not such an object (the message names the field).
    """
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}")
    for name in _TEXT_FIELDS:
        if name in body and body[name] is not None and not isinstance(body[name], str):
            raise InvalidRequest(f"{name} must be a string")
    for name in ("printer", "study"):
        if not body.get(name):
            raise InvalidRequest(f"{name} is required")
    instances = body.get("instances") or []
    if not isinstance(instances, list) or not all(isinstance(uid, str) for uid in instances):
        raise InvalidRequest("instances must be a list of SOP Instance UIDs")
    copies = body.get("copies", 1)
    if isinstance(copies, bool) or not isinstance(copies, int):
        raise InvalidRequest("copies must be an integer")
    color = body.get("color")
    if color is not None and not isinstance(color, bool):
        raise InvalidRequest("color must be true or false")
    defaults = PrintRequest("", "")
    return PrintRequest(
        printer=body["printer"],
        study=body["study"],
        series=body.get("series") or None,
        instances=tuple(instances),
        layout=body.get("layout") or defaults.layout,
        film_size=body.get("film_size") or defaults.film_size,
        orientation=body.get("orientation") or defaults.orientation,
        copies=copies,
        medium=body.get("medium") or defaults.medium,
        destination=body.get("destination") or None,
        color=color,
    )


def routes(archive: Archive) -> list[BaseRoute]:
    """The routes mounted at ``/print`` for printing from the archive."""

    async def print_request(request: Request) -> JSONResponse:
        body = await request.body()
        if len(body) > _MAXIMUM_BODY:
            raise InvalidRequest("the body is too large for a print request")
        try:
            parsed = json.loads(body or b"null")
        except ValueError as exc:
            raise InvalidRequest(f"the body is not JSON: {exc}") from None
        print_request = print_request_from_json(parsed)
        client = archive.print_client
        if client is None:
            raise NotFound("printing to DICOM printers is not available in this process")
        outcome = await run_in_threadpool(client.print_instances, print_request, caller_of(request))
        return JSONResponse(outcome.as_json())

    return [Route("/requests", print_request, methods=["POST"])]


# ---------------------------------------------------------------- OpenAPI

_STRING = {"type": "string"}
_ERROR = {"$ref": "#/components/schemas/Error"}
_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["printer", "study"],
    "additionalProperties": False,
    "properties": {
        "printer": {
            "type": "string",
            "description": "A printer of the configuration (its name or AE title).",
        },
        "study": {"type": "string", "description": "Study Instance UID."},
        "series": {"type": "string", "description": "Only this series of the study."},
        "instances": {
            "type": "array",
            "items": _STRING,
            "description": "Only these SOP Instance UIDs of the study (in this order).",
        },
        "layout": {
            "type": "string",
            "description": "Image Display Format: `STANDARD\\C,R`, `ROW\\n,...` or `COL\\n,...`.",
            "default": "STANDARD\\1,1",
        },
        "film_size": {"type": "string", "enum": list(FILM_SIZES), "default": "14INX17IN"},
        "orientation": {"type": "string", "enum": list(FILM_ORIENTATIONS), "default": "PORTRAIT"},
        "copies": {"type": "integer", "minimum": 1, "maximum": 100, "default": 1},
        "medium": {"type": "string", "enum": list(MEDIUM_TYPES), "default": "PAPER"},
        "destination": {"type": "string", "description": "Film Destination (e.g. MAGAZINE, PROCESSOR)."},
        "color": {
            "type": "boolean",
            "description": "Print in colour (a colour printer only); default: when an image has colour.",
        },
    },
}
_FILM: dict[str, Any] = {
    "type": "object",
    "required": ["film", "film_box_uid", "images", "instances", "status"],
    "properties": {
        "film": {"type": "integer"},
        "film_box_uid": _STRING,
        "images": {"type": "integer"},
        "instances": {"type": "array", "items": _STRING},
        "status": {"type": "string", "description": "The N-ACTION print status, 0xNNNN."},
        "warning": {"type": ["string", "null"]},
    },
}
_OUTCOME: dict[str, Any] = {
    "type": "object",
    "required": ["printer", "film_session_uid", "color", "films"],
    "properties": {
        "printer": _STRING,
        "film_session_uid": _STRING,
        "color": {"type": "boolean"},
        "printer_status": {"type": ["string", "null"]},
        "films": {"type": "array", "items": _FILM},
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def print_request_paths() -> dict[str, Any]:
    """The OpenAPI paths of these routes (merged into the document)."""
    return {
        "/print/requests": {
            "post": {
                "operationId": "printToPrinter",
                "summary": "Print a study, series or instances to a configured DICOM printer",
                "tags": ["Printing"],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _REQUEST}},
                },
                "responses": {
                    "200": {
                        "description": "Printed: the film session and each film's status.",
                        "content": {"application/json": {"schema": _OUTCOME}},
                    },
                    "400": _error("A malformed request, or an instance with no printable image."),
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "404": _error(
                        "An unknown printer, or a study, series or instance the caller cannot read."
                    ),
                    "409": _error("The printer cannot be reached, is in FAILURE or refused (its status)."),
                },
            }
        }
    }
