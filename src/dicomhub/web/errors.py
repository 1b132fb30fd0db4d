"""Errors -> HTTP responses, in one table (Starlette looks handlers up along the MRO)."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomhub.errors import (
    Conflict,
    DeidentificationError,
    DicomhubError,
    IndexUnavailable,
    InsufficientStorage,
    InvalidRequest,
    NotFound,
    RejectedObject,
    StorageError,
)
from dicomhub.services.governance import Forbidden, Unauthenticated
from dicomhub.telemetry.metrics import count_backend_error

__all__ = [
    "EXCEPTION_HANDLERS",
    "NotAcceptable",
    "UnsupportedMediaType",
    "decode_json_object",
    "error_response",
    "http_status",
    "json_object",
    "row_id",
]

LOGGER = logging.getLogger("dicomhub.web")


class NotAcceptable(InvalidRequest):
    """No representation the client accepts can be produced (HTTP 406)."""


class UnsupportedMediaType(InvalidRequest):
    """The request body's media type is not one the resource takes (HTTP 415)."""


_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (NotAcceptable, 406),
    (UnsupportedMediaType, 415),
    (InvalidRequest, 400),
    (DeidentificationError, 400),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (RejectedObject, 409),
    (IndexUnavailable, 503),
    (InsufficientStorage, 507),
    (StorageError, 503),
)


async def json_object(request: Request, max_bytes: int = 1 << 20) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is ``{}``)."""
    raw = await request.body()
    if len(raw) > max_bytes:
        raise InvalidRequest("request body too large")
    return decode_json_object(raw or b"{}")


def decode_json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object; InvalidRequest when it is not JSON or not an object."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}") from None
    except RecursionError:
        # json.loads recurses once per nesting level: "[[[[..." from a client
        # would otherwise be a 500 instead of a 400.
        raise InvalidRequest("the body is not JSON a server can read: nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


def row_id(text: str, what: str) -> int:
    """A row id from a path or query parameter: a positive integer a database key can hold."""
    try:
        value = int(text)
    except ValueError as exc:
        raise InvalidRequest(f"{what} is an integer") from exc
    if not 0 < value < 2**63:
        raise InvalidRequest(f"{what} is out of range")
    return value


def http_status(exc: Exception) -> int:
    """The HTTP status of an error from the table (500: not a dicomhub error we expect)."""
    return next((status for cls, status in _STATUS if isinstance(exc, cls)), 500)


def error_response(exc: Exception) -> Response:
    """The HTTP response for a dicomhub error: status from the table, reason in the body."""
    count_backend_error(exc, "http")
    status = http_status(exc)
    if status == 500:
        LOGGER.error("unexpected error: %s", exc, exc_info=exc)
        return JSONResponse({"error": "internal error", "status": 500}, status_code=500)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": str(exc), "status": status}, status_code=status, headers=headers)


async def _handle(_request: Request, exc: Exception) -> Response:
    return error_response(exc)


EXCEPTION_HANDLERS = {DicomhubError: _handle}
