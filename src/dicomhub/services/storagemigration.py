"""Moving every blob from one store to another while the archive keeps serving.

Blob keys do not change, so the index needs no update: the nodes run with
the target as their store and the source as its read fallback
(``--storage-url TARGET --storage-fallback-url SOURCE``), so a blob is
readable from wherever it is at each moment. For each blob the index refers
to, the migration copies it to the target (streamed), checks the copy's
size and SHA-256 against the index, and only then removes it from the
source: the switch of one blob is the moment its copy is complete, and a
read that misses in the source finds it in the target (see
:class:`~dicomhub.storage.fallback.FallbackBlobStore`).

Resumable: a blob already in the target with the indexed size and digest is
not copied again, so an interrupted run is simply run again.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dicomhub.errors import BlobMissing, DicomhubError
from dicomhub.index.blobs import BlobRecord, BlobRecords
from dicomhub.services.storagecheck import StorageProblem, blob_digest
from dicomhub.storage.base import DEFERRED_DIGEST, BlobStore

__all__ = ["MigrationReport", "StorageMigration"]

LOGGER = logging.getLogger("dicomhub.storagemigration")

_CHUNK = 1 << 20


@dataclass
class MigrationReport:
    blobs: int = 0  # referenced by the index
    copied: int = 0
    already_there: int = 0  # in the target with the right digest (an earlier run, or new writes)
    removed_from_source: int = 0
    bytes_copied: int = 0
    problems: list[StorageProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class StorageMigration:
    """Copies, verifies and then removes every referenced blob from ``source`` to ``target``."""

    def __init__(self, records: BlobRecords, source: BlobStore, target: BlobStore) -> None:
        self.records = records
        self.source = source
        self.target = target
        self._lock = threading.Lock()

    def run(
        self,
        *,
        remove_source: bool = True,
        jobs: int = 4,
        progress: Callable[[MigrationReport], None] | None = None,
    ) -> MigrationReport:
        """Migrate every blob the index refers to now; ``jobs`` blobs at a time."""
        report = MigrationReport()
        records = list(self.records.all())
        report.blobs = len(records)

        def one(record: BlobRecord) -> None:
            try:
                self._migrate(record, remove_source, report)
            except DicomhubError as exc:
                problem = StorageProblem("failed", record.blob_key, record.sop_instance_uid, str(exc))
                self._problem(report, problem)
            if progress is not None:
                progress(report)

        with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="migrate") as pool:
            list(pool.map(one, records))
        return report

    def _problem(self, report: MigrationReport, problem: StorageProblem) -> None:
        LOGGER.warning("blob %s not migrated: %s", problem.blob_key, problem.detail)
        with self._lock:
            report.problems.append(problem)

    def _migrate(self, record: BlobRecord, remove_source: bool, report: MigrationReport) -> None:
        key, uid = record.blob_key, record.sop_instance_uid
        record = self._with_known_digest(record)
        if self._in_target(record):
            with self._lock:
                report.already_there += 1
        else:
            try:
                info = self.target.put_stream(key, self._chunks(key))
            except BlobMissing:
                if self.records.referenced([key]):
                    self._problem(report, StorageProblem("missing", key, uid, "in neither store"))
                return  # else: deleted from the archive meanwhile
            if (info.size, info.sha256) != (record.size, record.sha256):
                # The source copy is damaged: keep it (and no bad copy) for a person to look at.
                self.target.delete(key)
                self._problem(
                    report,
                    StorageProblem("digest-mismatch", key, uid, "source blob does not match the index"),
                )
                return
            with self._lock:
                report.copied += 1
                report.bytes_copied += info.size
        if remove_source:
            self.source.delete(key)
            with self._lock:
                report.removed_from_source += 1

    def _with_known_digest(self, record: BlobRecord) -> BlobRecord:
        """``record``, with its blob's digest computed from the source and recorded when
        STOW-RS left it for later (see :mod:`dicomhub.services.contentdigest`)."""
        if record.sha256 != DEFERRED_DIGEST:
            return record
        try:
            _size, sha256 = blob_digest(self.source, record.blob_key)
        except BlobMissing:
            return record  # copied by an earlier run: see _in_target
        self.records.set_deferred_digest(record.blob_key, sha256)
        return dataclasses.replace(record, sha256=sha256)

    def _in_target(self, record: BlobRecord) -> bool:
        try:
            if self.target.stat(record.blob_key).size != record.size:
                return False
            size, sha256 = blob_digest(self.target, record.blob_key)
        except BlobMissing:
            return False
        if record.sha256 == DEFERRED_DIGEST:
            # Only the copy in the target is left (an earlier run moved it): it is the blob.
            self.records.set_deferred_digest(record.blob_key, sha256)
            return size == record.size
        return (size, sha256) == (record.size, record.sha256)

    def _chunks(self, key: str) -> Iterator[bytes]:
        with self.source.open(key) as fh:
            while chunk := fh.read(_CHUNK):
                yield chunk
