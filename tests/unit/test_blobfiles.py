"""A stored blob as a path or as mapped bytes (``dicomhub.services.blobfiles``), for a
store with files and for one without (S3, memory): the copy of the latter has no name,
so a process killed while it is mapped leaves nothing in the temporary folder."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from dicomhub.services.blobfiles import blob_as_file, mapped_blob
from dicomhub.storage.filesystem import FileSystemBlobStore
from dicomhub.storage.memory import MemoryBlobStore


def _named_copies() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("dicomhub-blob-*")}


@pytest.mark.parametrize("payload", [b"DICM" * 5000, b""])
def test_a_blob_without_a_file_is_mapped_from_a_copy_without_a_name(payload: bytes) -> None:
    blobs = MemoryBlobStore()
    key = blobs.new_key()
    blobs.put(key, payload)
    before = _named_copies()
    with mapped_blob(blobs, key) as data:
        assert _named_copies() == before
        assert bytes(data) == payload
        assert data[4:8] == payload[4:8]


def test_a_blob_with_a_file_is_mapped_from_it(tmp_path: Path) -> None:
    blobs = FileSystemBlobStore(tmp_path / "blobs", fsync=False)
    key = blobs.new_key()
    blobs.put(key, b"0123456789")
    with mapped_blob(blobs, key) as data, blob_as_file(blobs, key) as path:
        assert bytes(data) == b"0123456789"
        assert path == blobs.local_path(key)


def test_a_path_to_a_blob_without_a_file_is_removed_after_use() -> None:
    blobs = MemoryBlobStore()
    key = blobs.new_key()
    blobs.put(key, b"abc")
    with blob_as_file(blobs, key) as path:
        assert Path(path).read_bytes() == b"abc"
    assert not Path(path).exists()
