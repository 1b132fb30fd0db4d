"""Blob stores by URL, the storage settings and the fallback store's reads during a migration."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomhub.bootstrap import open_blob_store
from dicomhub.config import load_settings
from dicomhub.errors import BlobMissing, ConfigurationError
from dicomhub.storage.base import BlobStore, new_blob_key
from dicomhub.storage.fallback import FallbackBlobStore
from dicomhub.storage.filesystem import FileSystemBlobStore
from dicomhub.storage.memory import MemoryBlobStore
from dicomhub.storage.s3 import S3BlobStore
from dicomhub.storage.urls import open_blob_store as store_at


def test_default_store_is_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    assert settings.blob_store_url == (tmp_path / "blobs").resolve().as_uri()
    store = open_blob_store(settings)
    assert isinstance(store, FileSystemBlobStore) and store.root == (tmp_path / "blobs").resolve()


def test_storage_settings_from_the_environment(tmp_path: Path) -> None:
    env = {
        "DICOMHUB_DATA_DIR": str(tmp_path),
        "DICOMHUB_STORAGE_URL": "s3://bucket/archive",
        "DICOMHUB_STORAGE_FALLBACK_URL": (tmp_path / "old").as_uri(),
        "DICOMHUB_S3_ENDPOINT_URL": "http://127.0.0.1:9",
        "DICOMHUB_S3_REGION": "eu-central-1",
    }
    settings = load_settings(environ=env)
    store = open_blob_store(settings)
    assert isinstance(store, FallbackBlobStore)
    assert isinstance(store.primary, S3BlobStore) and store.primary.location.prefix == "archive/"
    assert isinstance(store.fallback, FileSystemBlobStore)


@pytest.mark.parametrize("url", ["file://host/x", "file://", "gs://bucket/x", "/plain/path"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ConfigurationError):
        store_at(url)


class _MovesOnMiss(MemoryBlobStore):
    """A fallback whose blob is moved to the primary by a migration just as it is read."""

    def __init__(self, primary: BlobStore) -> None:
        super().__init__()
        self.primary = primary

    def read(self, key: str) -> bytes:
        data = super().read(key)
        self.primary.put(key, data)
        self.delete(key)
        raise BlobMissing(f"blob {key} is missing")


def test_fallback_finds_a_blob_moved_while_reading() -> None:
    primary = MemoryBlobStore()
    old = _MovesOnMiss(primary)
    key = new_blob_key()
    MemoryBlobStore.put(old, key, b"moving")
    both = FallbackBlobStore(primary, old)
    assert both.read(key) == b"moving"
    with pytest.raises(BlobMissing):
        both.read(new_blob_key())
