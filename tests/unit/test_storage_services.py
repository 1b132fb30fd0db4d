"""The storage check and the storage migration on a real index (SQLite) and real stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomhub.bootstrap import open_archive
from dicomhub.config import load_settings
from dicomhub.index.blobs import BlobRecords
from dicomhub.model.caller import Caller
from dicomhub.services.archive import Archive
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
