"""The one store path: C-STORE, ``dicomhub import``, STOW-RS and migration.

Order of work, so that a success is never a lie and a crash never leaves a
visible half object:

1. parse the header only and validate the minimum (identifying UIDs);
2. write the bytes as received under a fresh opaque key and fsync them;
3. index them in one committed transaction;
4. only then report success.

A blob written in step 2 whose step 3 never happened is an orphan that
``dicomhub check`` finds; a row without its blob cannot exist.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import mmap
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

from dicomhub import codec
from dicomhub.errors import (
    Conflict,
    DicomhubError,
    DuplicateInstance,
    InvalidIdentifier,
    InvalidRequest,
    PatientMismatch,
    TranscodeError,
)
from dicomhub.index.repository import AddOutcome, AddResult, IndexRepository
from dicomhub.model.caller import Caller
from dicomhub.model.extract import extract_part10
from dicomhub.model.identifiers import require_uid
from dicomhub.model.part10 import file_meta_header, has_part10_header
from dicomhub.model.policy import CompressionRule, DuplicatePolicy
from dicomhub.model.records import InstanceHeader
from dicomhub.model.structure import dataset_offset
from dicomhub.storage.base import BlobInfo, BlobStore

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


@dataclass(frozen=True, slots=True)
class _Prepared:
    """An object that passed validation and the duplicate check, not yet written."""

    data: bytes
    header: InstanceHeader
    content_sha256: str
    size: int  # of the object as received


class IngestService:
    """Stores objects durably and indexes them, under a duplicate policy."""

    def __init__(
        self,
        index: IndexRepository,
        blobs: BlobStore,
        policy: DuplicatePolicy = DuplicatePolicy.KEEP,
        compression: Sequence[tuple[CompressionRule, str]] = (),
    ) -> None:
        """
        Parameters
        ----------
        compression : sequence of (CompressionRule, str)
            Compression at rest: each rule with the transfer syntax UID it
            resolves to; the first rule matching an object decides.
        """
        self.index = index
        self.blobs = blobs
        self.policy = policy
        self.compression = tuple(compression)

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

        blob = self.blobs.put_stream(self.blobs.new_key(), chunks())
        try:
            header = self._header_of_blob(blob.key)
            if header.sop_instance_uid != sop_instance_uid:
                raise InvalidIdentifier(
                    "the data set's SOP Instance UID differs from the request's Affected SOP Instance UID"
                )
            digest = content.hexdigest()
            existing = self.index.get_instance(header.sop_instance_uid)
            if existing is not None and existing.content_sha256 == digest:
                self._discard(blob.key)
                if self.policy is DuplicatePolicy.REJECT:
                    raise DuplicateInstance(
                        f"SOP Instance {header.sop_instance_uid} is already stored (policy: reject)"
                    )
                return self._result(StoreOutcome.ALREADY_PRESENT, header, blob.size)
            if existing is not None and self.policy is not DuplicatePolicy.OVERWRITE:
                refusal = DuplicateInstance(
                    f"SOP Instance {header.sop_instance_uid} is already stored with other content"
                )
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
        with self.blobs.open(key) as fh:
            try:
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError, AttributeError):
                return extract_part10(fh.read())
        try:
            # The one-pass scan reads element headers and skips values by
            # their length, so a large Pixel Data is never paged in.
            return extract_part10(cast(bytes, mapped))
        finally:
            try:
                mapped.close()
            except BufferError:
                pass

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
        blob = self.blobs.put(self.blobs.new_key(), prepared.data)
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
        items: Sequence[bytes],
        caller: Caller,
        *,
        study_instance_uid: str | None = None,
    ) -> list[StoreResult | DicomhubError]:
        """Store several Part 10 objects that are acknowledged together (STOW-RS).

        Same rules and outcomes as :meth:`store_part10`, item by item, but the
        durability work is shared: the blobs are written, then flushed to
        disk at once, then indexed in one transaction. Nothing is reported
        stored before all of that has happened.
        """
        results: list[StoreResult | DicomhubError | None] = [None] * len(items)
        pending: list[tuple[int, _Prepared]] = []
        for i, data in enumerate(items):
            try:
                if not has_part10_header(data):
                    raise InvalidRequest("not a DICOM Part 10 file (no DICM prefix)")
                prepared = self._prepare(data, caller, expect_study_uid=study_instance_uid)
            except DicomhubError as exc:
                results[i] = exc
                continue
            if isinstance(prepared, StoreResult):
                results[i] = prepared
            else:
                pending.append((i, prepared))
        written: list[tuple[int, _Prepared, BlobInfo]] = []
        for i, prepared in pending:
            try:
                blob = self.blobs.put(self.blobs.new_key(), prepared.data, durable=False)
            except DicomhubError as exc:
                results[i] = exc
                continue
            written.append((i, prepared, blob))
        if written:
            try:
                self.blobs.sync()
            except DicomhubError as exc:
                for i, _prepared, blob in written:
                    self._discard(blob.key)
                    results[i] = exc
                written = []
        outcomes = self.index.add_instances(
            [
                (p.header, blob, p.content_sha256, caller.ae_title)
                for _i, p, blob in written
            ],
            overwrite=self.policy is DuplicatePolicy.OVERWRITE,
        )
        for (i, prepared, blob), added in zip(written, outcomes, strict=True):
            try:
                results[i] = self._finish(prepared, blob, added, caller)
            except DicomhubError as exc:
                results[i] = exc
        return [r if r is not None else InvalidRequest("not processed") for r in results]

    def _prepare(
        self,
        data: bytes,
        caller: Caller,
        expect_instance_uid: str | None = None,
        expect_study_uid: str | None = None,
    ) -> _Prepared | StoreResult:
        """Validate, digest and check for duplicates: what to store, or the answer already."""
        header = extract_part10(data)
        if expect_instance_uid is not None and header.sop_instance_uid != expect_instance_uid:
            raise InvalidIdentifier(
                "the data set's SOP Instance UID differs from the request's Affected SOP Instance UID"
            )
        if expect_study_uid is not None and header.study_instance_uid != expect_study_uid:
            raise InvalidIdentifier(
                f"SOP Instance {header.sop_instance_uid} belongs to study "
                f"{header.study_instance_uid}, not to the target study {expect_study_uid}"
            )
        # Duplicates are judged on the data set alone: the File Meta differs
        # between senders (Source AE Title, implementation UIDs) for the same object.
        content = hashlib.sha256(memoryview(data)[dataset_offset(data) :]).hexdigest()
        existing = self.index.get_instance(header.sop_instance_uid)
        if existing is not None:
            if existing.content_sha256 == content:
                if self.policy is DuplicatePolicy.REJECT:
                    raise DuplicateInstance(
                        f"SOP Instance {header.sop_instance_uid} is already stored (policy: reject)"
                    )
                return self._result(StoreOutcome.ALREADY_PRESENT, header, len(data))
            if self.policy is not DuplicatePolicy.OVERWRITE:
                self._quarantine(data, header, caller, "duplicate-different-content")
        return self._compressed(_Prepared(data, header, content, len(data)))

    def _compressed(self, prepared: _Prepared) -> _Prepared:
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
            "original_sha256": hashlib.sha256(prepared.data).hexdigest(),
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
            if added.existing is not None and added.existing.content_sha256 == content:
                self._discard(blob.key)
                if self.policy is DuplicatePolicy.REJECT:
                    raise DuplicateInstance(
                        f"SOP Instance {header.sop_instance_uid} is already stored (policy: reject)"
                    )
                return self._result(StoreOutcome.ALREADY_PRESENT, header, prepared.size)
            refusal = DuplicateInstance(
                f"SOP Instance {header.sop_instance_uid} is already stored with other content"
            )
            self._record(refusal, blob, header, caller, "duplicate-different-content")
            raise refusal
        if added.replaced_blob_key:
            self._discard(added.replaced_blob_key)
        outcome = (
            StoreOutcome.REPLACED if added.result is AddResult.REPLACED else StoreOutcome.STORED
        )
        return self._result(outcome, header, prepared.size)

    def _quarantine(self, data: bytes, header: InstanceHeader, caller: Caller, kind: str) -> None:
        blob = self.blobs.put(self.blobs.new_key(), data)
        exc = DuplicateInstance(
            f"SOP Instance {header.sop_instance_uid} is already stored with other content"
            if kind == "duplicate-different-content"
            else f"SOP Instance {header.sop_instance_uid} is already stored"
        )
        self._record(exc, blob, header, caller, kind)
        raise exc

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

    def _discard(self, key: str) -> None:
        try:
            self.blobs.delete(key)
        except Exception:  # best effort: an orphan is found by `dicomhub check`
            LOGGER.exception("could not remove blob %s", key)

    @staticmethod
    def _result(outcome: StoreOutcome, header: InstanceHeader, size: int) -> StoreResult:
        return StoreResult(
            outcome=outcome,
            sop_class_uid=header.sop_class_uid,
            sop_instance_uid=header.sop_instance_uid,
            study_instance_uid=header.study_instance_uid,
            size=size,
            series_instance_uid=header.series_instance_uid,
        )
