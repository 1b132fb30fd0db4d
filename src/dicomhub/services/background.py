"""The loop every background job of the background process runs."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

from dicomhub.errors import DicomhubError

__all__ = ["run_until_stopped"]


def run_until_stopped(
    stop: threading.Event,
    step: Callable[[], int],
    name: str,
    logger: logging.Logger,
    idle: float = 0.5,
    *,
    last_change: Callable[[], int] | None = None,
    patience: float = 30.0,
    claim: Callable[[], AbstractContextManager[bool]] | None = None,
) -> None:
    """Call ``step`` until it returns 0, then wait ``idle`` seconds; until ``stop``.

    The thread runs at the lowest scheduling priority (Linux schedules threads
    individually): this is derived work that must not slow storing or
    answering. With ``last_change`` (the change log's newest sequence number)
    it also waits, up to ``patience`` seconds, while the archive is busy
    storing: its own index writes would otherwise queue with the stores'.
    An index failure is logged and retried after ``idle``. With ``claim``
    (see :func:`dicomhub.index.engine.lease`), a turn runs only while this
    process holds the job's claim: when several nodes share one database, one
    of them does the work and the others skip their turn.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (OSError, AttributeError):
        pass
    seen = -1
    waited = 0.0
    while not stop.wait(idle):
        try:
            if last_change is not None:
                now = last_change()
                busy = seen not in (-1, now)
                seen = now
                if busy and waited < patience:
                    waited += idle
                    continue
                waited = 0.0
            with claim() if claim is not None else contextlib.nullcontext(True) as mine:
                while mine and not stop.is_set() and step():
                    pass
        except DicomhubError:
            logger.exception("%s failed; retrying", name)
