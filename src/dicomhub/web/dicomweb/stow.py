"""DICOMweb STOW-RS: ``POST /studies`` and ``POST /studies/{study}``.

The request body (``multipart/related; type="application/dicom"``) is
streamed: the event loop receives it and hands it through a bounded
:class:`~.upload.BodyPipe` to a worker thread, which parses it
(:class:`~.upload.MultipartReader`) and passes each part, chunk by chunk, to
the one ingest path (``IngestService.store_many``). That writes each part
straight into its blob as it arrives (its digests are computed from the blob
after the answer: :mod:`dicomhub.services.contentdigest`), and reads its
header back while the next part arrives; once the body is complete and well
formed, one flush makes every blob durable and the parts are indexed a batch
per transaction. A malformed or truncated body stores nothing: the
blobs written for it are removed. Memory stays at a few megabytes whatever
the size of the parts, plus a few kB per part (its first bytes, kept to name
it should it fail, and the outcome).

Response status (PS3.18 10.5.3): 200 when every instance was stored without
warning, 202 when some were stored and others failed or were stored with
warnings, 409 when none was stored; but when none was stored only because the
archive is out of resources (the failures are all 0xA700), 507 Insufficient
Storage for a full blob store and 503 Service Unavailable otherwise (the
index or the object store cannot be reached), with the same body: the
request may succeed unchanged later, unlike a conflict. 400 for a malformed body, 415 for a
Content-Type other than ``multipart/related`` with ``application/dicom``
parts, 406 when the Accept header allows neither DICOM JSON nor XML.

Failure reasons, from the ingest errors (PS3.18 10.5.3, PS3.4 B.2.3, PS3.7 C):

==========================================  ======  ==============================
error                                       reason  meaning
==========================================  ======  ==============================
DuplicateInstance, other Conflict           0x0111  Duplicate SOP Instance (same
                                                    UID held with other content,
                                                    or refused by policy)
PatientMismatch                             0xA900  Data set does not match (its
                                                    study is held under another
                                                    patient)
InvalidIdentifier, study mismatch on        0xA900  Data set does not match
``POST /studies/{study}``
SOPClassNotSupported (a SOP class that     0x0122  Referenced SOP Class not
is not storable here)                               supported
InvalidRequest (not Part 10, truncated),    0xC000  Cannot understand
a part that is not ``application/dicom``
StorageError, IndexUnavailable              0xA700  Out of resources
Forbidden (no STORE grant for the study)    0x0124  Refused: not authorized
RejectedObject (its instance was rejected   0xA771  Subsequent occurrence of a
by a rejection note)                                rejected object (IHE IOCM)
RejectionFailed (a rejection note           0xA772  Rejection failed: no such
referencing an instance not held)                   instance (IHE IOCM)
anything else (logged with its traceback)   0x0110  Processing failure
==========================================  ======  ==============================

An instance already held with the same content is reported as stored (the
keep policy makes a repeated store a no-op). No warning reason arises today
(dicomhub keeps the bytes as received, so nothing is coerced); the response
builder supports them. The text of each failure goes to the server log and,
for the first few, to ``Warning: 299`` response headers.

``application/dicom+json`` / ``+xml`` metadata with bulk data parts (PS3.18
10.5.1.2.2) is not supported (415).

References
----------
PS3.18 Section 10.5 (Store Transaction), 8.6 (multipart payloads), F.2
(DICOM JSON), PS3.19 A.1 (Native DICOM Model).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final
from xml.sax.saxutils import escape, quoteattr

import anyio
import anyio.to_thread
import pydicom
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomhub.config import Settings
from dicomhub.errors import (
    Conflict,
    DicomhubError,
    DoesNotMatchIOD,
    DuplicateInstance,
    IndexUnavailable,
    InsufficientStorage,
    InvalidIdentifier,
    InvalidRequest,
    PatientMismatch,
    RefusedByPlugin,
    RejectedObject,
    RejectionFailed,
    SOPClassNotSupported,
    StorageError,
)
from dicomhub.model.access import Action
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditOutcome
from dicomhub.model.caller import Caller
from dicomhub.model.identifiers import is_valid_uid, require_uid
from dicomhub.model.ingest import InstanceOrigin, StoreResult
from dicomhub.model.structure import dataset_offset
from dicomhub.services.access import Forbidden
from dicomhub.services.archive import Archive
from dicomhub.telemetry.metrics import count_backend_error
from dicomhub.web.auth import audit, caller_of, outcome_of
from dicomhub.web.dicomweb.upload import BodyInterrupted, BodyPipe, MultipartReader, parse_media_type
from dicomhub.web.dicomweb.urls import dicomweb_base
from dicomhub.web.errors import NotAcceptable, UnsupportedMediaType

__all__ = [
    "CANNOT_UNDERSTAND",
    "DATASET_DOES_NOT_MATCH",
    "DUPLICATE_SOP_INSTANCE",
    "OUT_OF_RESOURCES",
    "PROCESSING_FAILURE",
    "SOP_CLASS_NOT_SUPPORTED",
    "failure_reason",
    "routes",
    "store_response_json",
    "store_response_xml",
]

LOGGER = logging.getLogger("dicomhub.web.stow")

DICOM: Final = "application/dicom"
DICOM_JSON: Final = "application/dicom+json"
DICOM_XML: Final = "application/dicom+xml"
_NATIVE_DICOM_NAMESPACE: Final = "http://dicom.nema.org/PS3.19/models/NativeDICOM"

OUT_OF_RESOURCES: Final = 0xA700
DATASET_DOES_NOT_MATCH: Final = 0xA900
CANNOT_UNDERSTAND: Final = 0xC000
DUPLICATE_SOP_INSTANCE: Final = 0x0111
PROCESSING_FAILURE: Final = 0x0110
NOT_AUTHORIZED: Final = 0x0124  # PS3.4 Table GG.4-1: Refused: not authorized
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122  # PS3.7 C.5: Refused: SOP Class not supported
# IHE IOCM refusals: the C-STORE statuses of dcm4chee-arc, which its STOW-RS reports too.
SUBSEQUENT_OCCURRENCE_OF_REJECTED: Final = 0xA771
REJECTION_FAILED_NO_SUCH_INSTANCE: Final = 0xA772

_FAILURE_REASONS: tuple[tuple[type[Exception], int], ...] = (
    (Forbidden, NOT_AUTHORIZED),
    (RejectedObject, SUBSEQUENT_OCCURRENCE_OF_REJECTED),
    (RejectionFailed, REJECTION_FAILED_NO_SUCH_INSTANCE),
    (DuplicateInstance, DUPLICATE_SOP_INSTANCE),
    (PatientMismatch, DATASET_DOES_NOT_MATCH),
    (Conflict, DUPLICATE_SOP_INSTANCE),
    (InvalidIdentifier, DATASET_DOES_NOT_MATCH),
    (DoesNotMatchIOD, DATASET_DOES_NOT_MATCH),
    (SOPClassNotSupported, SOP_CLASS_NOT_SUPPORTED),
    (InvalidRequest, CANNOT_UNDERSTAND),
    (StorageError, OUT_OF_RESOURCES),
    (IndexUnavailable, OUT_OF_RESOURCES),
)

# Body bytes received but not yet parsed and written (the worker thread's backlog).
_PIPE_BYTES = 8 << 20
# Body bytes that must arrive before an upload gets its worker thread.
_START_BYTES = 64 << 10
# Uploads ingested at once (each on a thread); more wait, their sockets paused.
_UPLOAD_THREADS = 16
# Failure texts sent back as Warning headers (the rest are only logged).
_WARNING_HEADERS = 10

# Tags of the store response (PS3.18 Table 10.5.3-2), with VR and keyword.
_RETRIEVE_URL = (0x00081190, "UR", "RetrieveURL")
_FAILED_SOP_SEQUENCE = (0x00081198, "SQ", "FailedSOPSequence")
_REFERENCED_SOP_SEQUENCE = (0x00081199, "SQ", "ReferencedSOPSequence")
_REFERENCED_SOP_CLASS_UID = (0x00081150, "UI", "ReferencedSOPClassUID")
_REFERENCED_SOP_INSTANCE_UID = (0x00081155, "UI", "ReferencedSOPInstanceUID")
_WARNING_REASON = (0x00081196, "US", "WarningReason")
_FAILURE_REASON = (0x00081197, "US", "FailureReason")


def failure_reason(exc: Exception) -> int:
    """The STOW-RS Failure Reason for an error raised by the ingest service."""
    count_backend_error(exc, "http")
    if isinstance(exc, RefusedByPlugin):
        return exc.status
    for cls, reason in _FAILURE_REASONS:
        if isinstance(exc, cls):
            return reason
    return PROCESSING_FAILURE


@dataclass(frozen=True, slots=True)
class InstanceOutcome:
    """What became of one part: stored (``reason`` None or a warning) or failed."""

    sop_class_uid: str
    sop_instance_uid: str
    stored: bool
    reason: int | None = None
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    message: str = ""
    # Failed for want of space in the blob store (InsufficientStorage).
    no_space: bool = False


# ------------------------------------------------------------------ response body

_Element = tuple[tuple[int, str, str], Any]


def _instance_url(base: str, outcome: InstanceOutcome) -> str:
    return (
        f"{base}/studies/{outcome.study_instance_uid}/series/{outcome.series_instance_uid}"
        f"/instances/{outcome.sop_instance_uid}"
    )


def _response_elements(
    outcomes: Sequence[InstanceOutcome], base: str, study_instance_uid: str | None
) -> list[_Element]:
    stored = [o for o in outcomes if o.stored]
    failed = [o for o in outcomes if not o.stored]
    elements: list[_Element] = []
    studies = {o.study_instance_uid for o in stored}
    study = study_instance_uid or (next(iter(studies)) if len(studies) == 1 else None)
    if stored and study:
        elements.append((_RETRIEVE_URL, f"{base}/studies/{study}"))
    if failed:
        items = [
            [
                (_REFERENCED_SOP_CLASS_UID, o.sop_class_uid),
                (_REFERENCED_SOP_INSTANCE_UID, o.sop_instance_uid),
                (_FAILURE_REASON, o.reason if o.reason is not None else PROCESSING_FAILURE),
            ]
            for o in failed
        ]
        elements.append((_FAILED_SOP_SEQUENCE, items))
    if stored:
        ref_items: list[list[_Element]] = []
        for o in stored:
            item: list[_Element] = [
                (_REFERENCED_SOP_CLASS_UID, o.sop_class_uid),
                (_REFERENCED_SOP_INSTANCE_UID, o.sop_instance_uid),
                (_RETRIEVE_URL, _instance_url(base, o)),
            ]
            if o.reason is not None:
                item.append((_WARNING_REASON, o.reason))
            ref_items.append(item)
        elements.append((_REFERENCED_SOP_SEQUENCE, ref_items))
    return elements


def _json_element(vr: str, value: Any) -> dict[str, Any]:
    if vr == "SQ":
        return {"vr": vr, "Value": [_json_dataset(item) for item in value]}
    if value == "" or value is None:
        return {"vr": vr}
    return {"vr": vr, "Value": [value]}


def _json_dataset(elements: Sequence[_Element]) -> dict[str, Any]:
    return {f"{tag:08X}": _json_element(vr, value) for (tag, vr, _kw), value in elements}


def store_response_json(
    outcomes: Sequence[InstanceOutcome], base: str, study_instance_uid: str | None = None
) -> dict[str, Any]:
    """The store response as a DICOM JSON object (PS3.18 F.2)."""
    return _json_dataset(_response_elements(outcomes, base, study_instance_uid))


def _xml_dataset(elements: Sequence[_Element], out: list[str]) -> None:
    for (tag, vr, keyword), value in elements:
        out.append(f'<DicomAttribute tag="{tag:08X}" vr="{vr}" keyword="{keyword}">')
        if vr == "SQ":
            for number, item in enumerate(value, 1):
                out.append(f'<Item number="{number}">')
                _xml_dataset(item, out)
                out.append("</Item>")
        elif value != "" and value is not None:
            out.append(f'<Value number="1">{escape(str(value))}</Value>')
        out.append("</DicomAttribute>")


def store_response_xml(
    outcomes: Sequence[InstanceOutcome], base: str, study_instance_uid: str | None = None
) -> bytes:
    """The store response in the Native DICOM Model (PS3.19 A.1)."""
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        f"<NativeDicomModel xmlns={quoteattr(_NATIVE_DICOM_NAMESPACE)}>",
    ]
    _xml_dataset(_response_elements(outcomes, base, study_instance_uid), out)
    out.append("</NativeDicomModel>\n")
    return "".join(out).encode("utf-8")


def _http_status(outcomes: Sequence[InstanceOutcome]) -> int:
    stored = sum(1 for o in outcomes if o.stored)
    if stored == 0:
        if outcomes and all(o.reason == OUT_OF_RESOURCES for o in outcomes):
            # Nothing is wrong with the request: the same one may succeed later.
            return 507 if any(o.no_space for o in outcomes) else 503
        return 409
    if stored < len(outcomes) or any(o.reason is not None for o in outcomes):
        return 202
    return 200


# ------------------------------------------------------------------ request headers


def _boundary(content_type: str) -> str:
    media_type, params = parse_media_type(content_type)
    if media_type != "multipart/related":
        raise UnsupportedMediaType(
            'STOW-RS takes multipart/related; type="application/dicom" bodies, '
            f"not {media_type or 'a body without Content-Type'}"
        )
    root_type = params.get("type")
    if root_type is not None and parse_media_type(root_type)[0] != DICOM:
        raise UnsupportedMediaType(
            f"multipart/related of {root_type!r}: only application/dicom parts are supported "
            "(DICOM JSON/XML metadata with bulk data is not)"
        )
    boundary = params.get("boundary", "")
    if not boundary:
        raise InvalidRequest("the multipart/related Content-Type has no boundary parameter")
    return boundary


_JSON_TYPES = frozenset({DICOM_JSON, "application/json", "application/*", "*/*"})
_XML_TYPES = frozenset({DICOM_XML, "application/xml"})


def _response_media_type(accept: str) -> str:
    """DICOM JSON unless the Accept header prefers DICOM XML (q-values honoured)."""
    if not accept.strip():
        return DICOM_JSON
    best: str | None = None
    best_q = 0.0
    for item in accept.split(","):
        media_type, params = parse_media_type(item)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        if media_type in _JSON_TYPES:
            candidate = DICOM_JSON
        elif media_type in _XML_TYPES:
            candidate = DICOM_XML
        else:
            continue
        exact = media_type in (DICOM_JSON, DICOM_XML)
        if q > best_q or (q == best_q and q > 0 and exact and best != candidate):
            best, best_q = candidate, q
    if best is None:
        raise NotAcceptable("STOW-RS responds with application/dicom+json or application/dicom+xml")
    return best


def _header_text(text: str) -> str:
    clean = " ".join(text.split()).replace('"', "'").replace("\\", "/")
    return clean.encode("latin-1", "replace").decode("latin-1")[:300]


# ------------------------------------------------------------------ the service


def _sop_uids(head: bytes) -> tuple[str, str]:
    """SOP Class and Instance UID of a part that failed, when its first bytes say (else "")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = _read_head(head, specific_tags=[0x00080016, 0x00080018])
        except Exception:  # a head cut inside an element: its File Meta may still say
            try:
                ds = _read_head(head[: dataset_offset(head)])
            except Exception:  # anything unreadable: the item just carries no UIDs
                return "", ""
        meta = getattr(ds, "file_meta", None) or {}
        sop_class = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
        sop_instance = ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID")
    return (
        str(sop_class) if is_valid_uid(str(sop_class or "")) else "",
        str(sop_instance) if is_valid_uid(str(sop_instance or "")) else "",
    )


