"""S3BlobStore against a real S3-compatible server (moto's standalone server, tests/s3backend.py)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator

import boto3
import pytest

from dicomhub.errors import BlobMissing, ChecksumMismatch, ConfigurationError, StorageError
from dicomhub.storage.base import new_blob_key
from dicomhub.storage.fallback import FallbackBlobStore
from dicomhub.storage.filesystem import FileSystemBlobStore
from dicomhub.storage.s3 import S3BlobStore, parse_s3_url
from dicomhub.storage.urls import open_blob_store
from tests import s3backend

MIB = 1 << 20


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    env = s3backend.s3_env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def store(s3_env: dict[str, str]) -> S3BlobStore:
    url, _env = s3backend.fresh_storage("unit")
    found = open_blob_store(url)
    assert isinstance(found, S3BlobStore)
    return found


def _raw_client(env: dict[str, str]) -> object:
    return boto3.session.Session().client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])


def test_url_parsing() -> None:
    assert parse_s3_url("s3://bucket/a/b/").prefix == "a/b/"
    assert parse_s3_url("s3://bucket").prefix == ""
    for bad in ("s3:///x", "s3://b/p?x=1", "http://b/p"):
        with pytest.raises(ConfigurationError):
            parse_s3_url(bad)
    with pytest.raises(ConfigurationError):
        open_blob_store("ftp://host/x")


def test_put_read_ranges_and_listing(store: S3BlobStore) -> None:
    key = store.new_key()
    data = os.urandom(3 * MIB + 17)
    info = store.put(key, data)
    assert (info.size, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert store.read(key) == data
    assert store.open_range(key, 5, 10) == data[5:15]
    assert store.open_range(key, len(data) - 3, 100) == data[-3:]
    assert store.open_range(key, len(data) + 10, 5) == b""
    with store.open(key) as fh:
        fh.seek(2 * MIB + 1)
        assert fh.read(MIB) == data[2 * MIB + 1 : 3 * MIB + 1]
        fh.seek(0)
        assert fh.read() == data
    assert store.exists(key) and store.local_path(key) is None
    stat = store.stat(key)
    assert stat.size == len(data) and stat.sha256 == info.sha256 and abs(stat.modified - time.time()) < 60
    assert list(store.iter_keys()) == [key]
    empty = store.new_key()
    store.put(empty, b"")
    assert store.read(empty) == b"" and store.open(empty).read() == b""
    store.delete(key)
    store.delete(key)  # absent: not an error
    assert not store.exists(key)
    for read in (store.read, store.open, lambda k: store.open_range(k, 0, 1), store.stat):
        with pytest.raises(BlobMissing):
            read(key)


def test_multipart_stream_and_source_failure(store: S3BlobStore) -> None:
    parts = [os.urandom(3 * MIB) for _ in range(6)]  # 18 MiB: four parts of at most 5 MiB
    key = store.new_key()
    info = store.put_stream(key, iter(parts))
    whole = b"".join(parts)
    assert info.size == len(whole) and info.sha256 == hashlib.sha256(whole).hexdigest()
    assert store.read(key) == whole
    big = store.new_key()
    assert store.put(big, whole).sha256 == info.sha256  # bytes in hand above one part: multipart too
    assert store.open_range(big, 9 * MIB, 4) == whole[9 * MIB : 9 * MIB + 4]

    def failing() -> Iterator[bytes]:
        yield from parts[:4]
        raise OSError("the sender went away")

    gone = store.new_key()
    with pytest.raises(OSError, match="went away"):
        store.put_stream(gone, failing())
    assert not store.exists(gone)
    client = store._client  # noqa: SLF001 - the test looks for leftover parts
    uploads = client.list_multipart_uploads(Bucket=store.location.bucket).get("Uploads", [])
    assert uploads == []


def test_changed_bytes_are_detected(store: S3BlobStore, s3_env: dict[str, str]) -> None:
    key = store.new_key()
    info = store.put(key, b"original bytes")
    client = store._client  # noqa: SLF001 - overwrite behind the store's back
    client.put_object(
        Bucket=store.location.bucket,
        Key=store.location.prefix + key,
        Body=b"tampered bytes",
        Metadata={"sha256": info.sha256},
    )
    with pytest.raises(ChecksumMismatch):
        store.read(key)


def test_unreachable_endpoint_is_a_storage_error(s3_env: dict[str, str]) -> None:
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = S3BlobStore(
        parse_s3_url("s3://nowhere/x"),
        endpoint_url=f"http://127.0.0.1:{port}",
        max_attempts=2,
        connect_timeout=0.5,
    )
    started = time.monotonic()
    with pytest.raises(StorageError, match="unreachable"):
        dead.put(dead.new_key(), b"data")
    with pytest.raises(StorageError):
        dead.read(dead.new_key())
    assert not dead.usable()
    assert time.monotonic() - started < 20


def test_fallback_reads_old_store_and_writes_new(store: S3BlobStore, tmp_path: object) -> None:
    old = FileSystemBlobStore(str(tmp_path), fsync=False)
    key = new_blob_key()  # not from the old store's pool of empty files
    old.put(key, b"in the old store")
    both = FallbackBlobStore(store, old)
    assert both.read(key) == b"in the old store"
    assert both.local_path(key) is None  # the old file may go any moment
    new = both.new_key()
    both.put(new, b"new")
    assert store.read(new) == b"new" and not old.exists(new)
    assert sorted(both.iter_keys()) == sorted([key, new])
    both.delete(key)
    assert not both.exists(key)
