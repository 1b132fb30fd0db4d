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
2. the one validation step
   (:meth:`~dicomhub.services.validation.ValidationService.check_incoming`):
   IOD validation under the ``warn`` and ``reject`` policies, for every
   source alike;
3. the one duplicate decision
   (:meth:`~dicomhub.services.duplicates.DuplicateJudge.decide`): the same object,
   whatever its encoding, is already present; other content goes to the
   duplicate policy;
4. write the bytes as received under a fresh opaque key and fsync them;
5. index them in one committed transaction, which also writes the study's
   labels and the object's validation findings
   (:class:`~dicomhub.index.repository.Alongside`): all of them or none;
6. only then report success.

A blob written in step 4 whose step 5 never happened is an orphan that
``dicomhub check`` finds; a row without its blob cannot exist.

The steps every entry shares are in :mod:`~dicomhub.services.ingest.steps`,
the batch path (:meth:`IngestService.store_many`) in
:mod:`~dicomhub.services.ingest.batch`; this module holds the entries and the
paths of one object.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
from collections.abc import Iterator
from typing import cast

from dicomhub.errors import (
    Conflict,
    DicomhubError,
    DuplicateInstance,
    InvalidIdentifier,
    InvalidRequest,
    PatientMismatch,
)
from dicomhub.index.repository import AddResult
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
from dicomhub.model.policy import DuplicatePolicy
from dicomhub.services.blobfiles import mapped_blob
from dicomhub.services.contentdigest import content_digest
from dicomhub.services.duplicates import BlobRef
from dicomhub.services.ingest.batch import BatchIngest
from dicomhub.services.ingest.steps import Prepared
from dicomhub.storage.base import BlobInfo

__all__ = ["DuplicatePolicy", "IngestService", "StoreOutcome", "StoreResult"]

_CHUNK = 4 << 20

LOGGER = logging.getLogger("dicomhub.ingest")


class IngestService(BatchIngest):
    """Stores objects durably and indexes them, under a duplicate policy.

    The one entry is :meth:`store` (:meth:`store_many` for objects acknowledged
    together); the constructor is :class:`~dicomhub.services.ingest.steps.IngestSteps`'.
    """

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
            rejection = self._rejection(header, caller, BlobRef(blob.key))
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
        prepared = Prepared(b"", header, digest, blob.size, validated, rejection, absent=existing is None)
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