def _read_head(data: bytes, specific_tags: list[int] | None = None) -> pydicom.Dataset:
    return pydicom.dcmread(
        io.BytesIO(data), stop_before_pixels=True, force=True, specific_tags=specific_tags
    )


_PREAMBLE = b"\x00" * 128 + b"DICM"
_META_GROUP_START = b"\x02\x00"  # (0002,xxxx) in explicit VR little endian
# The first bytes of each part are kept until the request is answered, to name
# the SOP Class and Instance of a part that fails (they sit in its File Meta
# group and at the start of its data set).
_HEAD_BYTES = 2048


@dataclass(slots=True)
class _Part:
    """What the response needs of one part: its place, media type and first bytes."""

    index: int
    content_type: str
    head: bytes = b""


def _dicom_chunks(chunks: Iterator[bytes | memoryview], part: _Part) -> Iterator[bytes | memoryview]:
    """A part's content, with the preamble and ``DICM`` added when it starts with its File Meta.

    pydicom 3's ``dcmwrite`` (used by dicomweb-client's ``store_instances``)
    writes no preamble for a data set read or built without one. The File Meta
    group is what identifies the object; the 132 bytes in front of it carry
    nothing, so they are added rather than the part refused. The part's first
    bytes are kept in ``part.head``.
    """
    first: list[bytes | memoryview] = []
    size = 0
    for chunk in chunks:
        first.append(chunk)
        size += len(chunk)
        if size >= _HEAD_BYTES:
            break
    start: bytes | memoryview = b"".join(first) if len(first) > 1 else (first[0] if first else b"")
    if bytes(start[128:132]) != b"DICM" and bytes(start[:2]) == _META_GROUP_START:
        part.head = _PREAMBLE + bytes(start[: _HEAD_BYTES - len(_PREAMBLE)])
        yield _PREAMBLE
    else:
        part.head = bytes(start[:_HEAD_BYTES])
    if start:
        yield start
    yield from chunks


