"""The loop every background job of the background process runs."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from dicomhub.errors import DicomhubError

__all__ = ["run_until_stopped"]


def run_until_stopped(
    stop: threading.Event, step: Callable[[], int], name: str, logger: logging.Logger, idle: float = 0.5
) -> None:
    """Call ``step`` until it returns 0, then wait ``idle`` seconds; until ``stop``.

    The thread runs at the lowest scheduling priority (Linux schedules threads
    individually): this is derived work that must not slow storing or
    answering. An index failure is logged and retried after ``idle``.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (OSError, AttributeError):
        pass
    while not stop.wait(idle):
        try:
            while not stop.is_set() and step():
                pass
        except DicomhubError:
            logger.exception("%s failed; retrying", name)
