"""uvicorn's HTTP/1.1 protocol with deadlines for slow clients.

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``) but has
no deadline for the request itself: a client that opens a connection and
sends nothing, or trickles its request head or its body a byte at a time
(slow loris), keeps the connection, and a STOW-RS body keeps its ingest
thread, for as long as it likes. :func:`http_protocol` returns uvicorn's
httptools protocol with two rules added, in the manner of Apache's
``mod_reqtimeout``:

* the request head (request line and header fields) must be complete within
  ``header_timeout`` seconds of the connection opening or of the previous
  response;
* a request body must deliver at least ``body_min_rate`` bytes per second,
  judged over every ``body_timeout`` seconds (so a body with no byte for that
  long fails too). Time during which the application does not read (uvicorn
  has paused the socket because the body waits unread) is not held against
  the client.

A connection that breaks a rule is closed; the application sees the client
disconnect (a STOW-RS upload stores nothing and frees its thread and spool).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["http_protocol"]

LOGGER = logging.getLogger("dicomhub.web")


def http_protocol(
    header_timeout: float, body_timeout: float, body_min_rate: int
) -> type[asyncio.Protocol] | str:
    """uvicorn's ``http`` setting: the httptools protocol with the deadlines above.

    Returns ``"auto"`` (uvicorn's own choice, without these deadlines) where
    httptools is not installed (it has no PyPy build).
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - CPython installs httptools
        LOGGER.warning("httptools is not installed: no deadlines for slow HTTP clients")
        return "auto"

    class DeadlineHttpProtocol(HttpToolsProtocol):
        """HttpToolsProtocol closing connections whose request head or body is too slow."""

        _head_timer: asyncio.TimerHandle | None = None
        _body_timer: asyncio.TimerHandle | None = None
        _window_bytes = 0
        _paused_in_window = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            pause = self.flow.pause_reading

            def pause_reading() -> None:
                # A paused socket is the application's doing, not the client's.
                self._paused_in_window = True
                pause()

            self.flow.pause_reading = pause_reading  # type: ignore[method-assign]
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_timers()
            super().connection_lost(exc)

        def on_headers_complete(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().on_headers_complete()
            if self._expects_body():
                self._window_bytes = 0
                self._paused_in_window = False
                self._body_timer = self.loop.call_later(body_timeout, self._judge_body)

        def on_body(self, body: bytes) -> None:
            self._window_bytes += len(body)
            super().on_body(body)

        def on_message_complete(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()

        # -- the rules

        def _expects_body(self) -> bool:
            for name, value in self.headers:
                if name == b"content-length":
                    return value.strip() not in (b"", b"0")
                if name == b"transfer-encoding":
                    return True
            return False

        def _arm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            # A keep-alive connection between requests is uvicorn's business (its
            # shorter timeout_keep_alive); this is for a head that started or never came.
            if self.cycle is not None and not self.cycle.response_complete:
                return
            self._close(f"request head not complete within {header_timeout:g} s")

        def _judge_body(self) -> None:
            self._body_timer = None
            if self.transport.is_closing() or self.cycle is None or not self.cycle.more_body:
                return
            received, self._window_bytes = self._window_bytes, 0
            paused = self._paused_in_window or self.flow.read_paused
            self._paused_in_window = False
            if not paused and received < body_min_rate * body_timeout:
                self._close(
                    f"request body too slow: {received} bytes in {body_timeout:g} s "
                    f"(at least {body_min_rate} bytes/s required)"
                )
                return
            self._body_timer = self.loop.call_later(body_timeout, self._judge_body)

        def _cancel_timers(self) -> None:
            for timer in (self._head_timer, self._body_timer):
                if timer is not None:
                    timer.cancel()
            self._head_timer = self._body_timer = None

        def _close(self, why: str) -> None:
            client: Any = self.client
            where = f"{client[0]}:{client[1]}" if client else "?"
            LOGGER.warning("HTTP connection from %s closed: %s", where, why)
            self._cancel_timers()
            self.transport.close()

    return DeadlineHttpProtocol
