"""The filesystem blob store (and the memory fake): pooled keys, durability path, hostile keys, streaming."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomhub.errors import BlobMissing, InsufficientStorage, StorageError
from dicomhub.storage.base import BlobInfo, new_blob_key
from dicomhub.storage.filesystem import FileSystemBlobStore
from dicomhub.storage.memory import MemoryBlobStore


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


# ---------------------------------------------------------------------------
# put_stream: large blobs one chunk at a time
# ---------------------------------------------------------------------------


def _chunks() -> list[bytes | memoryview]:
    return [b"meta-", memoryview(b"0123456789" * 1000), b"", memoryview(bytearray(b"tail"))]


def test_put_stream_pooled_and_fresh_keys(tmp_path: Path) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs")
    expected = b"".join(bytes(c) for c in _chunks())
    for key in (store.new_key(), new_blob_key()):
        info = store.put_stream(key, iter(_chunks()))
        assert info == BlobInfo(key, len(expected), hashlib.sha256(expected).hexdigest())
        assert store.read(key) == expected
        assert store.open_range(key, 5, 10) == b"0123456789"
        assert store.open_range(key, len(expected) - 2, 100) == b"il"
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "blobs").rglob("*"))


def test_put_stream_shares_puts_durability_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs")
    flushes: list[int] = []
    real = os.fdatasync

    def counted(fd: int) -> None:
        flushes.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counted)
    store.put_stream(store.new_key(), _chunks())
    assert len(flushes) == 1
    store.put_stream(store.new_key(), _chunks(), durable=False)
    assert len(flushes) == 1  # deferred to sync()
    store.sync()
    unflushed = FileSystemBlobStore(tmp_path / "other", fsync=False)
    unflushed.put_stream(unflushed.new_key(), _chunks())
    assert len(flushes) == 1


@pytest.mark.parametrize("pooled", [True, False])
def test_put_stream_failure_leaves_no_partial_blob(tmp_path: Path, pooled: bool) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs")
    key = store.new_key() if pooled else new_blob_key()

    def chunks() -> Iterator[bytes]:
        yield b"x" * 1000
        raise OSError(5, "spool file unreadable")

    with pytest.raises(OSError, match="spool file unreadable"):  # the source's error, as is
        store.put_stream(key, chunks())
    # A pooled key's file is empty again (an unused key), a fresh key has none.
    if pooled:
        assert store.read(key) == b""
    else:
        assert not store.exists(key)
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "blobs").rglob("*"))


def test_memory_store_put_stream_and_open_range() -> None:
    store = MemoryBlobStore()
    expected = b"".join(bytes(c) for c in _chunks())
    key = store.new_key()
    info = store.put_stream(key, iter(_chunks()), durable=False)
    assert info == BlobInfo(key, len(expected), hashlib.sha256(expected).hexdigest())
    assert store.read(key) == expected
    assert store.open_range(key, 5, 10) == b"0123456789"
    with pytest.raises(BlobMissing):
        store.open_range(new_blob_key(), 0, 1)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_insufficient_storage_and_leaves_the_pooled_file_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs", fsync=False)
    key = store.new_key()
    real_write = os.write

    def full(fd: int, data: object) -> int:
        real_write(fd, bytes(memoryview(data)[:3]))  # type: ignore[arg-type]  # part of it fits
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(InsufficientStorage, match=os.strerror(code)):
        store.put(key, b"0123456789")
    monkeypatch.undo()
    assert (tmp_path / "blobs" / key[:2] / key[2] / key).stat().st_size == 0


def test_other_write_failures_are_plain_storage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs", fsync=False)
    key = store.new_key()

    def broken(_fd: int, _data: object) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "write", broken)
    with pytest.raises(StorageError) as caught:
        store.put(key, b"0123456789")
    assert not isinstance(caught.value, InsufficientStorage)
