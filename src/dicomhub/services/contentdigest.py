"""The digests of stored objects that STOW-RS computes after the answer.

Every instance row carries two digests. ``sha256`` is the blob's: it is what
``dicomhub storage check``, Storage Commitment and ``migrate-storage`` verify
the stored bytes against. ``content_sha256`` is the SHA-256 of the data set
without its File Meta group: the object's identity, since the same object
sent by two senders differs in its File Meta (Source AE Title,
implementation UIDs). It is read when the same SOP Instance UID arrives
again (same object, or other content?) and when this archive is reconciled
with another.

Computing them on the way costs a pass over every byte each. For STOW-RS,
where the bytes of a request are written and flushed before the answer, the
two passes were about a third of the busy time of a 100-slice CT request on
two cores. So STOW-RS indexes the objects it writes to a file store with
both digests ``''`` (the blob's only where the store took the offer: S3
hashes every upload for its checksums anyway), and this module computes them
from the stored blob, in one read: the background process shortly after the
answer, the ingest service on the spot when the same UID arrives before that,
:meth:`ContentDigestService.fill_all` before an inventory of this archive is
taken for a reconcile, and the storage check, Storage Commitment and storage
migration for a blob they meet first.

What a late blob digest covers: it is computed from the file as written (the
page cache, seconds later), so it protects the bytes from then on, as one
taken on the way would; it does not cover the seconds in between.

Invariant: a row whose blob digest is still ``''`` has its data set digest
``''`` too (the two are filled together, or the blob's alone), so the one
partial index on pending data set digests finds every row with work left.
C-STORE and imports compute both on the way, where it is cheap (the object is
in memory whole).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading

from dicomhub.errors import DicomhubError
from dicomhub.index.engine import lease
from dicomhub.index.repository import IndexRepository
from dicomhub.model.structure import dataset_offset
from dicomhub.services.background import run_until_stopped
from dicomhub.services.blobfiles import mapped_blob
from dicomhub.storage.base import DEFERRED_DIGEST, BlobStore

__all__ = [
    "PENDING",
    "UNREADABLE",
    "ContentDigestService",
    "content_digest",
    "content_digest_of_blob",
    "digests_of_blob",
]

LOGGER = logging.getLogger("dicomhub.contentdigest")

# content_sha256 (and sha256) of an object whose digest is still to be computed.
PENDING = DEFERRED_DIGEST
# content_sha256 of an object whose blob could not be read: never equal to a
# real digest, so a reconcile reports the object and a copy sent again is not
# taken for it.
UNREADABLE = "unreadable"


def content_digest(data: bytes) -> str:
    """SHA-256 of a Part 10 object's data set (the bytes after its File Meta group)."""
    return hashlib.sha256(memoryview(data)[dataset_offset(data) :]).hexdigest()


def content_digest_of_blob(blobs: BlobStore, key: str) -> str:
    """:func:`content_digest` of a stored object, read from its blob."""
    with mapped_blob(blobs, key) as data:
        return content_digest(data)


def digests_of_blob(blobs: BlobStore, key: str, blob_sha256: str = PENDING) -> tuple[str, str]:
    """The blob's SHA-256 and the data set digest of a stored object, in one read.

    ``blob_sha256``, when known already, is returned as it is (not computed again).
    """
    with mapped_blob(blobs, key) as data:
        whole = blob_sha256 or hashlib.sha256(data).hexdigest()
        return whole, content_digest(data)


class ContentDigestService:
    """Fills in the digests that STOW-RS left for later."""

    def __init__(self, index: IndexRepository, blobs: BlobStore) -> None:
        self.index = index
        self.blobs = blobs

    def fill_pending(self, batch: int = 200) -> int:
        """Compute the digests of up to ``batch`` instances that lack them; return how many."""
        pending = self.index.pending_content_digests(batch)
        values: list[tuple[int, str, str]] = []
        for pk, key, blob_sha256 in pending:
            try:
                whole, content = digests_of_blob(self.blobs, key, blob_sha256)
            except (DicomhubError, OSError, ValueError) as exc:
                LOGGER.error("cannot compute the digests of instance %s: %s", pk, exc)
                # The blob digest stays unknown: the storage check reports the blob.
                whole, content = blob_sha256, UNREADABLE
            values.append((pk, content, whole))
        self.index.set_content_digests(values)
        return len(pending)

    def fill_all(self) -> None:
        """Compute every missing digest now (before an inventory of this archive)."""
        while self.fill_pending():
            pass

    def run_worker(self, stop: threading.Event, idle: float = 1.0, patience: float = 30.0) -> None:
        """Loop until ``stop``: fill digests while the archive is quiet (lowest priority)."""
        run_until_stopped(
            stop,
            self.fill_pending,
            "content digest worker",
            LOGGER,
            idle,
            last_change=self.index.last_change,
            patience=patience,
            claim=functools.partial(lease, self.index.engine, "content-digest-worker"),
        )
