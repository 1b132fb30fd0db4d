"""DICOMweb STOW-RS: ``POST /studies`` and ``POST /studies/{study}``.

The request body (``multipart/related; type="application/dicom"``) is read as
a stream into parts (see :mod:`.upload`: memory while small, temporary files
under ``<data_dir>/tmp`` otherwise) and checked to be complete before
anything is stored: a malformed or truncated body stores nothing. Each part
then goes through the one ingest path in a worker thread, a few at a time so
that concurrent stores share index commits; large parts are memory-mapped
rather than read.

Response status (PS3.18 10.5.3): 200 when every instance was stored without
warning, 202 when some were stored and others failed or were stored with
warnings, 409 when none was stored; 400 for a malformed body, 415 for a
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
InvalidRequest (not Part 10, truncated),    0xC000  Cannot understand
a part that is not ``application/dicom``
StorageError, IndexUnavailable              0xA700  Out of resources
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

import contextlib
import io
import json
import logging
import mmap
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast
from xml.sax.saxutils import escape, quoteattr

import pydicom
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomhub.config import Settings
from dicomhub.errors import (
    Conflict,
    DicomhubError,
    DuplicateInstance,
    IndexUnavailable,
    InvalidIdentifier,
    InvalidRequest,
    PatientMismatch,
    StorageError,
)
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.identifiers import is_valid_uid, require_uid
from dicomhub.services.archive import Archive
from dicomhub.services.ingest import StoreResult
from dicomhub.web.dicomweb.upload import ReceivedPart, parse_media_type, receive_parts
from dicomhub.web.errors import NotAcceptable, UnsupportedMediaType

__all__ = [
    "CANNOT_UNDERSTAND",
    "DATASET_DOES_NOT_MATCH",
    "DUPLICATE_SOP_INSTANCE",
    "OUT_OF_RESOURCES",
    "PROCESSING_FAILURE",
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

_FAILURE_REASONS: tuple[tuple[type[Exception], int], ...] = (
    (DuplicateInstance, DUPLICATE_SOP_INSTANCE),
    (PatientMismatch, DATASET_DOES_NOT_MATCH),
    (Conflict, DUPLICATE_SOP_INSTANCE),
    (InvalidIdentifier, DATASET_DOES_NOT_MATCH),
    (InvalidRequest, CANNOT_UNDERSTAND),
    (StorageError, OUT_OF_RESOURCES),
    (IndexUnavailable, OUT_OF_RESOURCES),
)

# Parts ingested at the same time: enough for concurrent stores to share
# group commits, few enough not to map many large parts at once.
# Parts acknowledged together share one flush and one index transaction.
_BATCH_PARTS = 64
_BATCH_BYTES = 32 << 20  # mapped pages count in the process RSS: keep them few
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


def _dicomweb_base(request: Request) -> str:
    url = request.url
    path = url.path
    return f"{url.scheme}://{url.netloc}{path[: path.rfind('/studies')]}"


def _header_text(text: str) -> str:
    clean = " ".join(text.split()).replace('"', "'").replace("\\", "/")
    return clean.encode("latin-1", "replace").decode("latin-1")[:300]


# ------------------------------------------------------------------ the service


def _sop_uids(part: ReceivedPart) -> tuple[str, str]:
    """SOP Class and Instance UID of a part that failed, when its header says (else "")."""
    source: str | io.BytesIO = str(part.path) if part.path is not None else io.BytesIO(part.read())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(
                source,
                stop_before_pixels=True,
                force=True,
                specific_tags=[0x00080016, 0x00080018],
            )
            meta = getattr(ds, "file_meta", None) or {}
            sop_class = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
            sop_instance = ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID")
    except Exception:  # anything unreadable: the item just carries no UIDs
        return "", ""
    return (
        str(sop_class) if is_valid_uid(str(sop_class or "")) else "",
        str(sop_instance) if is_valid_uid(str(sop_instance or "")) else "",
    )


_PREAMBLE = b"\x00" * 128 + b"DICM"
_META_GROUP_START = b"\x02\x00"  # (0002,xxxx) in explicit VR little endian


def _add_missing_preamble(part: ReceivedPart) -> None:
    """Give a part that starts with its File Meta group the preamble and ``DICM`` prefix.

    pydicom 3's ``dcmwrite`` (used by dicomweb-client's ``store_instances``)
    writes no preamble for a data set read or built without one. The File Meta
    group is what identifies the object; the 132 bytes in front of it carry
    nothing, so they are added rather than the part refused.
    """
    if part.memory is not None:
        head = bytes(part.memory[:132])
        if head[128:132] != b"DICM" and head.startswith(_META_GROUP_START):
            part.memory[:0] = _PREAMBLE
            part.size += len(_PREAMBLE)
        return
    if part.path is None:
        return
    with open(part.path, "rb") as src:
        head = src.read(132)
        if head[128:132] == b"DICM" or not head.startswith(_META_GROUP_START):
            return
        fixed = part.path.with_name(part.path.name + ".p10")
        with open(fixed, "wb") as dst:
            dst.write(_PREAMBLE)
            src.seek(0)
            shutil.copyfileobj(src, dst, 1024 * 1024)
    fixed.replace(part.path)
    part.size += len(_PREAMBLE)


class StowService:
    """The STOW-RS endpoints of one archive."""

    def __init__(self, archive: Archive, settings: Settings) -> None:
        self.archive = archive
        self.spool_root = settings.data_dir / "tmp"

    def remove_leftovers(self) -> None:
        """Remove spool folders a previous (killed) server left behind."""
        if not self.spool_root.is_dir():
            return
        for leftover in self.spool_root.glob("stow-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def _spool_dir(self) -> Path:
        return self.spool_root

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
        caller = Caller(Channel.HTTP, "", request.client.host if request.client else "")
        body = await receive_parts(request.stream(), boundary, self._spool_dir)
        try:
            outcomes: list[InstanceOutcome] = []
            for batch in _batches(body.parts):
                outcomes += await run_in_threadpool(
                    self._ingest_batch, batch, caller, study_instance_uid
                )
        finally:
            body.discard()
        base = _dicomweb_base(request)
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

    def _ingest_batch(
        self, parts: Sequence[ReceivedPart], caller: Caller, study_instance_uid: str | None
    ) -> list[InstanceOutcome]:
        """Store a batch of parts (in a worker thread) with one shared flush; never raises.

        Every part is acknowledged only after the whole batch is durable, so
        the blobs share one file-system flush and the index one transaction.
        """
        outcomes: dict[int, InstanceOutcome] = {}
        accepted: list[ReceivedPart] = []
        with contextlib.ExitStack() as stack:
            data: list[bytes] = []
            for part in parts:
                if part.content_type not in ("", DICOM):
                    outcomes[part.index] = self._failed(
                        part,
                        CANNOT_UNDERSTAND,
                        f"part {part.index + 1}: media type {part.content_type} is not {DICOM}",
                    )
                    continue
                try:
                    _add_missing_preamble(part)
                    data.append(_open_part(part, stack))
                except (OSError, ValueError) as exc:
                    outcomes[part.index] = self._failed(
                        part, CANNOT_UNDERSTAND, f"part {part.index + 1}: unreadable: {exc}"
                    )
                    continue
                accepted.append(part)
            try:
                results = self.archive.ingest.store_many(
                    data, caller, study_instance_uid=study_instance_uid
                )
            except Exception as exc:
                LOGGER.exception("STOW-RS: unexpected failure")
                results = [exc] * len(accepted)  # type: ignore[list-item]
            for part, result in zip(accepted, results, strict=True):
                if isinstance(result, DicomhubError):
                    reason = failure_reason(result)
                    LOGGER.warning(
                        "STOW-RS part %d refused (0x%04X): %s", part.index + 1, reason, result
                    )
                    outcomes[part.index] = self._failed(part, reason, f"part {part.index + 1}: {result}")
                elif isinstance(result, BaseException):
                    outcomes[part.index] = self._failed(
                        part, PROCESSING_FAILURE, f"part {part.index + 1}: internal error {result}"
                    )
                else:
                    outcomes[part.index] = _stored(result)
        return [outcomes[part.index] for part in parts]

    @staticmethod
    def _failed(part: ReceivedPart, reason: int, message: str) -> InstanceOutcome:
        sop_class, sop_instance = _sop_uids(part)
        return InstanceOutcome(sop_class, sop_instance, False, reason, message=message)


def _open_part(part: ReceivedPart, stack: contextlib.ExitStack) -> bytes:
    """The part's bytes: memory-mapped from its spool file, or as received."""
    if part.path is None:
        return part.read()
    fh = stack.enter_context(open(part.path, "rb"))
    if os.fstat(fh.fileno()).st_size == 0:
        return b""
    mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    stack.callback(_close_map, mapped)
    # A read-only mapping of a file nobody else writes: bytes in all but type.
    return cast(bytes, mapped)


def _close_map(mapped: mmap.mmap) -> None:
    try:
        mapped.close()
    except BufferError:
        pass  # a view is still referenced (a traceback in flight); it goes with it


def _batches(parts: Sequence[ReceivedPart]) -> Iterator[list[ReceivedPart]]:
    """Parts in groups that share one flush: bounded in count and in bytes."""
    batch: list[ReceivedPart] = []
    size = 0
    for part in parts:
        batch.append(part)
        size += part.size
        if len(batch) >= _BATCH_PARTS or size >= _BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _stored(result: StoreResult) -> InstanceOutcome:
    return InstanceOutcome(
        result.sop_class_uid,
        result.sop_instance_uid,
        True,
        None,
        result.study_instance_uid,
        result.series_instance_uid,
    )


def routes(archive: Archive, settings: Settings) -> list[BaseRoute]:
    """``POST /studies`` and ``POST /studies/{study}`` (relative to the DICOMweb root)."""
    service = StowService(archive, settings)
    with contextlib.suppress(OSError):
        service.remove_leftovers()
    return [
        Route("/studies", service.store_instances, methods=["POST"]),
        Route("/studies/{study}", service.store_study_instances, methods=["POST"]),
    ]
