"""The storage check and the storage migration on a real index (SQLite) and real stores."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomhub.bootstrap import open_archive
from dicomhub.config import load_settings
from dicomhub.index.blobs import BlobRecords
from dicomhub.model.caller import Caller
from dicomhub.model.commitment import PROCESSING_FAILURE, CommitmentItem
from dicomhub.services.archive import Archive
from dicomhub.services.contentdigest import PENDING, content_digest
from dicomhub.services.storagemigration import StorageMigration
from dicomhub.storage.filesystem import FileSystemBlobStore
from dicomhub.storage.memory import MemoryBlobStore
from tests.datagen import make_dataset, write_dataset


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    arch = open_archive(load_settings({"data_dir": str(tmp_path / "data")}, environ={}))
    for n in range(3):
        path = write_dataset(tmp_path / f"in{n}.dcm", make_dataset(instance_number=n + 1))
        arch.ingest.store_part10(path.read_bytes(), Caller.cli())
    yield arch
    arch.close()


def _keys(archive: Archive) -> list[str]:
    return sorted(r.blob_key for r in BlobRecords(archive.index.engine).all())


def test_sizes_only_misses_same_size_damage_that_digests_find(archive: Archive) -> None:
    key = _keys(archive)[0]
    data = archive.blobs.read(key)
    archive.blobs.delete(key)
    archive.blobs.put(key, data[:-1] + bytes([data[-1] ^ 1]))
    assert archive.storage_check.check(digests=False).ok
    found = archive.storage_check.check().problems
    assert [(p.kind, p.blob_key) for p in found] == [("digest-mismatch", key)]


def test_migration_keeps_a_damaged_source_and_resumes(archive: Archive) -> None:
    keys = _keys(archive)
    assert isinstance(archive.blobs, FileSystemBlobStore)
    bad = keys[1]
    data = archive.blobs.read(bad)
    archive.blobs.delete(bad)
    archive.blobs.put(bad, data[::-1])
    target = MemoryBlobStore()
    migration = StorageMigration(BlobRecords(archive.index.engine), archive.blobs, target)
    report = migration.run(jobs=2)
    assert (report.blobs, report.copied, report.removed_from_source) == (3, 2, 2)
    assert [(p.kind, p.blob_key) for p in report.problems] == [("digest-mismatch", bad)]
    assert archive.blobs.exists(bad) and not target.exists(bad)  # nothing lost, no bad copy
    archive.blobs.delete(bad)
    archive.blobs.put(bad, data)  # mended from elsewhere
    again = migration.run()
    assert (again.copied, again.already_there, again.problems) == (1, 2, [])
    assert sorted(target.iter_keys()) == keys
    assert [k for k, s in archive.blobs.iter_blobs() if s.size] == []


# ---------------------------------------------------------------- digests STOW-RS leaves for later


@pytest.fixture
def stowed(tmp_path: Path) -> Iterator[tuple[Archive, dict[str, bytes]]]:
    """An archive on a file store holding three objects stored the STOW-RS way (store_many),
    whose blob and data set digests are left for later; with the objects by SOP Instance UID."""
    arch = open_archive(load_settings({"data_dir": str(tmp_path / "data")}, environ={}))
    datasets = [make_dataset(instance_number=n + 1) for n in range(3)]
    objects = {
        str(ds.SOPInstanceUID): write_dataset(tmp_path / f"stow{n}.dcm", ds).read_bytes()
        for n, ds in enumerate(datasets)
    }
    results = arch.ingest.store_many(list(objects.values()), Caller.cli())
    assert not any(isinstance(r, Exception) for r in results)
    yield arch, objects
    arch.close()


def _damage(archive: Archive, key: str) -> None:
    data = archive.blobs.read(key)
    archive.blobs.delete(key)
    archive.blobs.put(key, data[:-1] + bytes([data[-1] ^ 1]))


def _sha256_of_blob(archive: Archive, key: str) -> str:
    return hashlib.sha256(archive.blobs.read(key)).hexdigest()


def test_stow_leaves_both_digests_and_the_background_fills_them(
    stowed: tuple[Archive, dict[str, bytes]],
) -> None:
    archive, objects = stowed
    rows = [archive.index.get_instance(uid) for uid in objects]
    assert all(r is not None and (r.sha256, r.content_sha256) == (PENDING, PENDING) for r in rows)
    archive.content_digests.fill_all()
    for uid, data in objects.items():
        row = archive.index.get_instance(uid)
        assert row is not None
        assert row.sha256 == _sha256_of_blob(archive, row.blob_key)
        assert row.content_sha256 == content_digest(data)
    assert archive.storage_check.check().ok


def test_storage_check_takes_a_left_digest_and_verifies_from_then_on(
    stowed: tuple[Archive, dict[str, bytes]],
) -> None:
    archive, _objects = stowed
    assert archive.storage_check.check().ok  # computes and records the blob digests
    records = list(BlobRecords(archive.index.engine).all())
    assert [r.sha256 == _sha256_of_blob(archive, r.blob_key) for r in records] == [True] * 3
    # The data set digests stay for the background (blob known, data set pending is allowed).
    assert len(archive.index.pending_content_digests(10)) == 3
    key = sorted(r.blob_key for r in records)[0]
    _damage(archive, key)
    problems = archive.storage_check.check().problems
    assert [(p.kind, p.blob_key) for p in problems] == [("digest-mismatch", key)]


def test_storage_migration_takes_a_left_digest_from_the_source(
    stowed: tuple[Archive, dict[str, bytes]],
) -> None:
    archive, _objects = stowed
    target = MemoryBlobStore()
    report = StorageMigration(BlobRecords(archive.index.engine), archive.blobs, target).run(jobs=2)
    assert (report.copied, report.removed_from_source, report.problems) == (3, 3, [])
    for record in BlobRecords(archive.index.engine).all():
        assert record.sha256 == hashlib.sha256(target.read(record.blob_key)).hexdigest()


def test_storage_commitment_of_an_object_whose_digest_is_left(
    stowed: tuple[Archive, dict[str, bytes]],
) -> None:
    archive, objects = stowed
    uid = next(iter(objects))
    row = archive.index.get_instance(uid)
    assert row is not None and row.sha256 == PENDING
    item = CommitmentItem(row.sop_class_uid, uid)
    assert archive.commitment._check(item) is None
    after = archive.index.get_instance(uid)
    assert after is not None and after.sha256 == _sha256_of_blob(archive, row.blob_key)
    _damage(archive, row.blob_key)  # after its digest was taken: the commitment fails
    assert archive.commitment._check(item) == PROCESSING_FAILURE


def test_a_kept_conflicting_copy_has_its_digest(
    stowed: tuple[Archive, dict[str, bytes]], tmp_path: Path
) -> None:
    archive, objects = stowed
    ds = make_dataset(instance_number=1)
    ds.SOPInstanceUID = next(iter(objects))
    ds.StudyDescription = "other content"
    other = write_dataset(tmp_path / "other.dcm", ds).read_bytes()
    (refused,) = archive.ingest.store_many([other], Caller.cli())
    assert isinstance(refused, Exception)
    (kept,) = archive.index.conflicts()
    assert kept["sha256"] == _sha256_of_blob(archive, kept["blob_key"])
