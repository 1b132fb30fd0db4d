"""The loop every background job of the background process runs."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from dicomhub.errors import BlobMissing, ChecksumMismatch, DicomhubError, IndexUnavailable, StorageError
from dicomhub.telemetry.metrics import count_backend_error

__all__ = ["SETTLE_SECONDS", "run_until_stopped"]

# How long the change log must stand still before derived work starts.
SETTLE_SECONDS = 2.0


def run_until_stopped(
    stop: threading.Event,
    step: Callable[[], int],
    name: str,
    logger: logging.Logger,
    idle: float = 0.5,
    *,
    last_change: Callable[[], int] | None = None,
    settle: float = SETTLE_SECONDS,
    patience: float = 30.0,
    claim: Callable[[], AbstractContextManager[bool]] | None = None,
) -> None:
    """Call ``step`` until it returns 0, then wait ``idle`` seconds; until ``stop``.

    The thread runs at the lowest scheduling priority (Linux schedules threads
    individually): this is derived work that must not slow storing or
    answering. With ``last_change`` (the change log's newest sequence number)
    it also keeps out of the way of ingest: a turn starts only once the change
    log has stood still for ``settle`` seconds, and stops early when the log
    moves again, since its reads, its index writes and the flushes they cost
    would otherwise land in the middle of the stores' (storage comes in bursts:
    a modality sending a study, a STOW-RS client between requests). When the
    archive has been busy for ``patience`` seconds, a turn runs anyway, to the
    end, so that the work never starves. An index failure is logged and
    retried after ``idle``: an outage of the index or the blob store (which
    every turn would meet again) is one warning when it starts and one when
    the job resumes, not a traceback every ``idle`` seconds. With ``claim``
    (see :func:`dicomhub.index.engine.lease`), a turn runs only while this
    process holds the job's claim: when several nodes share one database, one
    of them does the work and the others skip their turn.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (OSError, AttributeError):
        pass
    seen = -1
    moved_at = time.monotonic()  # when the change log was last seen moving (or the start)
    waiting_since: float | None = None
    in_outage = False
    while not stop.wait(idle):
        try:
            overdue = False
            if last_change is not None:
                latest, now = last_change(), time.monotonic()
                if seen not in (-1, latest):
                    moved_at = now
                seen = latest
                if now - moved_at < settle:
                    waiting_since = now if waiting_since is None else waiting_since
                    if now - waiting_since < patience:
                        continue
                    overdue = True
                waiting_since = None
            with claim() if claim is not None else contextlib.nullcontext(True) as mine:
                while mine and not stop.is_set() and step():
                    if last_change is not None and not overdue and last_change() != seen:
                        break  # storing again: wait for it to settle
        except DicomhubError as exc:
            count_backend_error(exc, "background")
            if not _outage(exc):
                logger.exception("%s failed; retrying", name)
            elif not in_outage:
                logger.warning("%s paused: %s; retrying every %.1f s", name, exc, idle)
            in_outage = _outage(exc)
        else:
            if in_outage:
                logger.warning("%s resumed", name)
            in_outage = False


def _outage(exc: DicomhubError) -> bool:
    """A back end that is down or full, not a fault of the data being worked on."""
    if isinstance(exc, IndexUnavailable):
        return True
    return isinstance(exc, StorageError) and not isinstance(exc, BlobMissing | ChecksumMismatch)
