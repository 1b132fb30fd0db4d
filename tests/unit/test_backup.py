"""Backup, restore and reindex services on a real SQLite index and file stores (no server)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from dicomhub.bootstrap import open_archive, open_backup, open_reindex, restore_source
from dicomhub.config import Settings, load_settings
from dicomhub.errors import ChecksumMismatch, Conflict, DicomhubError
from dicomhub.model.caller import Caller
from dicomhub.services.archive import Archive
from dicomhub.services.backup import BackupService
from dicomhub.storage.base import BlobStore
from tests.datagen import make_dataset, uid, write_dataset


def _settings(data_dir: Path) -> Settings:
    return load_settings({"data_dir": str(data_dir)}, environ={})


@pytest.fixture
def source(tmp_path: Path) -> Iterator[tuple[Archive, list[str]]]:
    """An archive holding four instances of one study; with their SOP Instance UIDs."""
    arch = open_archive(_settings(tmp_path / "src"))
    study = uid()
    uids = []
    for n in range(4):
        ds = make_dataset(study_uid=study, instance_number=n + 1, seed=n)
        arch.ingest.store_part10(write_dataset(tmp_path / f"in{n}.dcm", ds).read_bytes(), Caller.cli())
        uids.append(str(ds.SOPInstanceUID))
    yield arch, uids
    arch.close()


class _DeletedOnOpen:
    """The archive's store, where one blob is deleted just as the backup comes to copy it
    (an instance deleted between the snapshot and the copy)."""

    def __init__(self, inner: BlobStore, key: str) -> None:
        self.inner = inner
        self.key = key

    def open(self, key: str) -> BinaryIO:
        if key == self.key:
            self.inner.delete(key)
        return self.inner.open(key)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_a_blob_deleted_after_the_snapshot_is_marked_gone_and_its_row_left_out(
    source: tuple[Archive, list[str]], tmp_path: Path
) -> None:
    arch, uids = source
    victim = arch.index.get_instance(uids[1])
    assert victim is not None
    service, close = open_backup(_settings(tmp_path / "src"))
    service.blobs = _DeletedOnOpen(service.blobs, victim.blob_key)  # type: ignore[assignment]
    try:
        report = service.backup(tmp_path / "bk", copy_blobs=True)
    finally:
        close()
    assert report.ok and report.gone == [victim.blob_key]
    lines = [json.loads(x) for x in (tmp_path / "bk" / "blobs.jsonl").read_text().splitlines()]
    assert [x["gone"] for x in lines if x["key"] == victim.blob_key] == [True]

    target = _settings(tmp_path / "dst")
    service, close = open_backup(target)
    try:
        restored = service.restore(tmp_path / "bk", source=restore_source(target, tmp_path / "bk"))
    finally:
        close()
    assert restored.rows_removed == [uids[1]]
    assert (restored.instances, restored.blobs_copied) == (3, 3)
    arch2 = open_archive(target)
    try:
        assert arch2.index.get_instance(uids[1]) is None
        for u in (uids[0], uids[2], uids[3]):
            row = arch2.index.get_instance(u)
            assert row is not None and arch2.blobs.read(row.blob_key) == arch.blobs.read(row.blob_key)
        assert arch2.storage_check.check().ok  # no row without its blob
    finally:
        arch2.close()


def test_backup_into_a_folder_that_is_not_empty_is_refused(tmp_path: Path, source: object) -> None:
    (tmp_path / "bk").mkdir()
    (tmp_path / "bk" / "something").write_text("x")
    service, close = open_backup(_settings(tmp_path / "src"))
    try:
        with pytest.raises(Conflict, match="not an empty folder"):
            service.backup(tmp_path / "bk", copy_blobs=True)
    finally:
        close()


def test_manifest_only_backup_restored_onto_its_own_store_verifies_in_place(
    source: tuple[Archive, list[str]], tmp_path: Path
) -> None:
    arch, _uids = source
    service, close = open_backup(_settings(tmp_path / "src"))
    try:
        report = service.backup(tmp_path / "bk", copy_blobs=False)
    finally:
        close()
    assert not report.manifest.blobs_copied and not (tmp_path / "bk" / "blobs").exists()
    # The index is lost; the blobs are where they were: restore verifies them there.
    arch.close()
    for path in (tmp_path / "src").glob("index.sqlite*"):
        path.unlink()
    settings = _settings(tmp_path / "src")
    assert restore_source(settings, tmp_path / "bk") is None
    service, close = open_backup(settings)
    try:
        restored = service.restore(tmp_path / "bk", source=None)
        # A blob changed in place since: named, nothing restored.
        blobs = service.blobs
        key = next(k for k, s in blobs.iter_blobs() if s.size)
        path = Path(blobs.local_path(key) or "")
        data = bytearray(path.read_bytes())
        data[0] ^= 1
        path.write_bytes(bytes(data))
        with pytest.raises(ChecksumMismatch, match=f"blob {key} .* is damaged"):
            service.restore(tmp_path / "bk", source=None, force=True)
    finally:
        close()
    assert (restored.instances, restored.blobs_verified, restored.blobs_copied) == (4, 4, 0)


def test_restore_refuses_another_kind_of_index_and_a_missing_manifest(tmp_path: Path, source: object) -> None:
    service, close = open_backup(_settings(tmp_path / "src"))
    try:
        service.backup(tmp_path / "bk", copy_blobs=True)
    finally:
        close()
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    manifest["index_kind"] = "postgresql"
    (tmp_path / "bk" / "manifest.json").write_text(json.dumps(manifest))
    target = _settings(tmp_path / "dst")
    service, close = open_backup(target)
    try:
        with pytest.raises(Conflict, match="holds a postgresql index"):
            service.restore(tmp_path / "bk", source=None)
        os.unlink(tmp_path / "bk" / "manifest.json")
        with pytest.raises(DicomhubError, match="not a complete dicomhub backup"):
            service.restore(tmp_path / "bk", source=None)
    finally:
        close()
    assert isinstance(service, BackupService)


def test_reindex_keeps_refused_copies_as_conflicts_again(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "data")
    arch = open_archive(settings)
    study = uid()
    first = make_dataset(study_uid=study, patient_id="P1", seed=1)
    arch.ingest.store_part10(write_dataset(tmp_path / "a.dcm", first).read_bytes(), Caller.cli())
    # The same UID with other content, and the study under another patient: refused, kept.
    other = make_dataset(study_uid=study, patient_id="P1", sop_uid=str(first.SOPInstanceUID), seed=2)
    wrong_patient = make_dataset(study_uid=study, patient_id="P2", seed=3)
    for name, ds in (("b.dcm", other), ("c.dcm", wrong_patient)):
        with pytest.raises(Conflict):
            arch.ingest.store_part10(write_dataset(tmp_path / name, ds).read_bytes(), Caller.cli())
    kept = {c["blob_key"]: c["kind"] for c in arch.index.conflicts()}
    held = arch.index.get_instance(str(first.SOPInstanceUID))
    assert held is not None and len(kept) == 2
    arch.close()
    for path in (tmp_path / "data").glob("index.sqlite*"):
        path.unlink()

    service, close = open_reindex(settings)
    try:
        report = service.reindex()
    finally:
        close()
    assert (report.blobs, report.indexed, len(report.kept_refused), report.ok) == (3, 1, 2, True)
    arch = open_archive(settings)
    try:
        row = arch.index.get_instance(str(first.SOPInstanceUID))
        assert row is not None and row.blob_key == held.blob_key  # the first copy, as at ingest
        assert {c["blob_key"]: c["kind"] for c in arch.index.conflicts()} == kept
        assert arch.storage_check.check().ok
    finally:
        arch.close()