def _head_of(chunks: Iterator[bytes | memoryview]) -> bytes:
    """The first bytes of a part that is not stored; the rest is skipped."""
    head = bytearray()
    for chunk in chunks:
        if len(head) < _HEAD_BYTES:
            head += chunk[: _HEAD_BYTES - len(head)]
    return bytes(head)


class StowService:
    """The STOW-RS endpoints of one archive."""

    def __init__(self, archive: Archive, settings: Settings) -> None:
        self.archive = archive
        self.spool_root = settings.data_dir / "tmp"
        # Uploads get threads of their own, not the shared pool's: uploads that
        # stall (slow clients) must not leave QIDO-RS and WADO-RS without a thread.
        self.upload_threads = anyio.CapacityLimiter(_UPLOAD_THREADS)
        self.public_base_url = settings.public_base_url

    def remove_leftovers(self) -> None:
        """Remove spool folders that servers of earlier versions left behind."""
        if not self.spool_root.is_dir():
            return
        for leftover in self.spool_root.glob("stow-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    async def store_instances(self, request: Request) -> Response:
        """``POST /studies``: store the instances of any studies."""
        return await self._store(request, None)

    async def store_study_instances(self, request: Request) -> Response:
        """``POST /studies/{study}``: store instances that all belong to one study."""
        study = require_uid(request.path_params["study"], "StudyInstanceUID")
        return await self._store(request, study)

    async def _store(self, request: Request, study_instance_uid: str | None) -> Response:
        boundary = _boundary(request.headers.get("content-type", ""))
        media_type = _response_media_type(request.headers.get("accept", ""))
        caller = caller_of(request)
        if not caller.access.may(Action.STORE):
            await run_in_threadpool(self._audit, caller, request, [], Forbidden("no STORE grant"))
            raise Forbidden(f"{caller.who} may not store")
        # The event loop receives the body; a worker thread parses it and writes
        # each part into its blob as it arrives, then flushes and indexes them
        # all. Receiving overlaps with parsing and writing.
        pipe = BodyPipe(_PIPE_BYTES)

        def start_worker() -> asyncio.Future[list[InstanceOutcome]]:
            return asyncio.ensure_future(
                anyio.to_thread.run_sync(
                    self._ingest_body, pipe, boundary, caller, study_instance_uid, limiter=self.upload_threads
                )
            )

        # The worker thread starts once _START_BYTES have arrived (or the whole body):
        # a client trickling its body holds no thread of the shared pool (which QIDO
        # and WADO need too) until the body deadlines of dicomhub.web.protocol end it.
        worker: asyncio.Future[list[InstanceOutcome]] | None = None
        received = 0
        try:
            async for chunk in request.stream():
                if not chunk:
                    continue
                received += len(chunk)
                if worker is None and received >= _START_BYTES:
                    worker = start_worker()
                if not await pipe.put(chunk):
                    break  # the worker stopped reading (a malformed body): it answers
        except BaseException as exc:
            pipe.fail(exc)
            if worker is not None:
                with contextlib.suppress(BaseException):
                    await worker  # it removes what it wrote
            raise
        if worker is None:
            worker = start_worker()
        pipe.close()
        try:
            outcomes = await worker
        except DicomhubError as exc:
            await run_in_threadpool(self._audit, caller, request, [], exc)
            raise
        try:
            await run_in_threadpool(self._audit, caller, request, outcomes, None)
        except DicomhubError as exc:
            # The instances are stored (or refused) whatever becomes of the audit record:
            # answering 503 now would tell the client that stored instances were not.
            LOGGER.error("STOW-RS: cannot record the audit event: %s", exc)
        base = dicomweb_base(request, self.public_base_url)
        if media_type == DICOM_XML:
            content = store_response_xml(outcomes, base, study_instance_uid)
        else:
            content = json.dumps(
                store_response_json(outcomes, base, study_instance_uid), separators=(",", ":")
            ).encode()
        failures = [o for o in outcomes if not o.stored]
        headers: dict[str, str] = {}
        warning_texts = [f'299 dicomhub "{_header_text(o.message)}"' for o in failures[:_WARNING_HEADERS]]
        if warning_texts:
            headers["Warning"] = ", ".join(warning_texts)
        if failures:
            LOGGER.info(
                "STOW-RS from %s: %d stored, %d failed",
                caller.address,
                len(outcomes) - len(failures),
                len(failures),
            )
        return Response(content, status_code=_http_status(outcomes), media_type=media_type, headers=headers)

    def _audit(
        self,
        caller: Caller,
        request: Request,
        outcomes: Sequence[InstanceOutcome],
        exc: DicomhubError | None,
    ) -> None:
        """The one STORE record of a request: the studies stored into, with their counts."""
        studies: dict[str, tuple[dict[str, None], int]] = {}
        for o in outcomes:
            if o.stored and o.study_instance_uid:
                series, count = studies.get(o.study_instance_uid, ({}, 0))
                series[o.series_instance_uid] = None
                studies[o.study_instance_uid] = (series, count + 1)
        stored = sum(1 for o in outcomes if o.stored)
        if exc is not None:
            outcome = outcome_of(exc)
        elif stored == len(outcomes):
            outcome = AuditOutcome.SUCCESS
        elif stored:
            outcome = AuditOutcome.MINOR_FAILURE
        elif any(o.reason == NOT_AUTHORIZED for o in outcomes):
            outcome = AuditOutcome.SERIOUS_FAILURE
        else:
            outcome = AuditOutcome.MAJOR_FAILURE
        audit(
            self.archive,
            caller,
            AuditAction.STORE,
            outcome,
            [AuditedStudy(uid, "", tuple(s for s in series if s), n) for uid, (series, n) in studies.items()],
            {
                "path": request.url.path[:256],
                "stored": stored,
                "failed": len(outcomes) - stored,
                "refused_not_authorized": sum(1 for o in outcomes if o.reason == NOT_AUTHORIZED),
            },
        )

    def _ingest_body(
        self, pipe: BodyPipe, boundary: str, caller: Caller, study_instance_uid: str | None
    ) -> list[InstanceOutcome]:
        """Read the body from ``pipe`` and store its parts (in a worker thread).

        Every part is acknowledged only after all of them are durable: the
        blobs share one file-system flush and the index a few transactions.

        Raises
        ------
        InvalidRequest
            For a malformed or truncated body: then nothing is stored.
        BodyInterrupted
            When the body stopped arriving: nothing is stored either.
        """
        parts: list[_Part] = []

        def dicom_parts() -> Iterator[Iterator[bytes | memoryview]]:
            for streamed in MultipartReader(pipe, boundary):
                part = _Part(streamed.index, streamed.content_type)
                parts.append(part)
                if part.content_type in ("", DICOM):
                    yield _dicom_chunks(streamed.chunks(), part)
                else:
                    part.head = _head_of(streamed.chunks())

        try:
            results: list[StoreResult | Exception] = self.archive.ingest.store_many(
                dicom_parts(),
                caller,
                study_instance_uid=study_instance_uid,
                origin=InstanceOrigin.stow_rs(caller.principal, caller.address or None),
            )
        except (InvalidRequest, BodyInterrupted):
            raise
        except Exception as exc:  # nothing was stored (store_many removed what it wrote)
            LOGGER.exception("STOW-RS: unexpected failure")
            results = [exc] * sum(1 for p in parts if p.content_type in ("", DICOM))
        finally:
            pipe.abandon()
        outcomes: list[InstanceOutcome] = []
        stored = iter(results)
        for part in parts:
            if part.content_type not in ("", DICOM):
                outcomes.append(
                    _failed(
                        part,
                        CANNOT_UNDERSTAND,
                        f"part {part.index + 1}: media type {part.content_type} is not {DICOM}",
                    )
                )
                continue
            result = next(stored)
            if isinstance(result, StoreResult):
                outcomes.append(_stored(result))
            elif isinstance(result, DicomhubError):
                reason = failure_reason(result)
                LOGGER.warning("STOW-RS part %d refused (0x%04X): %s", part.index + 1, reason, result)
                failed = _failed(part, reason, f"part {part.index + 1}: {result}")
                if isinstance(result, InsufficientStorage):
                    failed = dataclasses.replace(failed, no_space=True)
                outcomes.append(failed)
            else:
                outcomes.append(
                    _failed(part, PROCESSING_FAILURE, f"part {part.index + 1}: internal error {result}")
                )
        return outcomes


def _failed(part: _Part, reason: int, message: str) -> InstanceOutcome:
    sop_class, sop_instance = _sop_uids(part.head)
    return InstanceOutcome(sop_class, sop_instance, False, reason, message=message)


def _stored(result: StoreResult) -> InstanceOutcome:
    # 0xB007: stored, but the data set does not match its SOP Class (IOD validation, policy warn).
    return InstanceOutcome(
        result.sop_class_uid,
        result.sop_instance_uid,
        True,
        _DOES_NOT_MATCH_SOP_CLASS if result.warning else None,
        result.study_instance_uid,
        result.series_instance_uid,
        message=result.warning or "",
    )


_DOES_NOT_MATCH_SOP_CLASS: Final = 0xB007


def routes(archive: Archive, settings: Settings) -> list[BaseRoute]:
    """``POST /studies`` and ``POST /studies/{study}`` (relative to the DICOMweb root)."""
    service = StowService(archive, settings)
    with contextlib.suppress(OSError):
        service.remove_leftovers()
    return [
        Route("/studies", service.store_instances, methods=["POST"]),
        Route("/studies/{study}", service.store_study_instances, methods=["POST"]),
    ]
