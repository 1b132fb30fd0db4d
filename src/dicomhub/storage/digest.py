"""Hashing a chunk on a second core while the caller writes it.

Storing an object costs, per byte, a SHA-256 for the blob, a SHA-256 for its
data set (see :mod:`dicomhub.services.ingest`) and a copy into the page
cache. All three release the GIL, but done one after the other in the
storing thread they keep a single core busy while the other waits (a
100-slice CT over STOW-RS: 52 MB, about 2 x 20 ms of hashing and 30 ms of
writing). :func:`hashed_alongside` runs a hash update in a small shared
thread pool for the duration of a ``with`` block, so the hashes and the write
of a chunk overlap. Each hash object still sees its chunks in order: the
block waits for its update before it ends, and the next chunk's update only
starts after that.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

__all__ = ["OVERLAP_MIN_BYTES", "Updatable", "hashed_alongside"]

# Below this a chunk is hashed in place: handing it to another thread costs
# tens of microseconds, about what hashing 32 kB costs.
OVERLAP_MIN_BYTES = 128 * 1024


class Updatable(Protocol):
    """Anything fed bytes in order, like a :mod:`hashlib` object."""

    def update(self, data: bytes | memoryview, /) -> None: ...


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    # Made on first use, so that a process that never stores (and a forked
    # child) starts no threads.
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="digest")
        return _pool


@contextlib.contextmanager
def hashed_alongside(hasher: Updatable | None, data: bytes | memoryview) -> Iterator[None]:
    """``hasher.update(data)`` while the block runs, on another thread when ``data`` is large.

    The update has completed when the block is left, also when the block
    raises. ``data`` must not change until then (it is ``bytes`` or a view of
    them on every store path). With ``hasher`` None the block just runs.
    """
    if hasher is None:
        yield
        return
    if len(data) < OVERLAP_MIN_BYTES:
        hasher.update(data)
        yield
        return
    future = _executor().submit(hasher.update, data)
    try:
        yield
    finally:
        future.result()
