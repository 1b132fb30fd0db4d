"""The loop of the background jobs: it keeps out of ingest's way, and never starves."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from dicomhub.errors import DoesNotMatchIOD, IndexUnavailable
from dicomhub.services.background import run_until_stopped

LOGGER = logging.getLogger("test.background")


class _Archive:
    """A change log that moves while ``storing`` is set, and a job with pending work."""

    def __init__(self, pending: int) -> None:
        self.seq = 0
        self.storing = threading.Event()
        self.pending = pending
        self.steps: list[float] = []

    def last_change(self) -> int:
        if self.storing.is_set():
            self.seq += 1
        return self.seq

    def step(self) -> int:
        if not self.pending:
            return 0
        self.pending -= 1
        self.steps.append(time.monotonic())
        return 1


def _run(archive: _Archive, *, settle: float, patience: float) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(
        target=run_until_stopped,
        args=(stop, archive.step, "test job", LOGGER, 0.01),
        kwargs={"last_change": archive.last_change, "settle": settle, "patience": patience},
        daemon=True,
    )
    thread.start()
    return stop, thread


def _wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


def test_work_waits_until_storing_has_settled() -> None:
    archive = _Archive(pending=3)
    archive.storing.set()
    stop, thread = _run(archive, settle=0.3, patience=60)
    try:
        time.sleep(0.5)
        assert archive.steps == []  # storing goes on: nothing done
        archive.storing.clear()
        quiet_at = time.monotonic()
        _wait_for(lambda: archive.pending == 0)
        assert archive.pending == 0
        assert archive.steps[0] - quiet_at >= 0.3 - 0.02  # only once the log stood still
    finally:
        stop.set()
        thread.join(5)


def test_a_turn_stops_when_storing_starts_again() -> None:
    archive = _Archive(pending=1000)

    def step() -> int:
        done = _Archive.step(archive)
        if len(archive.steps) == 5:
            archive.storing.set()  # ingest resumes in the middle of the turn
        return done

    archive.step = step  # type: ignore[method-assign]
    stop, thread = _run(archive, settle=0.3, patience=60)
    try:
        _wait_for(lambda: len(archive.steps) >= 5)
        time.sleep(0.3)
        assert len(archive.steps) <= 6  # it stepped back at once
    finally:
        stop.set()
        thread.join(5)


def test_work_runs_anyway_when_storing_never_settles() -> None:
    archive = _Archive(pending=50)
    archive.storing.set()
    stop, thread = _run(archive, settle=0.3, patience=0.5)
    try:
        _wait_for(lambda: archive.pending == 0)
        assert archive.pending == 0  # an overdue turn runs to the end
    finally:
        stop.set()
        thread.join(5)


def test_an_outage_is_one_warning_and_other_failures_keep_their_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcomes: list[Exception | int] = [
        *[IndexUnavailable("index write failed: OperationalError")] * 5,
        0,
        DoesNotMatchIOD("a broken object"),
        0,
    ]
    done = threading.Event()

    def step() -> int:
        if not outcomes:
            done.set()
            return 0
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    stop = threading.Event()
    caplog.set_level(logging.WARNING, logger=LOGGER.name)
    thread = threading.Thread(target=run_until_stopped, args=(stop, step, "test job", LOGGER, 0.01))
    thread.start()
    assert done.wait(10)
    stop.set()
    thread.join(5)
    messages = [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert messages == [
        (logging.WARNING, "test job paused: index write failed: OperationalError; retrying every 0.0 s",
         False),  # fmt: skip
        (logging.WARNING, "test job resumed", False),
        (logging.ERROR, "test job failed; retrying", True),
    ]
