"""Authentication of HTTP requests, the Caller of each request, and its audit records.

With ``auth_required`` every request but the public ones (the health check and
the OpenAPI description) carries ``Authorization: Bearer <token>``: an API token
or, with OpenID Connect configured, a JWT. A request without valid credentials
gets 401 with ``WWW-Authenticate: Bearer`` and a JSON reason, and the refusal is
audited (LOGIN, serious failure). The routes of the administration API need
ADMINISTER. Without ``auth_required`` every request is an unrestricted caller,
as before access control existed.
"""

from __future__ import annotations

import logging
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

__all__ = ["AuthMiddleware", "PUBLIC_PATHS", "audit", "caller_of", "require"]

LOGGER = logging.getLogger("dicomhub.web.auth")

PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json"})
# Path prefixes of the administration API: ADMINISTER on top of authentication.
ADMIN_PREFIXES = ("/admin", "/migrations", "/users", "/grants", "/audit")
_SCOPE_KEY = "dicomhub.caller"


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

    def __init__(self, app: ASGIApp, archive: Archive, required: bool) -> None:
        self.app = app
        self.archive = archive
        self.required = required

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
            access=access.access_for(result.principal),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        address = _address(scope)
        path = str(scope.get("path", ""))
        if not self.required or path in PUBLIC_PATHS:
            scope[_SCOPE_KEY] = Caller(Channel.HTTP, "", address)
            await self.app(scope, receive, send)
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
        await self.app(scope, receive, send)
