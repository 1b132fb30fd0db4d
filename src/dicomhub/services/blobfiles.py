"""A stored blob as a file path, for code that reads files (the codec layer)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from dicomhub.storage.base import BlobStore

__all__ = ["blob_as_file"]


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
