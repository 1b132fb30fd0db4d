"""``dicomhub reindex``: rebuild the index from the blobs alone (when the index is lost).

Every blob of the store that no row refers to is read (its header only, as
ingest reads it) and indexed by the same code ingest uses
(:meth:`~dicomhub.services.ingest.IngestService.index_stored_blob`):
patient, study, series and instance rows, digests, frame offsets, the
change log. The blobs stay under their keys; nothing is copied.

Blobs are indexed oldest first (by the store's write time), which is the
order ingest met them in: the copy an instance was first stored as is
indexed as that instance, and later copies of the same SOP Instance UID with
other content (refused copies kept in quarantine) are kept as refused copies
again (``dicomhub conflicts``).

What the blobs do not carry cannot come back: labels, users, grants, API
tokens and AE registrations, the audit log, de-identification runs and
mappings, Storage Commitment transactions, validation findings and
association statistics, the change log before the rebuild, and the
original transfer syntax of objects compressed at rest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from dicomhub.errors import Conflict, IndexUnavailable, StorageError
from dicomhub.index.blobs import BlobRecords
from dicomhub.services.ingest import IngestService
from dicomhub.storage.base import BlobStore

__all__ = ["ReindexReport", "ReindexService"]

LOGGER = logging.getLogger("dicomhub.reindex")

_ASK_BATCH = 500  # keys asked about at once: which are indexed already


@dataclass
class ReindexReport:
    """What ``dicomhub reindex`` did."""

    blobs: int = 0  # blobs in the store (empty unused keys not counted)
    indexed: int = 0  # new instance rows
    already_indexed: int = 0  # blobs some row referred to already
    copies: list[str] = field(default_factory=list)  # same content as an indexed instance: left alone
    kept_refused: list[tuple[str, str]] = field(default_factory=list)  # (key, why): quarantined
    not_dicom: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every object of the store is indexed or kept (nothing unreadable or foreign)."""
        return not (self.not_dicom or self.unreadable)


class ReindexService:
    """Indexes every blob of the store the index does not know."""

    def __init__(self, ingest: IngestService, records: BlobRecords, blobs: BlobStore) -> None:
        self.ingest = ingest
        self.records = records
        self.blobs = blobs

    def reindex(self) -> ReindexReport:
        """Index the blobs no row refers to, oldest first.

        Returns
        -------
        ReindexReport
            Counts, and the blobs that are not DICOM objects, could not be
            read, or were kept as refused copies.

        Raises
        ------
        IndexUnavailable
            When the index cannot be written.
        """
        started = time.monotonic()
        report = ReindexReport()
        listed = [(stat.modified, key) for key, stat in self.blobs.iter_blobs() if stat.size]
        listed.sort()
        report.blobs = len(listed)
        keys = [key for _modified, key in listed]
        for start in range(0, len(keys), _ASK_BATCH):
            batch = keys[start : start + _ASK_BATCH]
            known = self.records.referenced(batch)
            for key in batch:
                if key in known:
                    report.already_indexed += 1
                else:
                    self._one(key, report)
        report.seconds = time.monotonic() - started
        return report

    def _one(self, key: str, report: ReindexReport) -> None:
        try:
            if self.ingest.index_stored_blob(key, keep_refused=True):
                report.indexed += 1
            else:
                report.copies.append(key)
        except IndexUnavailable:
            raise  # the index, not the blob: stop here
        except Conflict as exc:
            report.kept_refused.append((key, str(exc)))
        except StorageError as exc:
            report.unreadable.append((key, str(exc)))
        except Exception as exc:  # noqa: BLE001 - whatever the parser raises: not an object to index
            LOGGER.info("blob %s is not a DICOM object to index: %s", key, exc)
            report.not_dicom.append((key, f"{exc.__class__.__name__}: {exc}"))
