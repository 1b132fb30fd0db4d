"""The audit writer: QUERY events committed in batches behind the answer, never lost on
flush or close, and a DIMSE session's queued events written when its association ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from dicomhub.bootstrap import open_archive
from dicomhub.config import Settings, load_settings
from dicomhub.dimse.session import AssociationSession
from dicomhub.model.audit import AuditAction, AuditEvent, AuditOutcome
from dicomhub.model.caller import Caller
from dicomhub.services.archive import Archive
from dicomhub.services.audit_writer import AuditWriter

CLI = Caller.cli()


def _event(n: int | str) -> AuditEvent:
    return AuditEvent(AuditAction.QUERY, AuditOutcome.SUCCESS, CLI, (), {"n": n})


class _Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail
        self.threads: set[str] = set()

    def record_many(self, events: Sequence[AuditEvent]) -> None:
        self.threads.add(threading.current_thread().name)
        if self.fail or any(e.detail["n"] == "bad" for e in events):
            raise RuntimeError("audit store down")
        self.batches.append([int(str(e.detail["n"])) for e in events])

    def record(self, event: AuditEvent) -> None:
        self.record_many([event])


def test_events_gathered_within_the_linger_go_in_one_batch_on_the_writer_thread() -> None:
    recorder = _Recorder()
    writer = AuditWriter(recorder, linger=0.3)
    for n in range(5):
        writer.submit(_event(n))
    assert recorder.batches == []  # not on the caller's path
    deadline = time.monotonic() + 5
    while not recorder.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert recorder.batches == [[0, 1, 2, 3, 4]]
    assert recorder.threads == {"audit-writer"}
    writer.close()


def test_flush_writes_everything_submitted_before_it_without_waiting_the_linger() -> None:
    recorder = _Recorder()
    writer = AuditWriter(recorder, linger=30.0)
    writer.submit(_event(1))
    writer.submit(_event(2))
    started = time.monotonic()
    assert writer.flush(timeout=5)
    assert time.monotonic() - started < 5
    assert [n for batch in recorder.batches for n in batch] == [1, 2]
    writer.submit(_event(3))
    assert writer.flush(timeout=5)
    assert [n for batch in recorder.batches for n in batch] == [1, 2, 3]
    writer.close()


def test_a_failing_audit_store_is_logged_and_does_not_block_flush(caplog: pytest.LogCaptureFixture) -> None:
    writer = AuditWriter(_Recorder(fail=True), linger=0.0)
    writer.submit(_event(1))
    assert writer.flush(timeout=5)
    assert "cannot write an audit event" in caplog.text
    writer.close()


def test_one_bad_event_loses_no_other_of_its_batch(caplog: pytest.LogCaptureFixture) -> None:
    recorder = _Recorder()
    writer = AuditWriter(recorder, linger=30.0)
    for n in (1, "bad", 2):
        writer.submit(_event(n))
    assert writer.flush(timeout=5)
    assert recorder.batches == [[1], [2]]
    assert "cannot write an audit event" in caplog.text
    writer.close()


def test_after_close_events_are_written_at_once() -> None:
    recorder = _Recorder()
    writer = AuditWriter(recorder, linger=30.0)
    writer.submit(_event(1))
    writer.close()
    assert recorder.batches == [[1]]
    writer.submit(_event(2))
    assert recorder.batches == [[1], [2]]
    assert recorder.threads == {"audit-writer", threading.current_thread().name}


@pytest.fixture
def archive(tmp_path: Path, index_url: str) -> Iterator[Archive]:
    arch = open_archive(load_settings({"data_dir": tmp_path / "data", "database_url": index_url}, environ={}))
    yield arch
    arch.close()


def test_a_sessions_queued_query_events_are_in_the_audit_log_when_its_association_ends(
    archive: Archive,
) -> None:
    writer = AuditWriter(archive.audit, linger=30.0)
    session = AssociationSession(archive, Settings(), "127.0.0.1", None, audit_writer=writer)
    session.audit_later(AuditAction.QUERY, AuditOutcome.SUCCESS, detail={"matches": 3})
    session.audit_later(AuditAction.QUERY, AuditOutcome.MAJOR_FAILURE, detail={"reason": "bad key"})
    assert archive.audit.events(action=AuditAction.QUERY) == []
    session.end()
    events = archive.audit.events(action=AuditAction.QUERY)
    assert {e.outcome for e in events} == {AuditOutcome.SUCCESS, AuditOutcome.MAJOR_FAILURE}
    assert len(events) == 2
    writer.close()
