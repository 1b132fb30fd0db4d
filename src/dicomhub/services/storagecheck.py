"""The storage check: does the index agree with the blob store?

Finds blobs the index refers to that the store lacks (missing), blobs the
store holds that nothing refers to (orphans) and blobs whose bytes no longer
match the size or SHA-256 recorded at ingest (digest mismatches).

Repair removes orphans, but only those older than a grace period: a blob is
written before its index row, so a young orphan may be a store in flight on
any node. An orphan that is a DICOM object whose SOP Instance UID the index
lost is indexed again instead of removed. Missing blobs and mismatches are
reported, never "repaired": only a copy from elsewhere can mend them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from dicomhub.errors import BlobMissing, Conflict, DicomhubError, IndexUnavailable
from dicomhub.index.blobs import BlobRecord, BlobRecords
from dicomhub.services.ingest import IngestService
from dicomhub.storage.base import DEFERRED_DIGEST, BlobStore

__all__ = ["StorageCheckService", "StorageProblem", "StorageReport", "blob_digest"]

LOGGER = logging.getLogger("dicomhub.storagecheck")

DEFAULT_GRACE = 3600.0  # seconds: far longer than any store takes from blob to index row


@dataclass(frozen=True, slots=True)
class StorageProblem:
    kind: str  # missing | orphan | digest-mismatch | size-mismatch | unreadable
    blob_key: str
    sop_instance_uid: str | None
    detail: str


@dataclass
class StorageReport:
    referenced: int = 0  # blobs the index refers to
    stored: int = 0  # blobs in the store
    unused_keys: int = 0  # empty blobs: keys handed out ahead of time (file://), not objects
    problems: list[StorageProblem] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # orphans removed by --repair
    reindexed: list[str] = field(default_factory=list)  # orphans indexed again by --repair
    skipped_young: int = 0  # orphans left alone: younger than the grace period

    @property
    def ok(self) -> bool:
        return not self.problems


def blob_digest(blobs: BlobStore, key: str) -> tuple[int, str]:
    """Size and SHA-256 of a stored blob, read in blocks."""
    digest = hashlib.sha256()
    size = 0
    with blobs.open(key) as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class StorageCheckService:
    """Compares the index with the blob store, and repairs what can be repaired."""

    def __init__(
        self,
        records: BlobRecords,
        blobs: BlobStore,
        ingest: IngestService,
        claim: Callable[[str], AbstractContextManager[bool]],
    ) -> None:
        """``claim(name)``: the background job claim, so that one node repairs at a time."""
        self.records = records
        self.blobs = blobs
        self.ingest = ingest
        self.claim = claim

    def check(
        self, *, digests: bool = True, repair: bool = False, grace: float = DEFAULT_GRACE
    ) -> StorageReport:
        """Compare every referenced blob with the store; with ``repair`` mend orphans.

        ``digests`` reads every blob to compare its SHA-256 (else sizes only).

        Raises
        ------
        DicomhubError
            With ``repair`` when another node is repairing now.
        """
        if repair:
            with self.claim("storage-repair") as mine:
                if not mine:
                    raise DicomhubError("another node is repairing the storage now; try again later")
                return self._check(digests, repair, grace)
        return self._check(digests, repair, grace)

    def _check(self, digests: bool, repair: bool, grace: float) -> StorageReport:
        report = StorageReport()
        expected = {r.blob_key: r for r in self.records.all()}
        report.referenced = len(expected)
        seen: set[str] = set()
        orphans: list[tuple[str, float]] = []
        for key, stat in self.blobs.iter_blobs():
            if key in seen:
                continue
            seen.add(key)
            record = expected.get(key)
            if record is None:
                if stat.size == 0:
                    report.unused_keys += 1
                else:
                    orphans.append((key, stat.modified))
                continue
            report.stored += 1
            problem = self._compare(record, stat.size, digests)
            if problem is not None:
                report.problems.append(problem)
        gone = [key for key in expected if key not in seen]
        # Rows added or removed while we listed: ask again about the few in question.
        now_referenced = self.records.referenced(gone + [key for key, _ in orphans])
        for key in gone:
            if key in now_referenced and not self.blobs.exists(key):
                record = now_referenced[key]
                report.problems.append(
                    StorageProblem("missing", key, record.sop_instance_uid, f"{record.kind} blob is missing")
                )
        report.stored += sum(1 for key, _ in orphans)
        deadline = time.time() - grace
        for key, modified in orphans:
            if key in now_referenced:
                continue  # indexed since we listed: a store that was in flight
            if repair and modified <= deadline:
                self._repair_orphan(key, report)
            else:
                if repair:
                    report.skipped_young += 1
                report.problems.append(StorageProblem("orphan", key, None, "no index row refers to it"))
        return report

    def _compare(self, record: BlobRecord, size: int, digests: bool) -> StorageProblem | None:
        uid = record.sop_instance_uid
        if size != record.size:
            return StorageProblem(
                "size-mismatch", record.blob_key, uid, f"{size} bytes stored, {record.size} indexed"
            )
        if not digests:
            return None
        try:
            _size, sha256 = blob_digest(self.blobs, record.blob_key)
        except BlobMissing:
            return StorageProblem("missing", record.blob_key, uid, f"{record.kind} blob is missing")
        except DicomhubError as exc:
            return StorageProblem("unreadable", record.blob_key, uid, str(exc))
        if record.sha256 == DEFERRED_DIGEST:
            # STOW-RS left it for later (see dicomhub.services.contentdigest): taken now.
            self.records.set_deferred_digest(record.blob_key, sha256)
        elif sha256 != record.sha256:
            return StorageProblem("digest-mismatch", record.blob_key, uid, "SHA-256 differs from the index")
        return None

    def _repair_orphan(self, key: str, report: StorageReport) -> None:
        try:
            if self.ingest.index_stored_blob(key):
                LOGGER.warning("blob %s was not indexed; indexed again", key)
                report.reindexed.append(key)
                return
        except (Conflict, IndexUnavailable) as exc:
            # An object that does not fit the index as it is now: kept for a person to decide.
            report.problems.append(StorageProblem("orphan", key, None, f"cannot be indexed again: {exc}"))
            return
        except Exception as exc:  # noqa: BLE001 - whatever the parser raises: not an object to index
            LOGGER.info("orphan blob %s is not an object to index (%s)", key, exc)
        try:
            self.blobs.delete(key)
        except DicomhubError as exc:
            report.problems.append(StorageProblem("orphan", key, None, f"cannot remove: {exc}"))
            return
        report.removed.append(key)

