"""Authentication of HTTP requests, the Caller of each request, and its audit records.

With ``auth_required`` every request but the public ones (the health check,
the OpenAPI description, and the web UI's pages and assets) carries
``Authorization: Bearer <token>``: an API token or, with OpenID Connect
configured, a JWT. A request without valid credentials
gets 401 with ``WWW-Authenticate: Bearer`` and a JSON reason, and the refusal is
audited (LOGIN, serious failure). The routes of the administration API need
ADMINISTER. Without ``auth_required`` every request is an unrestricted caller,
as before access control existed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomhub.errors import DicomhubError
from dicomhub.model.access import Action
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditEvent, AuditOutcome
from dicomhub.model.caller import Caller, Channel
from dicomhub.services.access import Forbidden
from dicomhub.services.archive import Archive
from dicomhub.telemetry.metrics import metrics

__all__ = [
    "AuditBacklog",
    "AuthMiddleware",
    "PUBLIC_PATHS",
    "PUBLIC_PREFIXES",
    "audit",
    "audit_after_response",
    "caller_of",
    "require",
]

LOGGER = logging.getLogger("dicomhub.web.auth")

PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/", "/ohif"})
# The web UI's pages and assets (web/ui/) are public: they carry no archive data, and
# their scripts ask the archive with the token the person typed in, so a page can
# offer the log-in form that a 401 could not. So are the OHIF viewer's files (web/ohif.py):
# OHIF sends the same token to DICOMweb.
PUBLIC_PREFIXES = ("/ui/", "/ohif/")
# Path prefixes of the administration API: ADMINISTER on top of authentication.
ADMIN_PREFIXES = ("/admin", "/migrations", "/users", "/grants", "/audit")
_SCOPE_KEY = "dicomhub.caller"
_PENDING_KEY = "dicomhub.audit"
# The audit writer commits up to _BATCH events at a time, at most _LINGER s after the first.
_BATCH = 500
_LINGER = 0.05


class AuditBacklog:
    """Audit events of reads, written by a thread of their own in batches.

    A QIDO-RS or WADO-RS answer must not wait for a committed (fsync'ed) audit
    row: the request queues its event and the writer commits what has queued
    up in one transaction, at most 50 ms later. Readers of the log in
    this process (``GET /audit``) first wait until the queue is empty, so they
    never miss an event of a request already answered. What is queued when the
    process is killed is lost; a clean shutdown writes it (:meth:`close`).
    """

    def __init__(self, archive: Archive | None = None) -> None:
        self.archive = archive
        self._queue: list[AuditEvent] = []
        self._pending = 0
        self._lock = threading.Condition()
        self._writer: threading.Thread | None = None
        self._closed = False

    def add(self, event: AuditEvent) -> None:
        with self._lock:
            self._queue.append(event)
            self._pending += 1
            metrics().queue_depth.labels(queue="audit-backlog").inc()
            if self._writer is None and not self._closed:
                self._writer = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._writer.start()
            self._lock.notify_all()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: bool(self._queue) or self._closed)
                # Linger: the events of the next requests share this one's commit.
                deadline = time.monotonic() + _LINGER
                while len(self._queue) < _BATCH and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._lock.wait(remaining)
                batch, self._queue = self._queue[:_BATCH], self._queue[_BATCH:]
                if not batch and self._closed:
                    return
            self._write(batch)

    def _write(self, batch: list[AuditEvent]) -> None:
        assert self.archive is not None
        try:
            self.archive.audit.record_many(batch)
        except Exception:  # noqa: BLE001 - one by one, so that one bad event loses no other
            for event in batch:
                try:
                    self.archive.audit.record(event)
                except Exception:
                    LOGGER.exception("cannot record an audit event: %s", event)
        finally:
            with self._lock:
                self._pending -= len(batch)
                self._lock.notify_all()
            metrics().queue_depth.labels(queue="audit-backlog").dec(len(batch))

    def wait(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event is written; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._pending <= 0, timeout)

    def close(self, timeout: float = 10.0) -> None:
        self.wait(timeout)
        with self._lock:
            self._closed = True
            self._lock.notify_all()


def _address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def caller_of(request: Request) -> Caller:
    """The caller the middleware established for this request."""
    caller = request.scope.get(_SCOPE_KEY)
    if isinstance(caller, Caller):
        return caller
    return Caller(Channel.HTTP, "", _address(request.scope))


def require(caller: Caller, action: Action, what: str) -> None:
    """A study-blind gate: :class:`Forbidden` unless some grant carries ``action``."""
    if not caller.access.may(action):
        raise Forbidden(f"{caller.who} may not {what}")


def audit(
    archive: Archive,
    caller: Caller,
    action: AuditAction,
    outcome: AuditOutcome,
    studies: Iterable[AuditedStudy] = (),
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Record one audit event (in the calling worker thread; committed on return)."""
    archive.audit.record(AuditEvent(action, outcome, caller, tuple(studies), dict(detail or {})))


def audit_after_response(
    request: Request,
    archive: Archive,
    caller: Caller,
    action: AuditAction,
    outcome: AuditOutcome,
    studies: Iterable[AuditedStudy] = (),
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Queue one audit event of a read for the writer thread (or record it now,
    outside the middleware)."""
    event = AuditEvent(action, outcome, caller, tuple(studies), dict(detail or {}))
    backlog = request.scope.get(_PENDING_KEY)
    if isinstance(backlog, AuditBacklog):
        backlog.add(event)
    else:
        archive.audit.record(event)


def outcome_of(exc: BaseException | None) -> AuditOutcome:
    """The audit outcome of an operation that raised ``exc`` (None: it succeeded)."""
    from dicomhub.errors import InvalidRequest, NotFound

    if exc is None:
        return AuditOutcome.SUCCESS
    if isinstance(exc, (Forbidden, NotFound)):
        return AuditOutcome.SERIOUS_FAILURE
    if isinstance(exc, InvalidRequest):
        return AuditOutcome.MINOR_FAILURE
    return AuditOutcome.MAJOR_FAILURE


class AuthMiddleware:
    """Pure ASGI (a streamed body or response passes through untouched)."""

    def __init__(self, app: ASGIApp, archive: Archive, required: bool, backlog: AuditBacklog) -> None:
        self.app = app
        self.archive = archive
        self.required = required
        self.backlog = backlog

    async def _call(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_PENDING_KEY] = self.backlog
        await self.app(scope, receive, send)

    def _authenticate(self, authorization: str | None, address: str, path: str) -> Caller | JSONResponse:
        access = self.archive.access
        result = access.authenticate(authorization)
        if result.principal is None:
            anonymous = Caller(Channel.HTTP, "", address)
            try:
                audit(
                    self.archive,
                    anonymous,
                    AuditAction.LOGIN,
                    AuditOutcome.SERIOUS_FAILURE,
                    detail={"path": path[:256], "reason": result.reason},
                )
            except DicomhubError:
                LOGGER.exception("cannot record a refused authentication")
            return JSONResponse(
                {
                    "error": f"authentication required: {result.detail}",
                    "reason": result.reason,
                    "status": 401,
                },
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="dicomhub"'},
            )
        return Caller(
            Channel.HTTP,
            result.principal,
            address,
            principal=result.principal,
            access=result.access or access.access_for(result.principal),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        address = _address(scope)
        path = str(scope.get("path", ""))
        if not self.required or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            scope[_SCOPE_KEY] = Caller(Channel.HTTP, "", address)
            await self._call(scope, receive, send)
            return
        authorization = Headers(scope=scope).get("authorization")
        try:
            found = await run_in_threadpool(self._authenticate, authorization, address, path)
        except DicomhubError as exc:
            from dicomhub.web.errors import error_response

            await error_response(exc)(scope, receive, send)
            return
        if isinstance(found, JSONResponse):
            await found(scope, receive, send)
            return
        if path.startswith(ADMIN_PREFIXES) and not found.access.may(Action.ADMINISTER):
            response = JSONResponse(
                {"error": f"{found.who} may not administer the archive", "status": 403}, status_code=403
            )
            await response(scope, receive, send)
            return
        scope[_SCOPE_KEY] = found
        await self._call(scope, receive, send)
