"""The batch path of the one store path: objects acknowledged together.

:meth:`BatchIngest.store_many` (STOW-RS, de-identification) takes the same
steps as :meth:`~dicomhub.services.ingest.IngestService.store`
(:class:`~dicomhub.services.ingest.steps.IngestSteps`), but writes every
object's blob as its bytes arrive, makes all of them durable with one flush,
and indexes them in batches of one transaction each.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from dicomhub.errors import Conflict, DicomhubError, InvalidIdentifier, InvalidRequest, StorageError
from dicomhub.index.repository import AddOutcome
from dicomhub.model.caller import Caller
from dicomhub.model.extract import extract_part10
from dicomhub.model.ingest import UNSPECIFIED_ORIGIN, InstanceOrigin, StoreOutcome, StoreResult
from dicomhub.model.part10 import has_part10_header
from dicomhub.model.policy import DuplicatePolicy
from dicomhub.model.records import InstanceHeader
from dicomhub.services.blobfiles import mapped_blob
from dicomhub.services.contentdigest import PENDING, digests_of_blob
from dicomhub.services.duplicates import BlobRef, Verdict
from dicomhub.services.ingest.steps import IngestSteps, Prepared
from dicomhub.storage.base import BlobInfo

__all__ = ["BatchIngest"]

LOGGER = logging.getLogger("dicomhub.ingest")


@dataclass(slots=True)
class _Written:
    """An object written to its blob: the blob, the object's first bytes (for the
    Part 10 prefix check) and, once read, its header."""

    blob: BlobInfo
    head: bytes
    header: InstanceHeader | None = None
    data: bytes | memoryview | None = None  # the object, while in hand (one chunk)


# Objects indexed per index transaction by store_many.
_STORE_BATCH = 256
# Objects of one store_many whose headers are read while the next arrives (and
# kept until they are indexed); the headers of any further ones are read then.
_EARLY_CHECKS = 1024
# Preamble and "DICM" prefix of a Part 10 object.
_PART10_HEAD = 132


class BatchIngest(IngestSteps):
    """:meth:`store_many`: several objects through the shared steps, acknowledged together."""

    def store_many(
        self,
        items: Iterable[bytes | Iterator[bytes | memoryview]],
        caller: Caller,
        *,
        study_instance_uid: str | None = None,
        origin: InstanceOrigin = UNSPECIFIED_ORIGIN,
    ) -> list[StoreResult | Exception]:
        """:meth:`store` for several Part 10 objects that are acknowledged together
        (STOW-RS, de-identification).

        The same steps as :meth:`store` (validation, the duplicate decision,
        one transaction per object's row, labels and findings), item by item,
        with the same outcomes, in the order of ``items``. An item is an object's bytes or an iterator of its
        chunks; chunks are written to the object's blob as they are pulled
        (STOW-RS streams the parts of a request body this way) while they are
        in hand: nothing is held in memory, spooled or copied again. The blob
        and data set digests of new objects are computed from their blobs
        after the answer (:mod:`dicomhub.services.contentdigest`).

        Every item is written first (not yet durable) and its header read
        back and checked while the next one arrives; then one flush makes
        all of them durable; then they are indexed in batches of one
        transaction each. Nothing is reported stored before its flush and its
        transaction, and an item that is refused leaves no blob behind
        (unless it is kept in quarantine as a conflict).

        Raises
        ------
        Exception
            Whatever ``items`` or an item's chunks raise (a malformed or
            interrupted request body): every blob written so far is removed
            first, so then nothing at all is stored.
        """
        written: list[_Written | DicomhubError] = []
        try:
            for item in items:
                chunks = item if isinstance(item, Iterator) else iter((item,))
                try:
                    done = self._write_streamed(chunks)
                except StorageError as exc:  # the store failed; the item's rest is skipped
                    written.append(exc)
                    continue
                if len(written) < _EARLY_CHECKS:
                    # Read its header now, while the next item is on its way.
                    try:
                        done.header = self._check_written(done, study_instance_uid)
                    except DicomhubError as exc:
                        self._discard(done.blob.key)
                        written.append(exc)
                        continue
                done.data = None  # later ones are read back from their blob
                written.append(done)
        except BaseException:
            for w in written:
                if isinstance(w, _Written):
                    self._discard(w.blob.key)
            raise
        unprocessed = InvalidRequest("not processed")  # replaced below for every written item
        results: list[StoreResult | Exception] = [
            w if isinstance(w, DicomhubError) else unprocessed for w in written
        ]
        live = [(i, w) for i, w in enumerate(written) if isinstance(w, _Written)]
        if live:
            try:
                self.blobs.sync()
            except DicomhubError as exc:
                for i, w in live:
                    self._discard(w.blob.key)
                    results[i] = exc
                live = []
        for start in range(0, len(live), _STORE_BATCH):
            self._store_written(
                live[start : start + _STORE_BATCH], results, origin, caller, study_instance_uid
            )
        return results

    def _write_streamed(self, chunks: Iterator[bytes | memoryview]) -> _Written:
        """Write one object's chunks to a new blob (not durable yet). The blob's digest
        (unless the store computes it anyway) and the data set's are left for later
        (see :mod:`dicomhub.services.contentdigest`)."""
        key = self.blobs.new_key()
        head = bytearray()
        seen: list[bytes | memoryview] = []

        def noted() -> Iterator[bytes | memoryview]:
            for chunk in chunks:
                if len(seen) < 2:
                    seen.append(chunk)
                if len(head) < _PART10_HEAD:
                    head.extend(memoryview(chunk)[: _PART10_HEAD - len(head)])
                yield chunk

        try:
            # Both digests are computed from the blob after the answer (contentdigest).
            blob = self.blobs.put_stream(key, noted(), durable=False, digest=False)
        except BaseException:
            self._discard(key)
            raise
        written = _Written(blob, bytes(head))
        if len(seen) == 1:  # the whole object came in one piece: its header is read from it
            written.data = seen[0]
        return written

    def _check_written(self, written: _Written, expect_study_uid: str | None) -> InstanceHeader:
        """The header of a written object, when it is a Part 10 object of the expected study."""
        data, written.data = written.data, None
        if not has_part10_header(written.head):
            raise InvalidRequest("not a DICOM Part 10 file (no DICM prefix)")
        if data is None:
            header = self._header_of_blob(written.blob.key)
        else:
            header = extract_part10(data if isinstance(data, bytes) else bytes(data))
        self.storable.require_storable(header.sop_class_uid)
        if expect_study_uid is not None and header.study_instance_uid != expect_study_uid:
            raise InvalidIdentifier(
                f"SOP Instance {header.sop_instance_uid} belongs to study "
                f"{header.study_instance_uid}, not to the target study {expect_study_uid}"
            )
        return header

    def _store_written(
        self,
        batch: Sequence[tuple[int, _Written]],
        results: list[StoreResult | Exception],
        origin: InstanceOrigin,
        caller: Caller,
        study_instance_uid: str | None,
    ) -> None:
        """Check and index a batch of written, durable blobs (one index transaction)."""
        pending: list[tuple[int, Prepared, BlobInfo]] = []
        unsynced = False
        for i, w in batch:
            try:
                prepared, blob, fresh = self._prepare_written(w, origin, caller, study_instance_uid)
            except DicomhubError as exc:
                results[i] = exc
                continue
            except Exception as exc:  # a bug: this item fails, the others go on
                LOGGER.exception("STOW: unexpected failure while checking a stored object")
                self._discard(w.blob.key)
                results[i] = exc
                continue
            if isinstance(prepared, StoreResult):
                results[i] = prepared
                continue
            unsynced |= fresh
            pending.append((i, prepared, blob))
        if unsynced:  # compressed copies were written after the shared flush
            try:
                self.blobs.sync()
            except DicomhubError as exc:
                for i, _prepared, blob in pending:
                    self._discard(blob.key)
                    results[i] = exc
                return
        if not pending:
            return
        overwrite = self.policy is DuplicatePolicy.OVERWRITE
        outcomes: Sequence[AddOutcome | BaseException] | None
        # Computed once: the study linker looks each study up only once per process.
        extras = {i: self._alongside(p, caller, blob.key) for i, p, blob in pending}
        try:
            outcomes = self.index.add_new_instances(
                [(p.header, blob, p.content_sha256, caller.ae_title) for _i, p, blob in pending],
                [extras[i] for i, _p, _blob in pending],
            )
            if outcomes is None:
                # Some are indexed already (or conflict): each is judged on its own,
                # which needs the data set digests the batch path leaves for later.
                pending = self._with_content_digests(pending, results)
                if overwrite:
                    # The index replaces on any other digest: a resend in another
                    # encoding must be answered as already present first.
                    pending = self._without_resends(pending, results)
                outcomes = self.index.add_instances(
                    [(p.header, blob, p.content_sha256, caller.ae_title) for _i, p, blob in pending],
                    overwrite=overwrite,
                    alongside=[extras[i] for i, _p, _blob in pending],
                )
        except Exception as exc:
            outcomes = [exc] * len(pending)
        for (i, prepared, blob), added in zip(pending, outcomes, strict=True):
            try:
                results[i] = self._finish(prepared, blob, added, origin, caller)
            except Exception as exc:
                results[i] = exc

    def _with_content_digests(
        self,
        pending: list[tuple[int, Prepared, BlobInfo]],
        results: list[StoreResult | Exception],
    ) -> list[tuple[int, Prepared, BlobInfo]]:
        """``pending`` with every digest computed (from the blobs); an item whose blob
        cannot be read fails and is left out."""
        out: list[tuple[int, Prepared, BlobInfo]] = []
        for i, prepared, blob in pending:
            if prepared.content_sha256 != PENDING:
                out.append((i, prepared, blob))
                continue
            try:
                whole, content = digests_of_blob(self.blobs, blob.key, blob.sha256)
            except (DicomhubError, OSError, ValueError) as exc:
                self._discard(blob.key)
                results[i] = exc if isinstance(exc, DicomhubError) else StorageError(str(exc))
                continue
            prepared = dataclasses.replace(prepared, content_sha256=content)
            out.append((i, prepared, dataclasses.replace(blob, sha256=whole)))
        return out

    def _without_resends(
        self,
        pending: list[tuple[int, Prepared, BlobInfo]],
        results: list[StoreResult | Exception],
    ) -> list[tuple[int, Prepared, BlobInfo]]:
        """``pending`` without the objects that are already held with the same content
        (answered as already present, their blobs removed), under overwrite.

        Judging them here also computes the missing data set digests of the held
        copies, so that the index can tell the rest from what it holds.
        """
        out: list[tuple[int, Prepared, BlobInfo]] = []
        for i, prepared, blob in pending:
            header = prepared.header
            existing = self.index.get_instance(header.sop_instance_uid)
            # Under overwrite only: the decision is new (replace) or present.
            decision = self._decide(header, existing, prepared.content_sha256, BlobRef(blob.key))
            if decision.verdict is not Verdict.PRESENT:
                out.append((i, prepared, blob))
                continue
            self._discard(blob.key)
            results[i] = self._result(StoreOutcome.ALREADY_PRESENT, header, prepared.size, prepared.warning)
        return out

    def _prepare_written(
        self, written: _Written, origin: InstanceOrigin, caller: Caller, expect_study_uid: str | None
    ) -> tuple[Prepared | StoreResult, BlobInfo, bool]:
        """As :meth:`_prepare`, for an object already in its (durable) blob.

        Returns what to index (or the answer already), the blob to index, and
        whether that blob was written after the shared flush (a copy
        compressed at rest). A refused object's blob is removed, unless it is
        kept in quarantine.
        """
        blob = written.blob
        try:
            header = written.header or self._check_written(written, expect_study_uid)
            self._guard(caller, header)
            rejection = self._rejection(header, caller, BlobRef(blob.key))
            validated = self._validate(header, caller, origin, BlobRef(blob.key))
            target = self._compression_target(header)
            if target == header.transfer_syntax_uid:
                target = None
            # Kept as received, the digests can be computed from the blob later;
            # compressed, the received data set is gone then.
            content = PENDING
            if target:
                whole, content = digests_of_blob(self.blobs, blob.key, blob.sha256)
                blob = dataclasses.replace(blob, sha256=whole)
                # Without compression the index transaction itself finds a
                # duplicate (see _finish): no lookup of its own is needed. With
                # it, a duplicate is found before it is encoded for nothing.
                existing = self.index.get_instance(header.sop_instance_uid)
                decision = self._decide(header, existing, content, BlobRef(blob.key))
                answered = self._act(decision, header, origin, caller, blob, blob.size, validated.warning)
                if answered is not None:
                    return answered, blob, False
        except Conflict:
            raise  # the blob is the quarantined copy (_act kept it) or was never ours to remove
        except DicomhubError:
            self._discard(blob.key)
            raise
        prepared = Prepared(b"", header, content, blob.size, validated, rejection)
        if target is None:
            return prepared, blob, False
        with mapped_blob(self.blobs, blob.key) as data:
            compressed = self._compressed(Prepared(data, header, content, blob.size), blob.sha256)
            if compressed.data is data:  # kept as received
                return prepared, blob, False
        try:
            stored = self.blobs.put(self.blobs.new_key(), compressed.data, durable=False)
        except DicomhubError:
            LOGGER.warning("%s kept as received: cannot write its compressed copy", header.sop_instance_uid)
            return prepared, blob, False
        self._discard(blob.key)
        return Prepared(b"", compressed.header, content, blob.size, validated, rejection), stored, True
