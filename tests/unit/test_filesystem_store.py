"""The filesystem blob store: pooled keys, durability path, hostile keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomhub.errors import BlobMissing, StorageError
from dicomhub.storage.base import new_blob_key
from dicomhub.storage.filesystem import FileSystemBlobStore


def test_pooled_and_fresh_keys_round_trip(tmp_path: Path) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs")
    pooled = store.new_key()
    fresh = new_blob_key()
    info = store.put(pooled, b"first")
    assert info.size == 5 and len(info.sha256) == 64
    store.put(fresh, b"second")
    assert store.read(pooled) == b"first"
    assert store.read(fresh) == b"second"
    assert {pooled, fresh} <= set(store.iter_keys())
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "blobs").rglob("*"))


def test_keys_are_unique_and_never_reused(tmp_path: Path) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs")
    keys = [store.new_key() for _ in range(200)]
    assert len(set(keys)) == 200


@pytest.mark.parametrize("key", ["../../etc/passwd", "1.2.3.4", "A" * 32, ""])
def test_hostile_keys_never_reach_the_filesystem(tmp_path: Path, key: str) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs")
    with pytest.raises(StorageError):
        store.put(key, b"x")


def test_missing_blob(tmp_path: Path) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs")
    with pytest.raises(BlobMissing):
        store.read(new_blob_key())


def test_deferred_durability_then_one_sync(tmp_path: Path) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs")
    keys = [store.new_key() for _ in range(5)]
    for i, key in enumerate(keys):
        store.put(key, bytes([i]) * 1000, durable=False)
    store.sync()
    assert [store.read(k) for k in keys] == [bytes([i]) * 1000 for i in range(5)]
