"""The one store path: C-STORE, ``dicomhub import``, STOW-RS and migration.

Order of work, so that a success is never a lie and a crash never leaves a
visible half object:

1. parse the header only and validate the minimum (identifying UIDs, and a
   SOP class that is storable here: :class:`~dicomhub.model.sopclasses.StorableSOPClasses`,
   the one table C-STORE negotiation, STOW-RS and import share);
2. write the bytes as received under a fresh opaque key and fsync them;
3. index them in one committed transaction;
4. only then report success.

A blob written in step 2 whose step 3 never happened is an orphan that
``dicomhub check`` finds; a row without its blob cannot exist.

A SOP Instance UID that comes again is judged by the one duplicate decision
(:class:`~dicomhub.services.duplicates.DuplicateJudge`): the same object,
whatever its encoding, is already present; other content goes to the
duplicate policy.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import mmap
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

from dicomhub import codec
from dicomhub.errors import (
    Conflict,
    DicomhubError,
    DoesNotMatchIOD,
    DuplicateInstance,
    InvalidIdentifier,
    InvalidRequest,
    PatientMismatch,
    StorageError,
    TranscodeError,
)
from dicomhub.index.repository import AddOutcome, AddResult, IndexRepository
from dicomhub.model.caller import Caller
from dicomhub.model.extract import extract_part10
from dicomhub.model.identifiers import require_uid
from dicomhub.model.part10 import file_meta_header, has_part10_header
from dicomhub.model.policy import CompressionRule, DuplicatePolicy, ValidationPolicy
from dicomhub.model.records import InstanceHeader
from dicomhub.model.sopclasses import StorableSOPClasses
from dicomhub.services.blobfiles import blob_as_file, mapped_blob
from dicomhub.services.contentdigest import PENDING, content_digest, digests_of_blob
from dicomhub.services.duplicates import BlobRef, DuplicateJudge, other_content
from dicomhub.services.validation import ValidationService
from dicomhub.storage.base import BlobInfo, BlobStore
from dicomhub.telemetry.metrics import metrics

__all__ = ["DuplicatePolicy", "IngestService", "StoreOutcome", "StoreResult"]

_CHUNK = 4 << 20

LOGGER = logging.getLogger("dicomhub.ingest")


class StoreOutcome(enum.Enum):
    STORED = "stored"
    ALREADY_PRESENT = "already-present"
    REPLACED = "replaced"


@dataclass(frozen=True, slots=True)
class StoreResult:
    outcome: StoreOutcome
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    size: int
    series_instance_uid: str = ""
    # Stored, but IOD validation found errors (policy warn): the first one.
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class _Prepared:
    """An object that passed validation and the duplicate check, not yet written."""

    data: bytes
    header: InstanceHeader
    content_sha256: str
    size: int  # of the object as received
    warning: str | None = None  # IOD validation (policy warn)


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


class IngestService:
    """Stores objects durably and indexes them, under a duplicate policy."""

    def __init__(
        self,
        index: IndexRepository,
        blobs: BlobStore,
        policy: DuplicatePolicy = DuplicatePolicy.KEEP,
        compression: Sequence[tuple[CompressionRule, str]] = (),
        validation: ValidationService | None = None,
        *,
        store_guard: Callable[[Caller, InstanceHeader], None] | None = None,
        labeller: Callable[[Caller, InstanceHeader], None] | None = None,
        storable: StorableSOPClasses | None = None,
    ) -> None:
        """
        Parameters
        ----------
        compression : sequence of (CompressionRule, str)
            Compression at rest: each rule with the transfer syntax UID it
            resolves to; the first rule matching an object decides.
        validation : ValidationService, optional
            IOD validation of STOW-RS parts under the ``warn`` and ``reject``
            policies (C-STORE applies them in its handler, before ingest).
        store_guard : callable, optional
            Raises when the caller may not store this object (access control),
            before it is indexed; not called for an unrestricted caller.
        labeller : callable, optional
            Attaches the labels of the ingest rules to a newly stored object's study.
        storable : StorableSOPClasses, optional
            Which SOP classes may be stored (default: the standard's storage
            SOP classes only); an object of any other is refused with
            :class:`~dicomhub.errors.SOPClassNotSupported` before anything is written.
        """
        self.store_guard = store_guard
        self.labeller = labeller
        self.index = index
        self.blobs = blobs
        self.duplicates = DuplicateJudge(index, blobs)
        self.policy = policy
        self.compression = tuple(compression)
        self.validation = validation
        self.storable = storable or StorableSOPClasses()

    def store_received(
        self,
        dataset: bytes,
        transfer_syntax_uid: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        caller: Caller,
    ) -> StoreResult:
        """Store a data set received over the network (no File Meta yet).

        The command's Affected SOP Class/Instance UIDs go into the File Meta
        header, so they are validated like the data set's own.
        """
        require_uid(sop_class_uid, "Affected SOP Class UID")
        require_uid(sop_instance_uid, "Affected SOP Instance UID")
        data = (
            file_meta_header(sop_class_uid, sop_instance_uid, transfer_syntax_uid, caller.ae_title)
            + dataset
        )
        return self._store(data, caller, expect_instance_uid=sop_instance_uid)

    def store_received_file(
        self,
        path: str | os.PathLike[str],
        transfer_syntax_uid: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        caller: Caller,
    ) -> StoreResult:
        """Store a large data set received over the network and spooled to ``path``.

        Like :meth:`store_received`, but the data set is never held in
        memory: the blob is written from the file in chunks (File Meta in
        front, both digests computed on the way), then only its header is
        read back for indexing. Objects this large are kept as received
        (no compression at rest: encoding hundreds of MB before answering
        would outlast the sender's DIMSE timeout). The spool file is left
        for the caller to remove.
        """
        require_uid(sop_class_uid, "Affected SOP Class UID")
        require_uid(sop_instance_uid, "Affected SOP Instance UID")
        meta = file_meta_header(sop_class_uid, sop_instance_uid, transfer_syntax_uid, caller.ae_title)
        content = hashlib.sha256()

        def chunks() -> Iterator[bytes | memoryview]:
            yield meta
            with open(path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    content.update(chunk)
                    yield chunk

        blob = self._put_new(lambda key: self.blobs.put_stream(key, chunks()))
        try:
            header = self._header_of_blob(blob.key)
            self.storable.require_storable(header.sop_class_uid)
            if header.sop_instance_uid != sop_instance_uid:
                raise InvalidIdentifier(
                    "the data set's SOP Instance UID differs from the request's Affected SOP Instance UID"
                )
            self._guard(caller, header)
            digest = content.hexdigest()
            existing = self.index.get_instance(header.sop_instance_uid)
            if existing is not None:
                difference = self.duplicates.difference(
                    existing, digest, header.transfer_syntax_uid, BlobRef(blob.key)
                )
                if difference is None:
                    self._discard(blob.key)
                    if self.policy is DuplicatePolicy.REJECT:
                        raise DuplicateInstance(
                            f"SOP Instance {header.sop_instance_uid} is already stored (policy: reject)"
                        )
                    return self._result(StoreOutcome.ALREADY_PRESENT, header, blob.size)
                if self.policy is not DuplicatePolicy.OVERWRITE:
                    refusal = other_content(header, difference)
                    self._record(refusal, blob, header, caller, "duplicate-different-content")
                    raise refusal
        except DicomhubError as exc:
            if not isinstance(exc, Conflict):
                self._discard(blob.key)
            raise
        prepared = _Prepared(b"", header, digest, blob.size)
        try:
            added: AddOutcome | BaseException = self.index.add_instance(
                header, blob, digest, caller.ae_title, overwrite=self.policy is DuplicatePolicy.OVERWRITE
            )
        except BaseException as exc:
            added = exc
        return self._finish(prepared, blob, added, caller)

    def _header_of_blob(self, key: str) -> InstanceHeader:
        """Index values of a written blob, reading only its header pages."""
        with mapped_blob(self.blobs, key) as data:
            # The one-pass scan reads element headers and skips values by
            # their length, so a large Pixel Data is never paged in.
            return extract_part10(data)

    def index_stored_blob(self, key: str, *, keep_refused: bool = False) -> bool:
        """Index a blob that is in the store but not in the index (``check --repair``, ``reindex``).

        Returns False, indexing nothing, when its SOP Instance UID is indexed
        already (with another blob) with the same content: the blob is then
        a leftover copy.

        Parameters
        ----------
        keep_refused : bool
            Record a blob the index refuses (its study held under another
            patient, or its UID held with other content) as a refused copy
            kept in quarantine, as ingest did when it first came (``dicomhub
            reindex`` meets these copies in the store), then raise.

        Raises
        ------
        Conflict
            The index refuses the object (see ``keep_refused``); with
            ``keep_refused`` also when its UID is held with other content
            (:class:`~dicomhub.errors.DuplicateInstance`).
        DicomhubError
            When the blob is not a DICOM object that can be indexed.
        """
        with mapped_blob(self.blobs, key) as data:
            header = extract_part10(data)
            content = content_digest(data)
            blob = BlobInfo(key, len(data), hashlib.sha256(data).hexdigest())
        try:
            added = self.index.add_instance(header, blob, content, None, overwrite=False)
        except Conflict as exc:
            if keep_refused:
                kind = "patient-mismatch" if isinstance(exc, PatientMismatch) else "conflict"
                self.index.record_conflict(kind, header, header.sop_instance_uid, blob, None, str(exc))
            raise
        if added.result is not AddResult.EXISTS:
            return True
        if (
            keep_refused
            and added.existing is not None
            and self.duplicates.difference(added.existing, content, header.transfer_syntax_uid, BlobRef(key))
            is not None
        ):
            refusal = DuplicateInstance(
                f"SOP Instance {header.sop_instance_uid} is indexed with other content "
                f"(blob {added.existing.blob_key})"
            )
            self.index.record_conflict(
                "duplicate-different-content", header, header.sop_instance_uid, blob, None, str(refusal)
            )
            raise refusal
        return False

    def store_part10(
        self, data: bytes, caller: Caller, *, study_instance_uid: str | None = None
    ) -> StoreResult:
        """Store a Part 10 file (import, STOW-RS, migration).

        With ``study_instance_uid``, an object of any other study is refused
        (:class:`InvalidIdentifier`) before anything is written.
        """
        if not has_part10_header(data):
            raise InvalidRequest("not a DICOM Part 10 file (no DICM prefix)")
        return self._store(data, caller, expect_study_uid=study_instance_uid)

    def store_part10_file(
        self,
        path: str | os.PathLike[str],
        caller: Caller,
        *,
        study_instance_uid: str | None = None,
    ) -> StoreResult:
        """Store the Part 10 file at ``path`` without reading it into memory.

        The file is memory-mapped: the header scan, the SHA-256 and the blob
        write only slice, hash and ``write`` the buffer, all of which an
        ``mmap`` supports as ``bytes`` does, so the pages come from the page
        cache (reclaimable) rather than from a copy on the heap. The file is
        left in place.
        """
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise InvalidRequest("not a DICOM Part 10 file (empty)")
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            # Read-only mapping of a file nobody else writes: bytes in all but type.
            return self.store_part10(
                cast(bytes, mapped), caller, study_instance_uid=study_instance_uid
            )
        finally:
            try:
                mapped.close()
            except BufferError:
                # A view is still referenced (by a traceback in flight); the
                # mapping goes when that is collected.
                pass

    def _store(
        self,
        data: bytes,
        caller: Caller,
        expect_instance_uid: str | None = None,
        expect_study_uid: str | None = None,
    ) -> StoreResult:
        prepared = self._prepare(data, caller, expect_instance_uid, expect_study_uid)
        if isinstance(prepared, StoreResult):
            return prepared
        blob = self._put_new(lambda key: self.blobs.put(key, prepared.data))
        try:
            added: AddOutcome | BaseException = self.index.add_instance(
                prepared.header,
                blob,
                prepared.content_sha256,
                caller.ae_title,
                overwrite=self.policy is DuplicatePolicy.OVERWRITE,
            )
        except BaseException as exc:
            added = exc
        return self._finish(prepared, blob, added, caller)

    def store_many(
        self,
        items: Iterable[bytes | Iterator[bytes | memoryview]],
        caller: Caller,
        *,
        study_instance_uid: str | None = None,
    ) -> list[StoreResult | Exception]:
        """Store several Part 10 objects that are acknowledged together (STOW-RS).

        Same rules and outcomes as :meth:`store_part10`, item by item, in the
        order of ``items``. An item is an object's bytes or an iterator of its
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
            self._store_written(live[start : start + _STORE_BATCH], results, caller, study_instance_uid)
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
        caller: Caller,
        study_instance_uid: str | None,
    ) -> None:
        """Check and index a batch of written, durable blobs (one index transaction)."""
        pending: list[tuple[int, _Prepared, BlobInfo]] = []
        unsynced = False
        for i, w in batch:
            try:
                prepared, blob, fresh = self._prepare_written(w, caller, study_instance_uid)
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
        try:
            outcomes = self.index.add_new_instances(
                [(p.header, blob, p.content_sha256, caller.ae_title) for _i, p, blob in pending]
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
                )
        except Exception as exc:
            outcomes = [exc] * len(pending)
        for (i, prepared, blob), added in zip(pending, outcomes, strict=True):
            try:
                results[i] = self._finish(prepared, blob, added, caller)
            except Exception as exc:
                results[i] = exc

    def _with_content_digests(
        self,
        pending: list[tuple[int, _Prepared, BlobInfo]],
        results: list[StoreResult | Exception],
    ) -> list[tuple[int, _Prepared, BlobInfo]]:
        """``pending`` with every digest computed (from the blobs); an item whose blob
        cannot be read fails and is left out."""
        out: list[tuple[int, _Prepared, BlobInfo]] = []
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
        pending: list[tuple[int, _Prepared, BlobInfo]],
        results: list[StoreResult | Exception],
    ) -> list[tuple[int, _Prepared, BlobInfo]]:
        """``pending`` without the objects that are already held with the same content
        (answered as already present, their blobs removed), under overwrite.

        Judging them here also computes the missing data set digests of the held
        copies, so that the index can tell the rest from what it holds.
        """
        out: list[tuple[int, _Prepared, BlobInfo]] = []
        for i, prepared, blob in pending:
            header = prepared.header
            existing = self.index.get_instance(header.sop_instance_uid)
            if existing is None or self.duplicates.difference(
                existing, prepared.content_sha256, header.transfer_syntax_uid, BlobRef(blob.key)
            ):
                out.append((i, prepared, blob))
                continue
            self._discard(blob.key)
            results[i] = self._result(StoreOutcome.ALREADY_PRESENT, header, prepared.size)
        return out

    def _prepare_written(
        self, written: _Written, caller: Caller, expect_study_uid: str | None
    ) -> tuple[_Prepared | StoreResult, BlobInfo, bool]:
        """As :meth:`_prepare`, for an object already in its (durable) blob.

        Returns what to index (or the answer already), the blob to index, and
        whether that blob was written after the shared flush (a copy
        compressed at rest). A refused object's blob is removed, unless it is
        kept in quarantine.
        """
        blob = written.blob
        kept = False  # in quarantine: the blob stays
        try:
            header = written.header or self._check_written(written, expect_study_uid)
            self._guard(caller, header)
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
            existing = self.index.get_instance(header.sop_instance_uid) if target else None
            if existing is not None:
                difference = self.duplicates.difference(
                    existing, content, header.transfer_syntax_uid, BlobRef(blob.key)
                )
                if difference is None:
                    if self.policy is DuplicatePolicy.REJECT:
                        raise DuplicateInstance(
                            f"SOP Instance {header.sop_instance_uid} is already stored (policy: reject)"
                        )
                    self._discard(blob.key)
                    return self._result(StoreOutcome.ALREADY_PRESENT, header, blob.size), blob, False
                if self.policy is not DuplicatePolicy.OVERWRITE:
                    refusal = other_content(header, difference)
                    # The blob is durable already: it is the quarantined copy.
                    self._record(refusal, blob, header, caller, "duplicate-different-content")
                    kept = True
                    raise refusal
        except DicomhubError:
            if not kept:
                self._discard(blob.key)
            raise
        prepared = _Prepared(b"", header, content, blob.size, self._validated(blob.key, header, caller))
        if target is None:
            return prepared, blob, False
        with mapped_blob(self.blobs, blob.key) as data:
            compressed = self._compressed(_Prepared(data, header, content, blob.size), blob.sha256)
            if compressed.data is data:  # kept as received
                return prepared, blob, False
        try:
            stored = self.blobs.put(self.blobs.new_key(), compressed.data, durable=False)
        except DicomhubError:
            LOGGER.warning("%s kept as received: cannot write its compressed copy", header.sop_instance_uid)
            return prepared, blob, False
        self._discard(blob.key)
        return _Prepared(b"", compressed.header, content, blob.size, prepared.warning), stored, True

    def _validated(self, key: str, header: InstanceHeader, caller: Caller) -> str | None:
        """IOD validation of a written object under ``warn``/``reject``: the warning to
        report, or None.

        Raises
        ------
        DoesNotMatchIOD
            Under ``reject``, for an object with errors (its blob is then removed).
        """
        if self.validation is None:
            return None
        policy = self.validation.policy_for(caller.ae_title or None)
        if policy is ValidationPolicy.RECORD:
            return None
        with blob_as_file(self.blobs, key) as path:
            findings = self.validation.validate_file(path)
        errors = [f for f in findings if f.is_error]
        rejected = policy is ValidationPolicy.REJECT and bool(errors)
        source = caller.ae_title or None
        self.validation.record(
            header.sop_instance_uid, header.sop_class_uid, source, findings, rejected=rejected
        )
        if rejected:
            self._discard(key)
            raise DoesNotMatchIOD(f"{header.sop_instance_uid} does not match its IOD: {errors[0].message}")
        return errors[0].message if errors else None

    def _prepare(
        self,
        data: bytes,
        caller: Caller,
        expect_instance_uid: str | None = None,
        expect_study_uid: str | None = None,
    ) -> _Prepared | StoreResult:
        """Validate, digest and check for duplicates: what to store, or the answer already."""
        header = extract_part10(data)
        self.storable.require_storable(header.sop_class_uid)
        if expect_instance_uid is not None and header.sop_instance_uid != expect_instance_uid:
            raise InvalidIdentifier(
                "the data set's SOP Instance UID differs from the request's Affected SOP Instance UID"
            )
        if expect_study_uid is not None and header.study_instance_uid != expect_study_uid:
            raise InvalidIdentifier(
                f"SOP Instance {header.sop_instance_uid} belongs to study "
                f"{header.study_instance_uid}, not to the target study {expect_study_uid}"
            )
        self._guard(caller, header)
        # Duplicates are judged on the data set alone: the File Meta differs
        # between senders (Source AE Title, implementation UIDs) for the same object.
        content = content_digest(data)
        existing = self.index.get_instance(header.sop_instance_uid)
        if existing is not None:
            difference = self.duplicates.difference(existing, content, header.transfer_syntax_uid, data)
            if difference is None:
                if self.policy is DuplicatePolicy.REJECT:
                    raise DuplicateInstance(
                        f"SOP Instance {header.sop_instance_uid} is already stored (policy: reject)"
                    )
                return self._result(StoreOutcome.ALREADY_PRESENT, header, len(data))
            if self.policy is not DuplicatePolicy.OVERWRITE:
                self._quarantine(data, header, caller, other_content(header, difference))
        return self._compressed(_Prepared(data, header, content, len(data)))

    def _compressed(self, prepared: _Prepared, received_sha256: str = "") -> _Prepared:
        """The object to write: as received, or compressed at rest when a rule says so.

        The index keeps the received object's syntax and SHA-256, and its
        content digest stays the received data set's, so the same object
        sent again is recognised as already present. When the object cannot
        be compressed (unsupported pixel data, an encoder error) it is kept
        as received: compression must never cost an object.
        """
        header = prepared.header
        target = self._compression_target(header)
        if target is None or target == header.transfer_syntax_uid:
            return prepared
        try:
            data = codec.transcode_bytes(prepared.data, target)
            stored = extract_part10(data)
        except (TranscodeError, InvalidRequest) as exc:
            LOGGER.warning(
                "%s kept as received (%s): not compressed to %s: %s",
                header.sop_instance_uid,
                header.transfer_syntax_uid,
                target,
                exc,
            )
            return prepared
        extra = {
            **stored.extra,
            "original_transfer_syntax_uid": header.transfer_syntax_uid,
            # Given when the received blob's digest is known already (STOW-RS).
            "original_sha256": received_sha256 or hashlib.sha256(prepared.data).hexdigest(),
        }
        header = dataclasses.replace(stored, extra=extra)
        return _Prepared(data, header, prepared.content_sha256, prepared.size)

    def _compression_target(self, header: InstanceHeader) -> str | None:
        if not self.compression:
            return None
        modality = header.series.get("modality")
        for rule, uid in self.compression:
            if rule.matches(modality, header.sop_class_uid):
                return uid
        return None

    def _finish(
        self,
        prepared: _Prepared,
        blob: BlobInfo,
        added: AddOutcome | BaseException,
        caller: Caller,
    ) -> StoreResult:
        """Turn the index's answer for a written blob into the store's outcome (or refusal)."""
        header, content = prepared.header, prepared.content_sha256
        if isinstance(added, (PatientMismatch, Conflict)):
            self._record(added, blob, header, caller)
            raise added
        if isinstance(added, BaseException):
            # Not indexed: the blob must not linger as an orphan.
            self._discard(blob.key)
            raise added
        if added.result is AddResult.EXISTS:
            # Another association (or an earlier part of the same request)
            # stored the same UID between our check and our transaction.
            difference = (
                "the held copy is not known"
                if added.existing is None
                else self.duplicates.difference(
                    added.existing, content, header.transfer_syntax_uid, BlobRef(blob.key)
                )
            )
            if difference is None:
                self._discard(blob.key)
                if self.policy is DuplicatePolicy.REJECT:
                    raise DuplicateInstance(
                        f"SOP Instance {header.sop_instance_uid} is already stored (policy: reject)"
                    )
                return self._result(StoreOutcome.ALREADY_PRESENT, header, prepared.size)
            refusal = other_content(header, difference)
            self._record(refusal, blob, header, caller, "duplicate-different-content")
            raise refusal
        if added.replaced_blob_key:
            self._discard(added.replaced_blob_key)
        outcome = (
            StoreOutcome.REPLACED if added.result is AddResult.REPLACED else StoreOutcome.STORED
        )
        if self.labeller is not None:
            self.labeller(caller, header)
        return self._result(outcome, header, prepared.size, prepared.warning)

    def _guard(self, caller: Caller, header: InstanceHeader) -> None:
        if self.store_guard is not None and not caller.access.unrestricted:
            self.store_guard(caller, header)

    def _quarantine(
        self, data: bytes, header: InstanceHeader, caller: Caller, refusal: DuplicateInstance
    ) -> None:
        """Keep a refused copy in quarantine (``dicomhub conflicts``) and raise its refusal."""
        blob = self.blobs.put(self.blobs.new_key(), data)
        self._record(refusal, blob, header, caller, "duplicate-different-content")
        raise refusal

    def _record(
        self,
        exc: Exception,
        blob: BlobInfo,
        header: InstanceHeader,
        caller: Caller,
        kind: str | None = None,
    ) -> None:
        kind = kind or ("patient-mismatch" if isinstance(exc, PatientMismatch) else "conflict")
        LOGGER.warning(
            "refused %s from %s (%s): %s; copy kept as blob %s",
            header.sop_instance_uid,
            caller.name or caller.channel.value,
            kind,
            exc,
            blob.key,
        )
        self.index.record_conflict(
            kind, header, header.sop_instance_uid, blob, caller.ae_title, str(exc)
        )

    def _put_new(self, write: Callable[[str], BlobInfo]) -> BlobInfo:
        """Write a blob under a new key; when the write fails, remove whatever it may have
        left: an S3 PUT can land after the client gave up on it (a read timeout)."""
        key = self.blobs.new_key()
        try:
            return write(key)
        except BaseException:
            self._discard(key)
            raise

    def _discard(self, key: str) -> None:
        try:
            self.blobs.delete(key)
        except Exception:  # best effort: an orphan is found by `dicomhub check`
            LOGGER.exception("could not remove blob %s", key)

    @staticmethod
    def _result(
        outcome: StoreOutcome, header: InstanceHeader, size: int, warning: str | None = None
    ) -> StoreResult:
        # Every store of every channel ends here (after its commit): count it once.
        counters = metrics()
        counters.stored_objects.labels(outcome=outcome.value).inc()
        if outcome is not StoreOutcome.ALREADY_PRESENT:
            counters.stored_bytes.inc(size)
        return StoreResult(
            outcome=outcome,
            sop_class_uid=header.sop_class_uid,
            sop_instance_uid=header.sop_instance_uid,
            study_instance_uid=header.study_instance_uid,
            size=size,
            series_instance_uid=header.series_instance_uid,
            warning=warning,
        )
