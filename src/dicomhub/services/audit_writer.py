"""Audit events written behind the answer, in batches, by one background thread.

A C-FIND's QUERY event used to be committed before the final C-FIND-RSP went
out: one write transaction (a dozen WAL pages and an ``fdatasync`` on SQLite)
per query, more than half of the server's time for a one-match query, and
on the path of every client that queries in a loop. The matches have already
gone out by then, so committing the event first does not keep anything from
the caller; it only delays the final status. :class:`AuditWriter` takes
such events, and a thread commits what has gathered within ``linger``
seconds in one transaction (:meth:`AuditService.record_many`).

A crash of the process loses the events of the last ``linger`` seconds at
most; :meth:`AuditWriter.flush` (end of an association, shutdown) writes
everything submitted before it returns. The HTTP side queues the events of
reads the same way (``AuditBacklog`` in :mod:`dicomhub.web.auth`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Final, Protocol

from dicomhub.model.audit import AuditEvent
from dicomhub.telemetry.metrics import metrics

__all__ = ["AuditWriter"]

LOGGER = logging.getLogger("dicomhub.audit")

#: How long the thread gathers events before it commits them.
DEFAULT_LINGER: Final = 0.05
#: At most this many events per transaction.
_MAX_BATCH: Final = 1000


class _Recorder(Protocol):
    def record(self, event: AuditEvent) -> None: ...

    def record_many(self, events: Sequence[AuditEvent]) -> None: ...


class AuditWriter:
    """Commits submitted audit events on a background thread, a batch per ``linger`` seconds."""

    def __init__(self, recorder: _Recorder, linger: float = DEFAULT_LINGER) -> None:
        self._recorder = recorder
        self._linger = linger
        self._lock = threading.Condition()
        self._pending: list[AuditEvent] = []
        self._submitted = 0
        self._done = 0  # written, or given up after a failure (logged)
        self._hurry = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, event: AuditEvent) -> None:
        """Queue ``event``; it is committed within about ``linger`` seconds.

        After :meth:`close` the event is written at once, on the caller's thread.
        """
        with self._lock:
            if not self._closed:
                self._pending.append(event)
                self._submitted += 1
                metrics().queue_depth.labels(queue="audit-dimse").inc()
                if self._thread is None:
                    # Started on first use: a process that never submits has no thread.
                    self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                    self._thread.start()
                self._lock.notify_all()
                return
        self._write([event])

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every event submitted so far is written; False on timeout."""
        with self._lock:
            target = self._submitted
            if self._done >= target:
                return True
            self._hurry.set()
            self._lock.notify_all()
            return self._lock.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Write what is queued and stop the thread; later events are written synchronously."""
        self.flush(timeout)
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: bool(self._pending) or self._closed)
                if not self._pending:
                    return  # closed and drained
            # Let more events gather, unless someone waits for them.
            self._hurry.wait(self._linger)
            with self._lock:
                batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
                if not self._pending:
                    self._hurry.clear()
            self._write(batch)
            metrics().queue_depth.labels(queue="audit-dimse").dec(len(batch))
            with self._lock:
                self._done += len(batch)
                self._lock.notify_all()

    def _write(self, events: list[AuditEvent]) -> None:
        try:
            self._recorder.record_many(events)
        except Exception:  # noqa: BLE001 - one by one, so that one bad event loses no other
            for event in events:
                try:
                    self._recorder.record(event)
                except Exception:  # noqa: BLE001 - the audit store may be down; the operation is done
                    LOGGER.exception("cannot write an audit event: %s", event)
