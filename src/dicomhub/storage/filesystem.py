"""Blobs as files under a data directory, fan-out by key prefix.

Keys are handed out by :meth:`FileSystemBlobStore.new_key` from a pool of
empty files created ahead of time, 64 at a time in one folder with one folder
fsync. Storing a blob is then one write and one ``fdatasync`` of an existing
file: its directory entry is already durable, so the store path pays no
folder fsync. A crash leaves at worst an unindexed file (an orphan for
``dicomhub check``); an empty file is an unused key.

A blob under any other key is written to a temporary name, fsync'ed,
renamed and its folder fsync'ed.

:meth:`FileSystemBlobStore.put` (bytes in hand) and
:meth:`FileSystemBlobStore.put_stream` (chunks, for objects too large for
memory) share one write path: they differ only in how many buffers come in.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno
import hashlib
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from dicomhub.errors import BlobMissing, InsufficientStorage, StorageError
from dicomhub.storage.base import DEFERRED_DIGEST, BlobInfo, BlobStat, valid_blob_key

__all__ = ["FileSystemBlobStore"]


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _libc()

_POOL_BATCH = 256
_POOL_LOW = 192  # refill in the background below this many pooled keys
_POOL_FIRST = 16  # made at once when the pool is empty (the rest in the background)


class FileSystemBlobStore:
    """A :class:`~dicomhub.storage.base.BlobStore` on a local folder."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self._fsync = fsync
        self._pool: collections.deque[str] = collections.deque()
        self._pooled: set[str] = set()
        self._pool_lock = threading.Lock()
        self._refilling = False
        self._prepare_folders()

    def new_key(self) -> str:
        """A fresh key whose (empty) file already exists durably.

        When the pool runs low it is refilled in a background thread, so
        that a store rarely waits for files to be created (a few hundred
        microseconds each, plus a folder fsync).
        """
        with self._pool_lock:
            if not self._pool:
                # A few now (the caller waits for them), the rest in the background.
                self._add_to_pool(self._make_keys(_POOL_FIRST))
            key = self._pool.popleft()
            if len(self._pool) < _POOL_LOW and not self._refilling:
                self._refilling = True
                threading.Thread(target=self._refill_in_background, name="blob-pool", daemon=True).start()
            return key

    def _refill_in_background(self) -> None:
        try:
            keys = self._make_keys()
        except StorageError:
            keys = []  # the next new_key() on an empty pool tries again, and raises
        with self._pool_lock:
            self._add_to_pool(keys)
            self._refilling = False

    def _add_to_pool(self, keys: list[str]) -> None:
        self._pool.extend(keys)
        self._pooled.update(keys)

    def _make_keys(self, count: int = _POOL_BATCH) -> list[str]:
        """Create ``count`` empty blob files in one folder, durably (one folder fsync)."""
        prefix = uuid.uuid4().hex[:3]
        folder = self.root / prefix[:2] / prefix[2]
        if not folder.is_dir():
            try:
                self._prepare_folders_again(folder)
            except OSError as exc:
                raise _write_error("cannot create blob folders", exc) from exc
        keys = []
        for _ in range(count):
            key = prefix + uuid.uuid4().hex[3:]
            try:
                os.close(os.open(folder / key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
            except OSError as exc:
                raise _write_error("cannot create blob files", exc) from exc
            keys.append(key)
        if self._fsync:
            _fsync_dir(folder)
        return keys

    def _path(self, key: str) -> Path:
        if not valid_blob_key(key):
            # Keys come from new_blob_key(); anything else is a programming
            # error or tampering, and must never reach the filesystem.
            raise StorageError(f"invalid blob key {key!r}")
        # 256 x 16 folders: small enough folders at 100M blobs. Each is made (and
        # its entry flushed) when the key pool first makes keys in it, so a store
        # never creates a folder.
        return self.root / key[:2] / key[2] / key

    def _prepare_folders(self) -> None:
        # Only the root: making all 4,096 folders up front cost about a second at
        # each start on a new data dir (and a machine-wide sync), most of them
        # for folders a small archive never uses.
        if self.root.is_dir():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        if self._fsync:
            _fsync_dir(self.root.parent)

    def put(
        self, key: str, data: bytes, sha256: str | None = None, *, durable: bool = True
    ) -> BlobInfo:
        return self._store(key, (data,), sha256 or None, durable)

    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes | memoryview],
        *,
        durable: bool = True,
        digest: bool = True,
    ) -> BlobInfo:
        return self._store(key, chunks, None if digest else DEFERRED_DIGEST, durable)

    def _store(
        self, key: str, chunks: Iterable[bytes | memoryview], sha256: str | None, durable: bool
    ) -> BlobInfo:
        path = self._path(key)
        with self._pool_lock:
            pooled = key in self._pooled
            self._pooled.discard(key)
        if pooled:
            return self._fill(path, key, chunks, sha256, durable)
        # A key from elsewhere needs a new directory entry: always made durable here.
        if not path.parent.is_dir():  # a folder removed by hand since start-up
            self._prepare_folders_again(path.parent)
        tmp = path.with_name(key + ".tmp")
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            except OSError as exc:
                raise _write_error("cannot write blob", exc) from exc
            size, digest = self._write(fd, chunks, sha256)
            try:
                os.rename(tmp, path)
                if self._fsync:
                    _fsync_dir(path.parent)
            except OSError as exc:
                raise _write_error("cannot write blob", exc) from exc
        except BaseException:
            # Also when the chunks' source failed: no temporary file stays.
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise
        return BlobInfo(key=key, size=size, sha256=digest)

    def _fill(
        self,
        path: Path,
        key: str,
        chunks: Iterable[bytes | memoryview],
        sha256: str | None,
        durable: bool,
    ) -> BlobInfo:
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as exc:
            raise _write_error("cannot write blob", exc) from exc
        size, digest = self._write(fd, chunks, sha256, durable, truncate_on_error=True)
        return BlobInfo(key=key, size=size, sha256=digest)

    def _write(
        self,
        fd: int,
        chunks: Iterable[bytes | memoryview],
        sha256: str | None,
        durable: bool = True,
        *,
        truncate_on_error: bool = False,
    ) -> tuple[int, str]:
        """Write every chunk to ``fd``, make it durable (unless told not to), close ``fd``.

        Returns the size and the SHA-256 (``sha256`` when given, else computed
        on the way: each chunk is hashed and written while in hand;
        :data:`DEFERRED_DIGEST` is given by a caller that computes it later).  Write
        failures raise StorageError; an exception from the `chunks` iterator
        (the source) propagates as it is.  With `truncate_on_error` either
        empties the file again: a pooled key's file must never hold a
        partial blob.
        """
        hasher = None if sha256 is not None else hashlib.sha256()
        size = 0
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                if view.ndim != 1 or view.itemsize != 1:
                    view = view.cast("B")
                if hasher is not None:
                    hasher.update(view)
                size += len(view)
                try:
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                except OSError as exc:
                    raise _write_error("cannot write blob", exc) from exc
            if self._fsync and durable:
                try:
                    # Also makes the new size durable: the data is reachable.
                    os.fdatasync(fd)
                except OSError as exc:
                    raise _write_error("cannot write blob", exc) from exc
            elif self._fsync and size:
                _start_writeback(fd)
        except BaseException:
            if truncate_on_error:
                try:
                    os.ftruncate(fd, 0)
                except OSError:
                    pass
            raise
        finally:
            os.close(fd)
        return size, hasher.hexdigest() if hasher is not None else (sha256 or DEFERRED_DIGEST)

    def sync(self) -> None:
        """Flush everything written with ``durable=False``: one ``syncfs`` of the store's
        file system instead of one flush per blob."""
        if not self._fsync:
            return
        try:
            fd = os.open(self.root, os.O_RDONLY)
        except OSError as exc:
            raise _write_error("cannot flush blobs", exc) from exc
        try:
            if _LIBC is not None and _LIBC.syncfs(fd) == 0:
                return
            os.sync()  # no syncfs (or it failed): flush everything
        finally:
            os.close(fd)

    def _prepare_folders_again(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if self._fsync:
            _fsync_dir(folder.parent)
            _fsync_dir(folder.parent.parent)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError as exc:
            raise BlobMissing(f"blob {key} is missing") from exc
        except OSError as exc:
            raise StorageError(f"cannot read blob {key}: {exc.strerror or exc}") from exc

    def read(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def open_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range {offset}+{length}")
        with self.open(key) as fh:
            try:
                return os.pread(fh.fileno(), length, offset)
            except OSError as exc:
                raise StorageError(f"cannot read blob {key}: {exc.strerror or exc}") from exc

    def local_path(self, key: str) -> str | None:
        return str(self._path(key))

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete blob {key}: {exc.strerror or exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> BlobStat:
        try:
            st = self._path(key).stat()
        except FileNotFoundError as exc:
            raise BlobMissing(f"blob {key} is missing") from exc
        except OSError as exc:
            raise StorageError(f"cannot read blob {key}: {exc.strerror or exc}") from exc
        return BlobStat(st.st_size, st.st_mtime)

    def iter_keys(self) -> Iterator[str]:
        for _dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if valid_blob_key(name):
                    yield name

    def iter_blobs(self) -> Iterator[tuple[str, BlobStat]]:
        for key in self.iter_keys():
            try:
                yield key, self.stat(key)
            except BlobMissing:
                continue  # removed while we walked

    def usable(self) -> bool:
        return self.root.is_dir() and os.access(self.root, os.W_OK)


_SYNC_FILE_RANGE_WRITE = 2
# A full disk or an exhausted quota: the store may succeed once space is freed, which
# the adapters tell apart from other write failures (HTTP 507 rather than 503).
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def _write_error(what: str, exc: OSError) -> StorageError:
    """A failed write as the StorageError to raise: InsufficientStorage when out of space."""
    kind = InsufficientStorage if exc.errno in _NO_SPACE else StorageError
    return kind(f"{what}: {exc.strerror or exc}")


def _start_writeback(fd: int) -> None:
    """Let the disk start on a blob written with ``durable=False`` (no waiting).

    ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` only queues the file's dirty
    pages for writing; durability still comes from :meth:`FileSystemBlobStore.sync`.
    Blobs flushed together are then mostly on disk by the time the flush
    comes, so it waits for the last of them rather than for all.
    """
    if _LIBC is not None:
        _LIBC.sync_file_range(fd, ctypes.c_int64(0), ctypes.c_int64(0), _SYNC_FILE_RANGE_WRITE)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
