"""The shared steps of the one store path (see :mod:`dicomhub.services.ingest`).

:class:`IngestSteps` holds what every entry of :class:`~dicomhub.services.ingest.IngestService`
needs, whether one object is stored or a batch: access control, the validation
step (:meth:`~dicomhub.services.validation.ValidationService.check_incoming`),
acting on the duplicate decision (:meth:`~dicomhub.services.duplicates.DuplicateJudge.decide`),
compression at rest, the one index transaction of a row with its labels and
findings, quarantine of refused copies, and the count of every outcome.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from dicomhub import codec
from dicomhub.errors import (
    Conflict,
    InvalidIdentifier,
    InvalidRequest,
    PatientMismatch,
    TranscodeError,
)
from dicomhub.index.links import StudyLinkWrite
from dicomhub.index.rejection import RejectionWrite
from dicomhub.index.repository import AddOutcome, AddResult, Alongside, IndexRepository
from dicomhub.model.caller import Caller
from dicomhub.model.extract import extract_part10
from dicomhub.model.ingest import InstanceOrigin, StoreOutcome, StoreResult
from dicomhub.model.policy import CompressionRule, DuplicatePolicy
from dicomhub.model.records import InstanceHeader, InstanceRow
from dicomhub.model.sopclasses import StorableSOPClasses
from dicomhub.services.blobfiles import mapped_blob
from dicomhub.services.contentdigest import content_digest
from dicomhub.services.duplicates import BlobRef, Decision, DuplicateJudge, Incoming, Verdict, other_content
from dicomhub.services.rejection_notes import RejectionNotes
from dicomhub.services.validation import NOT_VALIDATED, Validated, ValidationService
from dicomhub.storage.base import BlobInfo, BlobStore
from dicomhub.telemetry.metrics import metrics

__all__ = ["IngestSteps", "Prepared"]

LOGGER = logging.getLogger("dicomhub.ingest")


@dataclass(frozen=True, slots=True)
class Prepared:
    """An object that passed validation and the duplicate check, not yet written."""

    data: bytes
    header: InstanceHeader
    content_sha256: str
    size: int  # of the object as received
    validated: Validated = NOT_VALIDATED
    rejection: RejectionWrite | None = None  # when the object is a rejection note
    # Nothing was held under its UID when the store asked (the index transaction then
    # inserts without asking again; a concurrent store of the same UID makes it retry).
    absent: bool = False

    @property
    def warning(self) -> str | None:
        return self.validated.warning


class IngestSteps:
    """Stores objects durably and indexes them, under a duplicate policy: the steps."""

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
        linker: Callable[[InstanceHeader, bytes, str], StudyLinkWrite | None] | None = None,
        rejections: RejectionNotes | None = None,
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
        linker : callable, optional
            Called before a row is indexed with its header, the object (when in
            memory, else empty) and its blob key: the link of its study to its order
            to write in the row's transaction, or None. It looks a study up once per
            process and never raises.
        rejections : RejectionNotes, optional
            Refuses objects of rejected instances and reads rejection notes
            (IHE IOCM); their rejections are written in the note's transaction.
        """
        self.linker = linker
        self.rejections = rejections
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

    # ------------------------------------------------------------------ the shared steps

    def _validate(
        self, header: InstanceHeader, caller: Caller, origin: InstanceOrigin, source: Incoming
    ) -> Validated:
        """The one validation step (:meth:`ValidationService.check_incoming`) under the
        policy of the caller's AE title; its findings go with the row (:meth:`_alongside`)."""
        if self.validation is None:
            return NOT_VALIDATED
        return self.validation.check_incoming(header, caller.ae_title or None, origin, source, self.blobs)

    def _decide(
        self,
        header: InstanceHeader,
        existing: InstanceRow | None,
        content: str,
        incoming: Incoming,
        *,
        may_replace: bool = True,
    ) -> Decision:
        """The one duplicate decision (:meth:`DuplicateJudge.decide`) under this service's policy."""
        return self.duplicates.decide(
            header, existing, content, incoming, self.policy, may_replace=may_replace
        )

    def _act(
        self,
        decision: Decision,
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
        if decision.verdict is Verdict.NEW:
            return None
        if decision.verdict is Verdict.PRESENT:
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

    def _alongside(self, prepared: Prepared, caller: Caller, blob_key: str = "") -> Alongside | None:
        """The labels, findings and study link to write in the row's transaction (None: nothing)."""
        header = prepared.header
        link = None if self.linker is None else self.linker(header, prepared.data, blob_key)
        labels: tuple[str, ...] = ()
        if self.labeller is not None:
            uid = header.study_instance_uid
            labels = tuple(
                sorted(label for label in self.labeller(caller, header) if (uid, label) not in self._labelled)
            )
        if not labels and prepared.validated.record is None and link is None and prepared.rejection is None:
            return None
        return Alongside(labels, prepared.validated.record, link, prepared.rejection)

    def _prepare(
        self,
        data: bytes,
        origin: InstanceOrigin,
        caller: Caller,
        expect_instance_uid: str | None = None,
        expect_study_uid: str | None = None,
    ) -> Prepared | StoreResult:
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
        # What is held under the UID and whether it was rejected: one read of the index.
        if self.rejections is not None:
            existing, rejected = self.index.get_instance_and_rejection(header.sop_instance_uid)
            self.rejections.refuse(header, rejected)
            rejection = self._note(header, caller, data)
        else:
            existing, rejection = self.index.get_instance(header.sop_instance_uid), None
        validated = self._validate(header, caller, origin, data)
        # Duplicates are judged on the data set alone: the File Meta differs
        # between senders (Source AE Title, implementation UIDs) for the same object.
        content = content_digest(data)
        decision = self._decide(header, existing, content, data)
        answered = self._act(decision, header, origin, caller, data, len(data), validated.warning)
        if answered is not None:
            return answered
        return self._compressed(
            Prepared(data, header, content, len(data), validated, rejection, absent=existing is None)
        )

    def _compressed(self, prepared: Prepared, received_sha256: str = "") -> Prepared:
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
        prepared: Prepared,
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
                Decision(Verdict.REFUSED, other_content(header, "the held copy is not known"), True)
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
        if prepared.rejection is not None and self.rejections is not None:
            self.rejections.applied(prepared.rejection, caller)
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

    def _rejection(self, header: InstanceHeader, caller: Caller, source: Incoming) -> RejectionWrite | None:
        """Refuse an object of a rejected instance; the rejections of a rejection note."""
        if self.rejections is None:
            return None
        self.rejections.refuse_rejected(header)
        return self._note(header, caller, source)

    def _note(self, header: InstanceHeader, caller: Caller, source: Incoming) -> RejectionWrite | None:
        """The rejections ``header``'s object makes, when it is a rejection note."""
        if self.rejections is None or not self.rejections.may_be_note(header):
            return None
        if isinstance(source, BlobRef):
            with mapped_blob(self.blobs, source.key) as data:
                return self.rejections.rejection_of(header, bytes(data), caller)
        return self.rejections.rejection_of(header, source, caller)

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
        self.index.record_conflict(kind, header, header.sop_instance_uid, blob, caller.ae_title, str(exc))

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

    def _index_one(
        self, prepared: Prepared, blob: BlobInfo, origin: InstanceOrigin, caller: Caller
    ) -> StoreResult:
        """Index one durable blob with its labels and findings (one transaction)."""
        try:
            added: AddOutcome | BaseException = self.index.add_instance(
                prepared.header,
                blob,
                prepared.content_sha256,
                caller.ae_title,
                overwrite=self.policy is DuplicatePolicy.OVERWRITE,
                alongside=self._alongside(prepared, caller, blob.key),
                absent=prepared.absent,
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
