"""An in-memory blob store: the fake used by service tests."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from dicomhub.errors import BlobMissing
from dicomhub.storage.base import BlobInfo, BlobStat, new_blob_key

__all__ = ["MemoryBlobStore"]


class MemoryBlobStore:
    """A :class:`~dicomhub.storage.base.BlobStore` in a dict."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._created: dict[str, float] = {}

    def new_key(self) -> str:
        return new_blob_key()

    def put(
        self, key: str, data: bytes, sha256: str | None = None, *, durable: bool = True
    ) -> BlobInfo:
        with self._lock:
            self._blobs[key] = bytes(data)
            self._created[key] = time.time()
        return BlobInfo(key, len(data), sha256 or hashlib.sha256(data).hexdigest())

    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes | memoryview],
        *,
        durable: bool = True,
        digest: bool = True,  # hashing bytes in memory is cheap: always done
    ) -> BlobInfo:
        hasher = hashlib.sha256()
        parts: list[bytes] = []
        for chunk in chunks:
            hasher.update(chunk)
            parts.append(bytes(chunk))
        data = b"".join(parts)
        with self._lock:
            self._blobs[key] = data
            self._created[key] = time.time()
        return BlobInfo(key, len(data), hasher.hexdigest())

    def sync(self) -> None:
        return None

    def open(self, key: str) -> BinaryIO:
        return io.BytesIO(self.read(key))

    def read(self, key: str) -> bytes:
        try:
            return self._blobs[key]
        except KeyError as exc:
            raise BlobMissing(f"blob {key} is missing") from exc

    def open_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range {offset}+{length}")
        return self.read(key)[offset : offset + length]

    def local_path(self, key: str) -> str | None:
        return None

    def delete(self, key: str) -> None:
        with self._lock:
            self._blobs.pop(key, None)
            self._created.pop(key, None)

    def exists(self, key: str) -> bool:
        return key in self._blobs

    def stat(self, key: str) -> BlobStat:
        return BlobStat(len(self.read(key)), self._created.get(key, 0.0))

    def iter_keys(self) -> Iterator[str]:
        return iter(list(self._blobs))

    def iter_blobs(self) -> Iterator[tuple[str, BlobStat]]:
        for key in list(self._blobs):
            if key in self._blobs:
                yield key, self.stat(key)

    def usable(self) -> bool:
        return True
