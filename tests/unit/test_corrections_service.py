"""Corrections on a real index and blob store (dicomhub.services.corrections):
who may correct, what a refusal leaves behind, and the records of a split and a merge."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicomhub.bootstrap import open_archive
from dicomhub.config import load_settings
from dicomhub.errors import Conflict, InvalidRequest, NotFound
from dicomhub.model.access import Access, Grant, Scope
from dicomhub.model.audit import AuditAction
from dicomhub.model.caller import Caller
from dicomhub.services.access import Forbidden
from dicomhub.services.archive import Archive
from dicomhub.services.corrections import CorrectionService
from tests import datagen

CLI = Caller.cli()


@pytest.fixture
def archive(tmp_path: Path, index_url: str) -> Iterator[Archive]:
    arch = open_archive(load_settings({"data_dir": tmp_path / "data", "database_url": index_url}, environ={}))
    yield arch
    arch.close()


def _service(archive: Archive) -> CorrectionService:
    assert archive.corrections is not None
    return archive.corrections


def _store(archive: Archive, study: str, series: str, pid: str, n: int) -> None:
    for i in range(n):
        ds = datagen.make_dataset(study_uid=study, series_uid=series, patient_id=pid, instance_number=i + 1)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        archive.ingest.store_part10(out.getvalue(), CLI)


def _sops(archive: Archive, study: str) -> set[str]:
    try:
        rows = archive.wado.instances(CLI, study)
    except NotFound:
        return set()
    return {r.sop_instance_uid for r in rows if r.sop_class_uid != "1.2.840.10008.5.1.4.1.1.88.59"}


def _failures(archive: Archive) -> list[dict[str, object]]:
    return [
        dict(e.detail) for e in archive.audit.events(action=AuditAction.CORRECTION) if e.outcome.value != "0"
    ]


def test_a_reader_may_not_correct_and_the_refusal_is_audited(archive: Archive) -> None:
    study, series = datagen.uid(), datagen.uid()
    _store(archive, study, series, "P1", 1)
    reader = dataclasses.replace(CLI, access=Access.of([Grant("reader", Scope.parse("archive"))]))
    with pytest.raises(Forbidden, match="administer"):
        _service(archive).modify(reader, study, ["StudyID=9"], new_uids=True)
    with pytest.raises(Forbidden):
        _service(archive).records(reader)
    assert _service(archive).records(CLI) == []
    (failure,) = [e for e in archive.audit.events(action=AuditAction.CORRECTION)]
    assert failure.outcome.value == "8" and "administer" in str(failure.detail["reason"])


def test_refusals_change_nothing(archive: Archive) -> None:
    a, b, s_a, s_b = datagen.uid(), datagen.uid(), datagen.uid(), datagen.uid()
    _store(archive, a, s_a, "P1", 2)
    _store(archive, b, s_b, "P2", 1)
    before = (_sops(archive, a), _sops(archive, b))
    service = _service(archive)
    with pytest.raises(InvalidRequest, match="UID"):
        service.modify(CLI, a, {"SOPInstanceUID": "1.2"}, new_uids=True)
    with pytest.raises(InvalidRequest, match="nothing to modify"):
        service.modify(CLI, a, [], new_uids=True)
    with pytest.raises(InvalidRequest, match="reject or keep"):
        service.modify(CLI, a, ["StudyID=2"], new_uids=True, source="drop")
    with pytest.raises(NotFound, match="not in study"):
        service.split(CLI, a, [s_b])
    with pytest.raises(InvalidRequest, match="every series"):
        service.split(CLI, a, [s_a])
    with pytest.raises(Conflict, match="--force"):
        service.merge_studies(CLI, a, [b])
    with pytest.raises(InvalidRequest, match="itself"):
        service.merge_studies(CLI, a, [a])
    with pytest.raises(NotFound):
        service.merge_patients(CLI, "P1", "NOBODY")
    assert (_sops(archive, a), _sops(archive, b)) == before
    assert service.records(CLI) == []
    assert len(_failures(archive)) == 8


def test_split_keep_and_forced_merge_records(archive: Archive) -> None:
    a, b, s1, s2, s3 = (datagen.uid() for _ in range(5))
    _store(archive, a, s1, "P1", 2)
    _store(archive, a, s2, "P1", 1)
    _store(archive, b, s3, "P2", 1)
    service = _service(archive)
    split = service.split(CLI, a, [s2], ["StudyDescription=Second"])
    new = split["new_study_instance_uid"]
    assert len(_sops(archive, a)) == 2 and len(_sops(archive, new)) == 1
    assert split["uid_map"][s2] != s2 and split["uid_map"][a] == new

    kept = service.modify(CLI, b, ["AccessionNumber=K1"], new_uids=True, source="keep")
    assert len(_sops(archive, b)) == 1 and len(_sops(archive, kept["new_study_instance_uid"])) == 1

    merged = service.merge_studies(CLI, a, [new, b], force=True, reason="same visit")
    assert len(_sops(archive, a)) == 4 and _sops(archive, new) == _sops(archive, b) == set()
    assert set(merged["original_values"]) == {new, b}
    # Each copy in the target has the target's patient.
    for row in archive.wado.instances(CLI, a):
        ds: Dataset = archive.corrections._read(row, stop_before_pixels=True)  # type: ignore[union-attr]
        assert ds.PatientID == "P1" or ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
    # Found by any study it read or wrote, newest first.
    assert [r["kind"] for r in service.records(CLI, b)] == ["merge-studies", "modify"]
    assert [r["kind"] for r in service.records(CLI, new)] == ["merge-studies", "split"]
