"""Association statistics: the association loop's events, folded into one record per
association and written to the association log in batches.

Each association runs on its own thread, so the record being built lives in
a thread-local; a flusher thread writes finished records once a second, so
that a burst of short associations costs one transaction, not one each.

The same events feed the Prometheus counters (:mod:`dicomhub.telemetry.metrics`)
as they happen: the association log is pruned after 30 days, the counters
only ever grow (until the server restarts).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence

from dicomhub.errors import IndexUnavailable
from dicomhub.model.associations import AssociationRecord
from dicomhub.telemetry.metrics import metrics

__all__ = ["AssociationRecorder"]

LOGGER = logging.getLogger("dicomhub.dimse.stats")

_OPERATIONS = ("store", "echo", "find", "get", "move")


def _count(details: dict[str, object], key: str) -> int:
    value = details.get(key)
    return value if isinstance(value, int) else 0


def _status_class(status: object) -> str:
    code = int(status) if isinstance(status, int) else -1
    if code == 0x0000:
        return "success"
    if code in (0xB000, 0xB006, 0xB007) or (code & 0xF000) == 0xB000:
        return "warning"
    if code == 0xFE00:
        return "cancel"
    return "failure"


class AssociationRecorder:
    """``on_event`` hook of :func:`dicomhub.dimse.association.serve_association`."""

    def __init__(self, write: Callable[[Sequence[AssociationRecord]], None], interval: float = 1.0) -> None:
        self._write = write
        self._interval = interval
        self._local = threading.local()
        self._done: list[AssociationRecord] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> AssociationRecorder:
        self._thread = threading.Thread(target=self._run, name="association-log", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()

    def on_event(self, name: str, details: dict[str, object]) -> None:
        now = dt.datetime.now(dt.UTC)
        if name == "associated":
            self._local.record = AssociationRecord(
                calling_ae_title=str(details.get("calling_ae_title", "")),
                called_ae_title=str(details.get("called_ae_title", "")),
                peer_host=str(details.get("peer_host", "")),
                started_at=now,
                accepted_contexts=_count(details, "accepted_contexts"),
                rejected_contexts=_count(details, "rejected_contexts"),
                contexts=contexts if isinstance(contexts := details.get("contexts"), list) else None,
            )
            self._local.started = time.monotonic()
            return
        if name == "rejected":
            metrics().associations.labels(
                calling_ae=str(details.get("calling_ae_title", "")), outcome="rejected"
            ).inc()
            self._finish(
                AssociationRecord(
                    calling_ae_title=str(details.get("calling_ae_title", "")),
                    called_ae_title=str(details.get("called_ae_title", "")),
                    peer_host=str(details.get("peer_host", "")),
                    started_at=now,
                    outcome="rejected",
                    reason=str(details.get("reason", "")) or None,
                )
            )
            return
        record: AssociationRecord | None = getattr(self._local, "record", None)
        if name in _OPERATIONS:
            status_class = _status_class(details.get("status"))
            counters = metrics()
            counters.dimse_operations.labels(
                calling_ae=str(details.get("calling_ae_title", "")), operation=name, status=status_class
            ).inc()
            seconds = details.get("seconds")
            if isinstance(seconds, float):
                counters.dimse_seconds.labels(operation=name).observe(seconds)
            if record is not None:
                key = f"{name}:{status_class}"
                record.operations[key] = record.operations.get(key, 0) + 1
            return
        if name in ("released", "aborted"):
            if record is None:
                # Garbage before any association (e.g. not DICOM at all).
                record = AssociationRecord("", "", str(details.get("peer_host", "")), now)
            else:
                record.seconds = time.monotonic() - getattr(self._local, "started", time.monotonic())
            record.outcome = name
            if name == "aborted":
                record.reason = f"{details.get('reason', '')} ({details.get('by', 'peer')})".strip()
            record.bytes_received = _count(details, "bytes")
            self._local.record = None
            counters = metrics()
            counters.associations.labels(calling_ae=record.calling_ae_title, outcome=name).inc()
            counters.dimse_received_bytes.labels(calling_ae=record.calling_ae_title).inc(
                record.bytes_received
            )
            if record.rejected_contexts:
                counters.contexts_rejected.labels(calling_ae=record.calling_ae_title).inc(
                    record.rejected_contexts
                )
            self._finish(record)

    def _finish(self, record: AssociationRecord) -> None:
        with self._lock:
            self._done.append(record)

    def flush(self) -> None:
        with self._lock:
            batch, self._done = self._done, []
        if not batch:
            return
        try:
            self._write(batch)
        except IndexUnavailable as exc:
            # An outage meets every flush: one line, not a traceback every interval.
            LOGGER.warning("could not write %d association log rows: %s", len(batch), exc)
        except Exception:  # noqa: BLE001 - statistics must never disturb the service
            LOGGER.exception("could not write %d association log rows", len(batch))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()
