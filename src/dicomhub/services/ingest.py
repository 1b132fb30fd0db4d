"""The one store path: C-STORE, STOW-RS, ``dicomhub import``, migration, de-identification.

Every source calls :meth:`IngestService.store` (or, for objects that are
acknowledged together, :meth:`IngestService.store_many`) with what it
received, its :class:`~dicomhub.model.ingest.InstanceOrigin` and its caller,
like Orthanc's ``ServerContext::Store``. Order of work, so that a success is
never a lie and a crash never leaves a visible half object:

1. parse the header only and validate the minimum (identifying UIDs, and a
   SOP class that is storable here: :class:`~dicomhub.model.sopclasses.StorableSOPClasses`,
   the one table C-STORE negotiation, STOW-RS and import share), and ask
   access control;
2. the one validation step (:meth:`IngestService._validate`): IOD validation
   under the ``warn`` and ``reject`` policies, for every source alike;
3. the one duplicate decision (:meth:`IngestService._decide`, on
   :class:`~dicomhub.services.duplicates.DuplicateJudge`): the same object,
   whatever its encoding, is already present; other content goes to the
   duplicate policy;
4. write the bytes as received under a fresh opaque key and fsync them;
5. index them in one committed transaction, which also writes the study's
   labels and the object's validation findings
   (:class:`~dicomhub.index.repository.Alongside`): all of them or none;
6. only then report success.

A blob written in step 4 whose step 5 never happened is an orphan that
``dicomhub check`` finds; a row without its blob cannot exist.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import mmap
import os
import threading
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
from dicomhub.index.repository import AddOutcome, AddResult, Alongside, IndexRepository
from dicomhub.index.validation import ValidationRecord
from dicomhub.model.caller import Caller
from dicomhub.model.extract import extract_part10
from dicomhub.model.identifiers import require_uid
from dicomhub.model.ingest import (
    UNSPECIFIED_ORIGIN,
    InstanceOrigin,
    Part10Object,
    Received,
    ReceivedDataSet,
    StoreOutcome,
    StoreResult,
)
from dicomhub.model.part10 import file_meta_header, has_part10_header
from dicomhub.model.policy import CompressionRule, DuplicatePolicy, ValidationPolicy
from dicomhub.model.records import InstanceHeader, InstanceRow
from dicomhub.model.sopclasses import StorableSOPClasses
from dicomhub.services.blobfiles import blob_as_file, mapped_blob
from dicomhub.services.contentdigest import PENDING, content_digest, digests_of_blob
from dicomhub.services.duplicates import BlobRef, DuplicateJudge, Incoming, other_content
from dicomhub.services.validation import ValidationService
from dicomhub.storage.base import BlobInfo, BlobStore
from dicomhub.telemetry.metrics import metrics

__all__ = ["DuplicatePolicy", "IngestService", "StoreOutcome", "StoreResult"]

_CHUNK = 4 << 20

LOGGER = logging.getLogger("dicomhub.ingest")


@dataclass(frozen=True, slots=True)
class _Validated:
    """What the validation step found: the record to write with the row (None when the
    policy leaves validation to the background worker) and the warning to report."""

    record: ValidationRecord | None = None
    warning: str | None = None


_NOT_VALIDATED = _Validated()


class _Verdict(enum.Enum):
    NEW = "new"  # not held (or held with other content, under overwrite): index it
    PRESENT = "present"  # held with the same content: answer already present
    REFUSED = "refused"  # see _Decision.refusal


@dataclass(frozen=True, slots=True)
class _Decision:
    """The duplicate decision for one object."""

    verdict: _Verdict
    refusal: DuplicateInstance | None = None
    # Refused for other content: the copy is kept in quarantine (dicomhub conflicts).
    quarantine: bool = False


_NEW = _Decision(_Verdict.NEW)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """An object that passed validation and the duplicate check, not yet written."""

    data: bytes
    header: InstanceHeader
    content_sha256: str
    size: int  # of the object as received
    validated: _Validated = _NOT_VALIDATED

    @property
    def warning(self) -> str | None:
        return self.validated.warning


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
        labeller: Callable[[Caller, InstanceHeader], Iterable[str]] | None = None,
        storable: StorableSOPClasses | None = None,
    ) -> None:
        """
        Parameters
        ----------
        compression : sequence of (CompressionRule, str)
            Compression at rest: each rule with the transfer syntax UID it
            resolves to; the first rule matching an object decides.
        validation : ValidationService, optional
            IOD validation of every stored object under the ``warn`` and
            ``reject`` policies (``record`` leaves it to the background worker).
        store_guard : callable, optional
            Raises when the caller may not store this object (access control),
            before it is indexed; not called for an unrestricted caller.
        labeller : callable, optional
            The labels the ingest rules give a newly stored object's study;
            they are written in the instance row's transaction.
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
        # (study, label) pairs committed by this process: a study of thousands
        # of instances costs one label insert, not one per instance.
        self._labelled: set[tuple[str, str]] = set()
        self._labelled_lock = threading.Lock()

    # ------------------------------------------------------------------ the entry

    def store(
        self,
        received: Received,
        origin: InstanceOrigin,
        caller: Caller,
        *,
        study_instance_uid: str | None = None,
    ) -> StoreResult:
        """Store one object: the one entry of every source.

        Parameters
        ----------
        received : ReceivedDataSet or Part10Object
            A data set as DIMSE delivers it (no File Meta: the command's
            Affected SOP Class/Instance UIDs go into it, so they are
            validated like the data set's own), or a Part 10 file; either in
            memory or in a file (a spooled data set, an imported file), which
            is never read into memory as a whole and is left in place.
        origin : InstanceOrigin
            Where it came from (logged with refusals).
        caller : Caller
            Who asks: access control, the per-AE validation policy, the
            source AE title recorded with the instance.
        study_instance_uid : str, optional
            An object of any other study is refused (:class:`InvalidIdentifier`)
            before anything is written (STOW-RS to a study's URL).

        Returns
        -------
        StoreResult
            Stored, replaced or already present, once durable and committed.

        Raises
        ------
        DicomhubError
            The refusal: invalid identifiers, a SOP class not storable here,
            access control, IOD validation under ``reject``, the duplicate
            policy, a patient mismatch; or a storage or index failure.
        """
        if isinstance(received, ReceivedDataSet):
            require_uid(received.sop_class_uid, "Affected SOP Class UID")
            require_uid(received.sop_instance_uid, "Affected SOP Instance UID")
            if received.path is not None:
                return self._store_spooled(received, received.path, origin, caller)
            data = (
                file_meta_header(
                    received.sop_class_uid,
                    received.sop_instance_uid,
                    received.transfer_syntax_uid,
                    caller.ae_title,
                )
                + received.dataset
            )
            return self._store(data, origin, caller, expect_instance_uid=received.sop_instance_uid)
        if received.data is not None:
            if not has_part10_header(received.data):
                raise InvalidRequest("not a DICOM Part 10 file (no DICM prefix)")
            return self._store(received.data, origin, caller, expect_study_uid=study_instance_uid)
        if received.path is None:
            raise InvalidRequest("nothing to store")
        return self._store_part10_file(received.path, origin, caller, study_instance_uid)

    # Shorthands for library callers and tests: each is one call of store().

    def store_received(
        self,
        dataset: bytes,
        transfer_syntax_uid: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        caller: Caller,
        origin: InstanceOrigin = UNSPECIFIED_ORIGIN,
    ) -> StoreResult:
        """:meth:`store` of a data set received over the network (no File Meta yet)."""
        received = ReceivedDataSet(transfer_syntax_uid, sop_class_uid, sop_instance_uid, dataset)
        return self.store(received, origin, caller)

    def store_received_file(
        self,
        path: str | os.PathLike[str],
        transfer_syntax_uid: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        caller: Caller,
        origin: InstanceOrigin = UNSPECIFIED_ORIGIN,
    ) -> StoreResult:
        """:meth:`store` of a large data set received over the network and spooled to ``path``."""
        received = ReceivedDataSet(transfer_syntax_uid, sop_class_uid, sop_instance_uid, path=os.fspath(path))
        return self.store(received, origin, caller)

    def store_part10(
        self,
        data: bytes,
        caller: Caller,
        *,
        study_instance_uid: str | None = None,
        origin: InstanceOrigin = UNSPECIFIED_ORIGIN,
    ) -> StoreResult:
        """:meth:`store` of a Part 10 file held in memory."""
        return self.store(Part10Object(data), origin, caller, study_instance_uid=study_instance_uid)

    def store_part10_file(
        self,
        path: str | os.PathLike[str],
        caller: Caller,
        *,
        study_instance_uid: str | None = None,
        origin: InstanceOrigin = UNSPECIFIED_ORIGIN,
    ) -> StoreResult:
        """:meth:`store` of the Part 10 file at ``path`` (left in place)."""
        received = Part10Object(path=os.fspath(path))
        return self.store(received, origin, caller, study_instance_uid=study_instance_uid)

    # ------------------------------------------------------------------ one object

    def _store_spooled(
        self, received: ReceivedDataSet, path: str, origin: InstanceOrigin, caller: Caller
    ) -> StoreResult:
        """Store a large data set spooled to ``path``, never held in memory.

        The blob is written from the file in chunks (File Meta in front, both
        digests computed on the way), then only its header is read back for
        indexing and the validation step reads the blob's file. Objects this
        large are kept as received (no compression at rest: encoding hundreds
        of MB before answering would outlast the sender's DIMSE timeout).
        """
        meta = file_meta_header(
            received.sop_class_uid, received.sop_instance_uid, received.transfer_syntax_uid, caller.ae_title
        )
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
            if header.sop_instance_uid != received.sop_instance_uid:
                raise InvalidIdentifier(
                    "the data set's SOP Instance UID differs from the request's Affected SOP Instance UID"
                )
            self._guard(caller, header)
            validated = self._validate(header, caller, origin, BlobRef(blob.key))
            digest = content.hexdigest()
            existing = self.index.get_instance(header.sop_instance_uid)
            decision = self._decide(header, existing, digest, BlobRef(blob.key))
            answered = self._act(decision, header, origin, caller, blob, blob.size, validated.warning)
            if answered is not None:
                return answered
        except DicomhubError as exc:
            if not isinstance(exc, Conflict):
                self._discard(blob.key)
            raise
        prepared = _Prepared(b"", header, digest, blob.size, validated)
        return self._index_one(prepared, blob, origin, caller)

    def _store_part10_file(
        self, path: str, origin: InstanceOrigin, caller: Caller, study_instance_uid: str | None
    ) -> StoreResult:
        """Store the Part 10 file at ``path`` without reading it into memory.

        The file is memory-mapped: the header scan, the SHA-256 and the blob
        write only slice, hash and ``write`` the buffer, all of which an
        ``mmap`` supports as ``bytes`` does, so the pages come from the page
        cache (reclaimable) rather than from a copy on the heap.
        """
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise InvalidRequest("not a DICOM Part 10 file (empty)")
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            # Read-only mapping of a file nobody else writes: bytes in all but type.
            data = cast(bytes, mapped)
            if not has_part10_header(data):
                raise InvalidRequest("not a DICOM Part 10 file (no DICM prefix)")
            return self._store(data, origin, caller, expect_study_uid=study_instance_uid)
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
        origin: InstanceOrigin,
        caller: Caller,
        expect_instance_uid: str | None = None,
        expect_study_uid: str | None = None,
    ) -> StoreResult:
        prepared = self._prepare(data, origin, caller, expect_instance_uid, expect_study_uid)
        if isinstance(prepared, StoreResult):
            return prepared
        blob = self._put_new(lambda key: self.blobs.put(key, prepared.data))
        return self._index_one(prepared, blob, origin, caller)

    def _index_one(
        self, prepared: _Prepared, blob: BlobInfo, origin: InstanceOrigin, caller: Caller
    ) -> StoreResult:
        """Index one durable blob with its labels and findings (one transaction)."""
        try:
            added: AddOutcome | BaseException = self.index.add_instance(
                prepared.header,
                blob,
                prepared.content_sha256,
                caller.ae_title,
                overwrite=self.policy is DuplicatePolicy.OVERWRITE,
                alongside=self._alongside(prepared, caller),
            )
        except BaseException as exc:
            added = exc
        return self._finish(prepared, blob, added, origin, caller)

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
        pending: list[tuple[int, _Prepared, BlobInfo]] = []
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
        try:
            outcomes = self.index.add_new_instances(
                [(p.header, blob, p.content_sha256, caller.ae_title) for _i, p, blob in pending],
                [self._alongside(p, caller) for _i, p, _blob in pending],
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
                    alongside=[self._alongside(p, caller) for _i, p, _blob in pending],
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
            # Under overwrite only: the decision is new (replace) or present.
            decision = self._decide(header, existing, prepared.content_sha256, BlobRef(blob.key))
            if decision.verdict is not _Verdict.PRESENT:
                out.append((i, prepared, blob))
                continue
            self._discard(blob.key)
            results[i] = self._result(StoreOutcome.ALREADY_PRESENT, header, prepared.size, prepared.warning)
        return out

    def _prepare_written(
        self, written: _Written, origin: InstanceOrigin, caller: Caller, expect_study_uid: str | None
    ) -> tuple[_Prepared | StoreResult, BlobInfo, bool]:
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
        prepared = _Prepared(b"", header, content, blob.size, validated)
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
        return _Prepared(b"", compressed.header, content, blob.size, validated), stored, True

    # ------------------------------------------------------------------ the shared steps

    def _validate(
        self, header: InstanceHeader, caller: Caller, origin: InstanceOrigin, source: Incoming
    ) -> _Validated:
        """The one validation step: IOD validation under the ``warn`` and ``reject``
        policies of the caller's AE title (header only), for every source alike.

        ``source`` is the object in hand (a Part 10 file's bytes) or its
        written blob. Under ``record`` nothing is checked here: the background
        worker checks the stored copy. The findings are written with the
        instance row (:meth:`_alongside`); a refused object's are written on
        their own, as there is no row.

        Raises
        ------
        DoesNotMatchIOD
            Under ``reject``, for an object with errors.
        """
        if self.validation is None:
            return _NOT_VALIDATED
        source_ae = caller.ae_title or None
        policy = self.validation.policy_for(source_ae)
        if policy is ValidationPolicy.RECORD:
            return _NOT_VALIDATED
        if isinstance(source, BlobRef):
            with blob_as_file(self.blobs, source.key) as path:
                findings = self.validation.validate_file(path)
        else:
            findings = self.validation.validate_bytes(source)
        errors = [f for f in findings if f.is_error]
        if policy is ValidationPolicy.REJECT and errors:
            self.validation.record(
                header.sop_instance_uid, header.sop_class_uid, source_ae, findings, rejected=True
            )
            LOGGER.warning(
                "%s from %s refused by IOD validation: %s",
                header.sop_instance_uid[:80],
                origin.describe(),
                errors[0].message,
            )
            raise DoesNotMatchIOD(f"IOD: {errors[0].message}")
        record = self.validation.as_record(header.sop_instance_uid, header.sop_class_uid, source_ae, findings)
        return _Validated(record, errors[0].message if errors else None)

    def _decide(
        self,
        header: InstanceHeader,
        existing: InstanceRow | None,
        content: str,
        incoming: Incoming,
        *,
        may_replace: bool = True,
    ) -> _Decision:
        """The one duplicate decision, under the duplicate policy.

        Not held: new. Held with the same content (whatever its encoding,
        :meth:`DuplicateJudge.difference`): already present, or refused under
        ``reject``. Held with other content: replaced under ``overwrite``
        (unless ``may_replace`` is false: the index has already declined to),
        else refused with the copy kept in quarantine.
        """
        if existing is None:
            return _NEW
        difference = self.duplicates.difference(existing, content, header.transfer_syntax_uid, incoming)
        if difference is None:
            if self.policy is DuplicatePolicy.REJECT:
                return _Decision(
                    _Verdict.REFUSED,
                    DuplicateInstance(
                        f"SOP Instance {header.sop_instance_uid} is already stored (policy: reject)"
                    ),
                )
            return _Decision(_Verdict.PRESENT)
        if self.policy is DuplicatePolicy.OVERWRITE and may_replace:
            return _NEW
        return _Decision(_Verdict.REFUSED, other_content(header, difference), quarantine=True)

    def _act(
        self,
        decision: _Decision,
        header: InstanceHeader,
        origin: InstanceOrigin,
        caller: Caller,
        copy: BlobInfo | bytes,
        size: int,
        warning: str | None,
    ) -> StoreResult | None:
        """Carry out a decision on the new copy (its written blob, or its bytes not
        yet written): None to go on and index it, else the answer.

        Raises
        ------
        DuplicateInstance
            Refused: the copy is kept in quarantine for other content (written
            now when it was not yet), else removed.
        """
        if decision.verdict is _Verdict.NEW:
            return None
        if decision.verdict is _Verdict.PRESENT:
            if isinstance(copy, BlobInfo):
                self._discard(copy.key)
            return self._result(StoreOutcome.ALREADY_PRESENT, header, size, warning)
        refusal = decision.refusal
        if refusal is None:  # REFUSED always carries its refusal
            return None
        if decision.quarantine:
            blob = copy if isinstance(copy, BlobInfo) else self.blobs.put(self.blobs.new_key(), copy)
            self._record(refusal, blob, header, origin, caller, "duplicate-different-content")
        elif isinstance(copy, BlobInfo):
            self._discard(copy.key)
        raise refusal

    def _alongside(self, prepared: _Prepared, caller: Caller) -> Alongside | None:
        """The labels and findings to write in the row's transaction (None: nothing)."""
        header = prepared.header
        labels: tuple[str, ...] = ()
        if self.labeller is not None:
            uid = header.study_instance_uid
            labels = tuple(
                sorted(label for label in self.labeller(caller, header) if (uid, label) not in self._labelled)
            )
        if not labels and prepared.validated.record is None:
            return None
        return Alongside(labels, prepared.validated.record)

    def _prepare(
        self,
        data: bytes,
        origin: InstanceOrigin,
        caller: Caller,
        expect_instance_uid: str | None = None,
        expect_study_uid: str | None = None,
    ) -> _Prepared | StoreResult:
        """Check, validate, digest and decide on duplicates: what to write, or the answer already."""
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
        validated = self._validate(header, caller, origin, data)
        # Duplicates are judged on the data set alone: the File Meta differs
        # between senders (Source AE Title, implementation UIDs) for the same object.
        content = content_digest(data)
        decision = self._decide(header, self.index.get_instance(header.sop_instance_uid), content, data)
        answered = self._act(decision, header, origin, caller, data, len(data), validated.warning)
        if answered is not None:
            return answered
        return self._compressed(_Prepared(data, header, content, len(data), validated))

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
        return dataclasses.replace(prepared, data=data, header=dataclasses.replace(stored, extra=extra))

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
        origin: InstanceOrigin,
        caller: Caller,
    ) -> StoreResult:
        """Turn the index's answer for a written blob into the store's outcome (or refusal)."""
        header = prepared.header
        if isinstance(added, (PatientMismatch, Conflict)):
            self._record(added, blob, header, origin, caller)
            raise added
        if isinstance(added, BaseException):
            # Not indexed (nor its labels and findings): the blob must not linger as an orphan.
            self._discard(blob.key)
            raise added
        if added.result is AddResult.EXISTS:
            # Another association (or an earlier part of the same request)
            # stored the same UID between our check and our transaction: the
            # same decision, except that the index replaces under overwrite
            # by itself, so a difference here is a refusal.
            decision = (
                _Decision(_Verdict.REFUSED, other_content(header, "the held copy is not known"), True)
                if added.existing is None
                else self._decide(
                    header, added.existing, prepared.content_sha256, BlobRef(blob.key), may_replace=False
                )
            )
            answered = self._act(decision, header, origin, caller, blob, prepared.size, prepared.warning)
            if answered is not None:
                return answered
        if added.replaced_blob_key:
            self._discard(added.replaced_blob_key)
        outcome = StoreOutcome.REPLACED if added.result is AddResult.REPLACED else StoreOutcome.STORED
        if self.labeller is not None:
            self._labels_committed(header, caller)
        return self._result(outcome, header, prepared.size, prepared.warning)

    def _labels_committed(self, header: InstanceHeader, caller: Caller) -> None:
        """Remember the labels just committed with a row, so that the study's next
        instances skip them."""
        if self.labeller is None:
            return
        uid = header.study_instance_uid
        with self._labelled_lock:
            if len(self._labelled) > 100000:
                self._labelled.clear()
            self._labelled.update((uid, label) for label in self.labeller(caller, header))

    def _guard(self, caller: Caller, header: InstanceHeader) -> None:
        if self.store_guard is not None and not caller.access.unrestricted:
            self.store_guard(caller, header)

    def _record(
        self,
        exc: Exception,
        blob: BlobInfo,
        header: InstanceHeader,
        origin: InstanceOrigin,
        caller: Caller,
        kind: str | None = None,
    ) -> None:
        """Keep a refused copy in quarantine (``dicomhub conflicts``)."""
        kind = kind or ("patient-mismatch" if isinstance(exc, PatientMismatch) else "conflict")
        LOGGER.warning(
            "refused %s from %s [%s] (%s): %s; copy kept as blob %s",
            header.sop_instance_uid,
            caller.name or caller.channel.value,
            origin.describe(),
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
