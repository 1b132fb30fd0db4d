"""Header-only parsing of a Part 10 object into an :class:`InstanceHeader`.

Only the header is parsed (``stop_before_pixels``) and only the indexed
attributes are converted, because converting every element of a large header
costs more than the rest of the ingest path.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicomhub.errors import InvalidIdentifier, InvalidRequest
from dicomhub.model.attributes import INDEXED, Attribute
from dicomhub.model.identifiers import Level, require_uid
from dicomhub.model.records import InstanceHeader
from dicomhub.model.structure import InvalidVR, check_part10_complete, dataset_offset, scan_part10

__all__ = ["extract_header", "extract_part10", "person_name_key", "read_header"]

_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def read_header(data: bytes) -> Dataset:
    """Parse the header (everything before Pixel Data) of a Part 10 object.

    Raises
    ------
    InvalidRequest
        When the bytes are not a readable DICOM object.
    """
    try:
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, force=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError, struct.error) as exc:
        raise InvalidRequest(f"not a readable DICOM object: {exc}") from exc
    except Exception as exc:  # pydicom raises a wide variety on truncated input
        raise InvalidRequest(f"not a readable DICOM object: {type(exc).__name__}: {exc}") from exc
    return ds


def person_name_key(value: str | None) -> str | None:
    """The case-folded form of a PN value used for case-insensitive matching."""
    if value is None:
        return None
    return value.upper()


def _text(ds: Dataset, keyword: str) -> str | None:
    elem = ds.get(keyword)
    if elem is None or elem == "":
        return None if elem is None else ""
    if isinstance(elem, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in elem)
    return str(elem)


def _integer(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def extract_header(ds: Dataset) -> InstanceHeader:
    """Read the indexed attributes of ``ds`` and validate the minimum.

    Raises
    ------
    InvalidIdentifier
        When SOP Class, SOP Instance, Study or Series Instance UID is missing,
        longer than 64 characters or not a valid UID.
    """
    try:
        return _extract(ds)
    except InvalidIdentifier:
        raise
    except Exception as exc:  # a malformed value deep in the header
        raise InvalidRequest(f"unreadable header: {type(exc).__name__}: {exc}") from exc


def _extract(ds: Dataset) -> InstanceHeader:
    values: dict[str, Any] = {}
    for attr in INDEXED:
        values[attr.keyword] = _integer(ds, attr.keyword) if attr.integer else _text(ds, attr.keyword)
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else ""
    return _build(values, ts, _text(ds, "SpecificCharacterSet") or "")


def _build(values: dict[str, Any], ts: str, charset: str) -> InstanceHeader:
    for keyword in _REQUIRED_UIDS:
        values[keyword] = require_uid(values.get(keyword), keyword)
    by_level: dict[Level, dict[str, Any]] = {level: {} for level in Level}
    for attr in INDEXED:
        by_level[attr.level][attr.column] = values.get(attr.keyword)
    patient = by_level[Level.PATIENT]
    patient["patient_id"] = patient["patient_id"] or ""
    patient["patient_name_key"] = person_name_key(patient["patient_name"])
    study = by_level[Level.STUDY]
    study["referring_physician_name_key"] = person_name_key(study["referring_physician_name"])
    return InstanceHeader(
        patient=patient,
        study=study,
        series=by_level[Level.SERIES],
        instance=by_level[Level.IMAGE],
        transfer_syntax_uid=ts,
        specific_character_set=charset,
    )


# ----------------------------------------------------------------- fast path

_CHARSET_TAG = 0x00080005
_WANTED = frozenset({a.tag for a in INDEXED} | {_CHARSET_TAG})
_BY_TAG: dict[int, Attribute] = {a.tag: a for a in INDEXED}
_FAST_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
) | frozenset(f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81, 90, 91, 201, 202, 203))


class _NeedsPydicom(Exception):
    """A value the fast reader leaves to pydicom (non-ASCII text)."""


def _meta_transfer_syntax(data: bytes) -> str:
    pos, end = 132, dataset_offset(data)
    while pos + 8 <= end:
        group, elem, vr = struct.unpack_from("<HH2s", data, pos)
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
            (length,) = struct.unpack_from("<I", data, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            start = pos + 8
        if (group, elem) == (0x0002, 0x0010):
            return data[start : start + length].decode("ascii", "replace").rstrip("\x00 ")
        pos = start + length
    return ""


def _decode(raw: bytes, attr: Attribute | None) -> Any:
    if not raw.isascii():
        raise _NeedsPydicom
    text = raw.decode("ascii").strip("\x00 ")
    if attr is not None and attr.integer:
        try:
            return int(text) if text else None
        except ValueError:
            return None
    return text


def extract_part10(data: bytes) -> InstanceHeader:
    """Index values of a Part 10 object, checking that no element is truncated.

    Common syntaxes are read by walking the element framing once (tens of
    microseconds); anything else (deflated data sets, non-ASCII text) goes
    through pydicom.

    Raises
    ------
    InvalidIdentifier
        For missing or invalid identifying UIDs.
    InvalidRequest
        For a truncated or unreadable object.
    """
    try:
        ts = _meta_transfer_syntax(data)
    except (struct.error, InvalidRequest) as exc:
        raise InvalidRequest("not a readable DICOM object: bad File Meta Information") from exc
    if ts in _FAST_SYNTAXES:
        try:
            found = scan_part10(data, ts, _WANTED)
        except InvalidVR:
            found = None  # pydicom decides below
    if ts in _FAST_SYNTAXES and found is not None:
        try:
            values: dict[str, Any] = {a.keyword: None for a in INDEXED}
            for tag, (_vr, offset, length) in found.items():
                attr = _BY_TAG.get(tag)
                value = _decode(data[offset : offset + length], attr)
                if attr is not None:
                    values[attr.keyword] = value
            charset = ""
            if _CHARSET_TAG in found:
                _vr, offset, length = found[_CHARSET_TAG]
                charset = data[offset : offset + length].decode("ascii", "replace").strip("\x00 ")
            return _build(values, ts, charset)
        except _NeedsPydicom:
            pass
    header = extract_header(read_header(data))
    if not header.transfer_syntax_uid:
        raise InvalidRequest("the File Meta Information has no Transfer Syntax UID")
    try:
        check_part10_complete(data, header.transfer_syntax_uid)
    except InvalidVR:
        # pydicom read the whole header (e.g. an implicit VR data set under an explicit
        # VR transfer syntax, which pydicom detects); the walk cannot follow its framing.
        pass
    return header
