"""Stable studies and series on a real index (SQLite, then PostgreSQL): announced once
when quiet for the stable age, not before, and again after a late instance; each
announcement is one ``stable`` change in the change log."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.repository import IndexRepository
from dicomhub.index.stability import StabilityRepository
from dicomhub.model.caller import Caller
from dicomhub.model.policy import DuplicatePolicy
from dicomhub.model.timestamps import utc_now
from dicomhub.services.ingest import IngestService
from dicomhub.services.stability import StabilityService
from dicomhub.storage.memory import MemoryBlobStore
from tests import datagen

CLI = Caller.cli()


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def stable_changes(index: IndexRepository) -> list[tuple[str, str]]:
    return [(c["level"], c["uid"]) for c in index.changes(0, 10_000) if c["change_type"] == "stable"]


def test_stable_once_quiet_and_again_after_a_late_instance(tmp_path: Path, index_url: str) -> None:
    engine = connect_engine(index_url)
    migrate(engine, lock_dir=tmp_path)
    index = IndexRepository(engine)
    ingest = IngestService(index, MemoryBlobStore(), DuplicatePolicy.KEEP)
    clock = [utc_now()]
    service = StabilityService(StabilityRepository(engine), 60, clock=lambda: clock[0])

    first = datagen.make_dataset(patient_id="ST1")
    ingest.store_part10(encode(first), CLI)
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    assert service.step() == 0  # stored just now: not quiet for 60 s yet
    clock[0] += dt.timedelta(seconds=61)
    assert service.step() == 2
    assert stable_changes(index) == [("SERIES", series), ("STUDY", study)]
    clock[0] += dt.timedelta(seconds=600)
    assert service.step() == 0  # announced once

    # A late instance in a new series of the same study: both unstable, announced again.
    late = datagen.make_dataset(patient_id="ST1", study_uid=study)
    ingest.store_part10(encode(late), CLI)
    clock[0] = utc_now() + dt.timedelta(seconds=30)
    assert service.step() == 0
    clock[0] += dt.timedelta(seconds=31)
    assert service.step() == 2
    assert stable_changes(index)[2:] == [("SERIES", str(late.SeriesInstanceUID)), ("STUDY", study)]


def test_a_late_instance_in_the_same_series_unsettles_it_after_the_skip_window(
    tmp_path: Path, index_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store skips clearing ``stable_at`` it cleared less than ``unstable_for`` ago (the
    detector cannot have announced since); past that it clears again."""
    import dicomhub.index.repository as repository

    engine = connect_engine(index_url)
    migrate(engine, lock_dir=tmp_path)
    index = IndexRepository(engine, unstable_for=30)
    ingest = IngestService(index, MemoryBlobStore(), DuplicatePolicy.KEEP)
    clock = [utc_now()]
    service = StabilityService(StabilityRepository(engine), 60, clock=lambda: clock[0])
    ticks = [1000.0]
    monkeypatch.setattr(repository.time, "monotonic", lambda: ticks[0])

    first = datagen.make_dataset(patient_id="ST2")
    ingest.store_part10(encode(first), CLI)
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    clock[0] += dt.timedelta(seconds=61)
    assert service.step() == 2  # quiet for the stable age: announced

    # The same series, a stable age later (as the detector requires): cleared again.
    ticks[0] += 61
    late = datagen.make_dataset(patient_id="ST2", study_uid=study, series_uid=series)
    ingest.store_part10(encode(late), CLI)
    clock[0] = utc_now() + dt.timedelta(seconds=61)
    assert service.step() == 2
    assert stable_changes(index)[2:] == [("SERIES", series), ("STUDY", study)]
