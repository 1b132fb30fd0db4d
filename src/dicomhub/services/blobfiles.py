"""A stored blob as a file path (for code that reads files: the codec layer) or as
memory-mapped bytes (for code that reads a header or hashes the whole)."""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, cast

from dicomhub.storage.base import BlobStore

__all__ = ["blob_as_file", "mapped_blob"]


@contextlib.contextmanager
def blob_as_file(blobs: BlobStore, key: str, spool_dir: str | None = None) -> Iterator[str]:
    """The blob's own path when the store has one, else a temporary copy (removed after)."""
    path = blobs.local_path(key)
    if path is not None:
        yield path
        return
    fd, tmp = tempfile.mkstemp(prefix="dicomhub-blob-", dir=spool_dir)
    try:
        with os.fdopen(fd, "wb") as out, blobs.open(key) as src:
            shutil.copyfileobj(src, out, 1 << 20)
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@contextlib.contextmanager
def mapped_blob(blobs: BlobStore, key: str) -> Iterator[bytes]:
    """A blob's bytes, memory-mapped from its file (a temporary copy for a store without
    files, such as S3): large values are then paged in only where they are read.

    The copy is a file without a name (``O_TMPFILE``): a process killed while it is
    mapped leaves nothing behind in the temporary folder."""
    with contextlib.ExitStack() as stack:
        path = blobs.local_path(key)
        fh: IO[bytes]
        if path is not None:
            fh = stack.enter_context(open(path, "rb"))
        else:
            fh = stack.enter_context(tempfile.TemporaryFile(prefix="dicomhub-blob-"))
            with blobs.open(key) as src:
                shutil.copyfileobj(src, fh, 1 << 20)
            fh.flush()
            fh.seek(0)
        try:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # an empty file cannot be mapped
            yield fh.read()
            return
        try:
            # Read-only mapping of a file nobody else writes: bytes in all but type.
            yield cast(bytes, mapped)
        finally:
            try:
                mapped.close()
            except BufferError:
                pass  # a view is still referenced (a traceback in flight)
