"""``/changes``: the change feed over HTTP, so that downstream systems follow the
archive without polling QIDO-RS.

``GET /changes?since=SEQ&limit=N[&wait=S]`` answers one page as JSON (a long poll
with ``wait``); ``GET /changes/stream`` sends the same entries as Server-Sent Events,
each with ``id: SEQ``, so that a browser's ``EventSource`` resumes after a break with
``Last-Event-ID``. A stream ends by itself after at most 30 s (the client reconnects,
as EventSource does on its own): an open stream would otherwise hold a shutdown of
the server until it timed out.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import BaseRoute, Route

from dicomhub.errors import InvalidRequest
from dicomhub.model.caller import Caller
from dicomhub.model.changes import ChangePage
from dicomhub.services.archive import Archive
from dicomhub.services.changes import MAX_LIMIT, MAX_WAIT
from dicomhub.web.auth import caller_of

__all__ = ["change_paths", "routes"]

STREAM_SECONDS: Final = 30.0
_STREAM_POLL: Final = 5.0  # the longest wait of one page inside a stream (a keep-alive follows)
_POLL: Final = 0.25  # how often a waiting request reads the change log again


def _number(request: Request, name: str, default: float, high: float, *, integer: bool) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a{'n integer' if integer else ' number'}") from None
    if not 0 <= value <= high:  # also refuses NaN
        raise InvalidRequest(f"{name} must be between 0 and {high:g}")
    return value


def _since(request: Request) -> int:
    # EventSource sends the id of the last event it saw when it reconnects.
    resume = request.headers.get("last-event-id")
    if resume is not None and "since" not in request.query_params:
        if not resume.isdigit() or len(resume) > 18:
            raise InvalidRequest("Last-Event-ID must be a change sequence number")
        return int(resume)
    return int(_number(request, "since", 0, 10**18, integer=True))


def routes(archive: Archive) -> list[BaseRoute]:
    """The routes of the change feed, at the root of the HTTP server."""
    feed = archive.changes

    async def waited(caller: Caller, since: int, limit: int, wait: float) -> ChangePage:
        # The wait is on the event loop between short reads, not in a worker thread:
        # a thread held per waiting follower would exhaust Starlette's pool (40).
        deadline = time.monotonic() + wait
        while True:
            found: ChangePage = await run_in_threadpool(feed.page, caller, since, limit)
            left = deadline - time.monotonic()
            if found.changes or left <= 0:
                return found
            await asyncio.sleep(min(_POLL, left))

    async def page(request: Request) -> JSONResponse:
        since = _since(request)
        limit = int(_number(request, "limit", 100, MAX_LIMIT, integer=True))
        wait = _number(request, "wait", 0.0, MAX_WAIT, integer=False)
        found = await waited(caller_of(request), since, max(limit, 1), wait)
        return JSONResponse(found.as_json())

    async def stream(request: Request) -> StreamingResponse:
        caller = caller_of(request)
        since = _since(request)
        feed.check_may_follow(caller)  # refuse before the 200 and the stream start

        async def events() -> AsyncIterator[str]:
            nonlocal since
            ends = time.monotonic() + STREAM_SECONDS
            yield "retry: 1000\n\n"
            while not await request.is_disconnected():
                left = ends - time.monotonic()
                if left <= 0:
                    return
                found = await waited(caller, since, 100, min(_STREAM_POLL, left))
                if not found.changes:
                    yield ": keep-alive\n\n"
                for change in found.changes:
                    yield f"id: {change.seq}\nevent: change\ndata: {json.dumps(change.as_json())}\n\n"
                since = found.last

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return [
        Route("/changes", page, methods=["GET"]),
        Route("/changes/stream", stream, methods=["GET"]),
    ]


# ---------------------------------------------------------------- OpenAPI

_INTEGER = {"type": "integer"}
_STRING = {"type": "string"}
_ERROR = {"$ref": "#/components/schemas/Error"}
_CHANGE: dict[str, Any] = {
    "type": "object",
    "required": ["seq", "change_type", "level", "uid", "at"],
    "properties": {
        "seq": {"type": "integer", "description": "The change log's sequence number."},
        "change_type": {"type": "string", "description": "created, updated, deleted, ..."},
        "level": {"type": "string", "enum": ["PATIENT", "STUDY", "SERIES", "IMAGE"]},
        "uid": {"type": "string", "description": "The entity's UID (the Patient ID for a patient)."},
        "at": {"type": "string", "format": "date-time"},
    },
}
_SINCE = {
    "name": "since",
    "in": "query",
    "schema": {"type": "integer", "minimum": 0, "default": 0},
    "description": "Changes after this sequence number (the `last` of the previous page).",
}
_REFUSED = {
    "400": {"description": "A parameter out of range.", "content": {"application/json": {"schema": _ERROR}}},
    "401": {"description": "No valid credentials.", "content": {"application/json": {"schema": _ERROR}}},
    "403": {
        "description": "The caller may not query the whole archive.",
        "content": {"application/json": {"schema": _ERROR}},
    },
}


def change_paths() -> dict[str, Any]:
    """The OpenAPI path items of the change feed."""
    return {
        "/changes": {
            "get": {
                "operationId": "changes",
                "summary": "One page of the change log after a sequence number (a long poll with wait).",
                "parameters": [
                    _SINCE,
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100},
                    },
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT, "default": 0},
                        "description": "Seconds to wait for a change when there is none yet.",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The changes, where to continue, and whether this is the newest.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["changes", "last", "done"],
                                    "properties": {
                                        "changes": {"type": "array", "items": _CHANGE},
                                        "last": _INTEGER,
                                        "done": {"type": "boolean"},
                                    },
                                }
                            }
                        },
                    },
                    **_REFUSED,
                },
            }
        },
        "/changes/stream": {
            "get": {
                "operationId": "changeStream",
                "summary": "The change log as Server-Sent Events (id = sequence number; ends after 30 s).",
                "parameters": [
                    _SINCE,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "schema": _STRING,
                        "description": "Resume after this change (sent by EventSource on reconnect).",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "`event: change` with the change as JSON data, one per entry.",
                        "content": {"text/event-stream": {"schema": _STRING}},
                    },
                    **_REFUSED,
                },
            }
        },
    }
