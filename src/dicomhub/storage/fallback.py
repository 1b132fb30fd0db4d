"""A blob store that also reads from a second one: the old store during a migration.

Writes go to the primary store only. A read that misses in the primary
tries the fallback, and then the primary once more: `dicomhub
migrate-storage` copies a blob to the primary (and verifies it) before it
removes it from the fallback, so a blob that left the fallback while we
looked is in the primary by then. Deletes go to both, so that a blob
removed during the migration does not come back from the other side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, TypeVar

from dicomhub.errors import BlobMissing
from dicomhub.storage.base import BlobInfo, BlobStat, BlobStore

__all__ = ["FallbackBlobStore"]

T = TypeVar("T")


class FallbackBlobStore:
    """A :class:`~dicomhub.storage.base.BlobStore`: ``primary``, reading also from ``fallback``."""

    def __init__(self, primary: BlobStore, fallback: BlobStore) -> None:
        self.primary = primary
        self.fallback = fallback

    def _either(self, read: Callable[[BlobStore], T]) -> T:
        try:
            return read(self.primary)
        except BlobMissing:
            pass
        try:
            return read(self.fallback)
        except BlobMissing:
            return read(self.primary)  # moved over while we looked

    def new_key(self) -> str:
        return self.primary.new_key()

    def put(
        self, key: str, data: bytes, sha256: str | None = None, *, durable: bool = True
    ) -> BlobInfo:
        return self.primary.put(key, data, sha256, durable=durable)

    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes | memoryview],
        *,
        durable: bool = True,
        digest: bool = True,
    ) -> BlobInfo:
        return self.primary.put_stream(key, chunks, durable=durable, digest=digest)

    def sync(self) -> None:
        self.primary.sync()

    def open(self, key: str) -> BinaryIO:
        return self._either(lambda store: store.open(key))

    def read(self, key: str) -> bytes:
        return self._either(lambda store: store.read(key))

    def open_range(self, key: str, offset: int, length: int) -> bytes:
        return self._either(lambda store: store.open_range(key, offset, length))

    def local_path(self, key: str) -> str | None:
        # Only a path the migration never removes: a fallback file may go
        # between this answer and its use (an open file would not).
        path = self.primary.local_path(key)
        return path if path is not None and self.primary.exists(key) else None

    def delete(self, key: str) -> None:
        self.primary.delete(key)
        self.fallback.delete(key)

    def exists(self, key: str) -> bool:
        return self.primary.exists(key) or self.fallback.exists(key)

    def stat(self, key: str) -> BlobStat:
        return self._either(lambda store: store.stat(key))

    def iter_keys(self) -> Iterator[str]:
        for key, _stat in self.iter_blobs():
            yield key

    def iter_blobs(self) -> Iterator[tuple[str, BlobStat]]:
        seen: set[str] = set()
        for store in (self.primary, self.fallback):
            for key, stat in store.iter_blobs():
                if key not in seen:
                    seen.add(key)
                    yield key, stat

    def usable(self) -> bool:
        return self.primary.usable()
