"""Request ids, the HTTP access log and the HTTP metrics: one pure ASGI middleware.

The outermost middleware, so that it sees every request and every status,
including the 401s of :class:`~dicomhub.web.auth.AuthMiddleware`:

- the request id is the client's ``X-Request-ID`` when it is a plain token
  (1-128 of ``A-Za-z0-9._:-``), else a new one; it is set in the logging
  context for the whole request (:mod:`dicomhub.telemetry.context`) and
  returned in the ``X-Request-ID`` response header;
- one access log line per request (logger ``dicomhub.access``, INFO): method,
  path, route template, status, duration, response bytes, principal, client
  address and request id. The query string is not logged: QIDO-RS queries
  carry patient names, IDs and birth dates, and the access log is not the
  audit log. ``/healthz`` and ``/metrics`` (polled every few seconds) are
  logged at DEBUG. On by default (``access_log = false`` turns it off),
  because "who fetched what, when, and how long it took" is the first
  question after an incident;
- ``dicomhub_http_requests_total{method,route,status}`` and the latency
  histogram ``dicomhub_http_request_duration_seconds{method,route}``, with
  the route *template* (``/dicomweb/studies/{study}``) as label, never the
  path, so that the number of series stays bounded.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from typing import Any

from starlette.routing import BaseRoute, Mount, Route, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomhub.model.caller import Caller
from dicomhub.telemetry import context
from dicomhub.telemetry.metrics import metrics

__all__ = ["ObserveMiddleware", "RouteTemplates"]

ACCESS_LOGGER = logging.getLogger("dicomhub.access")
_QUIET_PATHS = frozenset({"/healthz", "/metrics"})
_UNMATCHED = "unmatched"


class RouteTemplates:
    """The route template of a served request, from the endpoint Starlette matched.

    Starlette leaves the matched endpoint in the scope, not the route; an
    endpoint served by several routes is told apart by their path patterns.
    """

    def __init__(self) -> None:
        self._by_endpoint: dict[Any, list[tuple[re.Pattern[str], str]]] = {}

    def add(self, routes: Iterable[BaseRoute], prefix: str = "") -> None:
        """Learn the templates of ``routes`` (and of the routes of their mounts) under ``prefix``."""
        for route in routes:
            if isinstance(route, Mount):
                self.add(route.routes, prefix + route.path)
            elif isinstance(route, Route):
                regex, template, _ = compile_path(prefix + route.path)
                self._by_endpoint.setdefault(route.endpoint, []).append((regex, template))

    def template(self, scope: Scope) -> str:
        """The template of the route that served ``scope`` (``unmatched`` when none did)."""
        candidates = self._by_endpoint.get(scope.get("endpoint"))
        if not candidates:
            return _UNMATCHED
        if len(candidates) == 1:
            return candidates[0][1]
        path = str(scope.get("path", ""))
        for regex, template in candidates:
            if regex.match(path):
                return template
        return candidates[0][1]


class ObserveMiddleware:
    """Pure ASGI: request id, access log line and metrics of each HTTP request."""

    def __init__(
        self, app: ASGIApp, templates: RouteTemplates | None = None, access_log: bool = True
    ) -> None:
        self.app = app
        self.templates = templates
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = context.valid_request_id(given) or context.new_id()
        # The task of this request has its own context: no reset needed, nothing leaks.
        context.request_id.set(rid)
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering
        sent = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode("ascii"))]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._observe(scope, status, sent, time.perf_counter() - started, rid)

    def _observe(self, scope: Scope, status: int, sent: int, seconds: float, rid: str) -> None:
        method = str(scope.get("method", ""))
        route = self.templates.template(scope) if self.templates is not None else _UNMATCHED
        counters = metrics()
        counters.http_requests.labels(method=method, route=route, status=str(status)).inc()
        counters.http_seconds.labels(method=method, route=route).observe(seconds)
        if not self.access_log:
            return
        path = str(scope.get("path", ""))
        level = logging.DEBUG if path in _QUIET_PATHS else logging.INFO
        if not ACCESS_LOGGER.isEnabledFor(level):
            return
        caller = scope.get("dicomhub.caller")
        principal = caller.who if isinstance(caller, Caller) else ""
        client = scope.get("client")
        address = str(client[0]) if client else ""
        ACCESS_LOGGER.log(
            level,
            '%s %s %d %.1f ms %d bytes principal=%s client=%s',
            method,
            path,
            status,
            seconds * 1000,
            sent,
            principal or "-",
            address or "-",
            extra={
                "fields": {
                    "http": {
                        "method": method,
                        "path": path,
                        "route": route,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 3),
                        "bytes": sent,
                        "principal": principal,
                        "client": address,
                    }
                },
                "request_id": rid,
            },
        )
