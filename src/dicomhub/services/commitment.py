"""Storage Commitment Push Model SCP (PS3.4 Annex J): commit to keeping what was stored.

A modality deletes its copy once the archive commits, so a commitment is a
promise checked against the bytes, not only the index: each referenced
instance must be indexed under the same SOP Class and its blob must be
present with the SHA-256 recorded at ingest. The transaction is saved before
the N-ACTION is answered, so a restart between request and report loses
nothing: reports that could not be delivered on the requesting association
are sent on a new one by the background process, with backoff, until the
requestor acknowledges them or the retry window closes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
from collections.abc import Callable, Collection

from dicomhub.errors import DicomhubError, InvalidRequest
from dicomhub.index.blobs import BlobRecords
from dicomhub.index.commitment import CommitmentRepository, StoredTransaction
from dicomhub.index.engine import lease
from dicomhub.index.repository import IndexRepository
from dicomhub.model.commitment import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT_INSTANCE,
    PROCESSING_FAILURE,
    CommitmentItem,
    CommitmentRequest,
    CommitmentResult,
)
from dicomhub.model.identifiers import require_uid
from dicomhub.storage.base import DEFERRED_DIGEST, BlobStore

__all__ = ["CommitmentService", "Deliver"]

LOGGER = logging.getLogger("dicomhub.commitment")

#: Sends a result to the AE that asked for it, on a new association; raises when it cannot.
Deliver = Callable[[str, CommitmentResult], None]

_FIRST_RETRY = dt.timedelta(seconds=2)
_LONGEST_WAIT = dt.timedelta(minutes=10)
_RETRY_WINDOW = dt.timedelta(days=1)
_CHUNK = 1 << 20
#: More references than this in one request is refused (0x0110 for the N-ACTION).
MAX_ITEMS = 100_000


class CommitmentService:
    """Records commitment requests, checks the referenced instances, delivers reports."""

    def __init__(self, index: IndexRepository, blobs: BlobStore, repo: CommitmentRepository) -> None:
        self.index = index
        self.blobs = blobs
        self.repo = repo

    def request(self, request: CommitmentRequest) -> None:
        """Validate and durably record a request (before the N-ACTION-RSP is sent).

        Raises
        ------
        InvalidRequest
            For a missing or malformed Transaction UID, no references, or too many.
        """
        require_uid(request.transaction_uid, "Transaction UID")
        if not request.items:
            raise InvalidRequest("Referenced SOP Sequence is empty")
        if len(request.items) > MAX_ITEMS:
            raise InvalidRequest(f"more than {MAX_ITEMS} references in one request")
        self.repo.save_request(request)
        LOGGER.info(
            "storage commitment %s from %s: %d instances",
            request.transaction_uid,
            request.calling_ae_title,
            len(request.items),
        )

    def evaluate(self, transaction_uid: str) -> CommitmentResult:
        """Check every referenced instance now (index row, blob present, digest).

        Raises
        ------
        InvalidRequest
            When the transaction is unknown.
        """
        stored = self.repo.get(transaction_uid)
        if stored is None:
            raise InvalidRequest(f"unknown storage commitment transaction {transaction_uid}")
        successes: list[CommitmentItem] = []
        failures: list[tuple[CommitmentItem, int]] = []
        for item in stored.request.items:
            reason = self._check(item)
            if reason is None:
                successes.append(item)
            else:
                failures.append((item, reason))
        if failures:
            LOGGER.warning(
                "storage commitment %s: %d of %d instances cannot be committed",
                transaction_uid,
                len(failures),
                len(stored.request.items),
            )
        return CommitmentResult(transaction_uid, tuple(successes), tuple(failures))

    @staticmethod
    def withhold(result: CommitmentResult, retrievable: Collection[str]) -> CommitmentResult:
        """``result`` with the instances not in ``retrievable`` (SOP Instance UIDs the
        requestor may retrieve) turned into failures (No Such Object Instance), as if
        they were not held."""
        successes = tuple(i for i in result.successes if i.sop_instance_uid in retrievable)
        withheld = tuple(
            (i, NO_SUCH_OBJECT_INSTANCE) for i in result.successes if i.sop_instance_uid not in retrievable
        )
        return CommitmentResult(result.transaction_uid, successes, (*result.failures, *withheld))

    def _check(self, item: CommitmentItem) -> int | None:
        try:
            require_uid(item.sop_instance_uid, "Referenced SOP Instance UID")
        except DicomhubError:
            return NO_SUCH_OBJECT_INSTANCE
        row = self.index.get_instance(item.sop_instance_uid)
        if row is None:
            return NO_SUCH_OBJECT_INSTANCE
        if row.sop_class_uid != item.sop_class_uid:
            return CLASS_INSTANCE_CONFLICT
        digest = hashlib.sha256()
        size = 0
        try:
            with self.blobs.open(row.blob_key) as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        except (DicomhubError, OSError) as exc:
            LOGGER.error("storage commitment: blob of %s unreadable: %s", item.sop_instance_uid, exc)
            return PROCESSING_FAILURE
        computed = digest.hexdigest()
        if row.sha256 == DEFERRED_DIGEST and size == row.size:
            # STOW-RS left the blob's digest for later (see dicomhub.services.contentdigest).
            BlobRecords(self.index.engine).set_deferred_digest(row.blob_key, computed)
        elif size != row.size or computed != row.sha256:
            LOGGER.error(
                "storage commitment: blob of %s does not match its recorded digest", item.sop_instance_uid
            )
            return PROCESSING_FAILURE
        return None

    def delivered(self, result: CommitmentResult) -> None:
        """The requestor acknowledged the report (N-EVENT-REPORT-RSP success)."""
        self.repo.delivered(result)
        LOGGER.info("storage commitment %s reported", result.transaction_uid)

    def count_by_state(self) -> dict[str, int]:
        """Transactions per state (pending, delivered, gave-up)."""
        return self.repo.count_by_state()

    def transactions(self, limit: int = 100) -> list[dict[str, object]]:
        return self.repo.transactions(limit)

    # ------------------------------------------------------------ delivery later

    def deliver_due(self, deliver: Deliver, now: dt.datetime | None = None) -> int:
        """Deliver reports whose transaction is still pending and due; return how many were tried."""
        due = self.repo.due()
        for stored in due:
            self._deliver(stored, deliver, now or dt.datetime.now(dt.UTC))
        return len(due)

    def _deliver(self, stored: StoredTransaction, deliver: Deliver, now: dt.datetime) -> None:
        tuid = stored.request.transaction_uid
        try:
            result = self.evaluate(tuid)
            deliver(stored.request.calling_ae_title, result)
        except Exception as exc:  # noqa: BLE001 - any failure means: try again later
            wait = min(_FIRST_RETRY * (2**stored.attempts), _LONGEST_WAIT)
            retry_at: dt.datetime | None = now + wait
            if now - stored.created_at > _RETRY_WINDOW:
                retry_at = None
            LOGGER.warning(
                "storage commitment %s: report to %s not delivered (%s); %s",
                tuid,
                stored.request.calling_ae_title,
                exc,
                f"next attempt at {retry_at:%H:%M:%S}" if retry_at else "giving up",
            )
            self.repo.attempt_failed(tuid, str(exc), retry_at)
            return
        self.delivered(result)

    def run_delivery(self, stop: threading.Event, deliver: Deliver, idle: float = 1.0) -> None:
        """Loop until ``stop``: deliver due reports (the background process runs this)."""
        while not stop.wait(idle):
            try:
                # One node at a time delivers, so that a report is never sent twice.
                with lease(self.repo.engine, "storage-commitment-delivery") as mine:
                    if mine:
                        self.deliver_due(deliver)
            except DicomhubError:
                LOGGER.exception("storage commitment delivery failed; retrying")
