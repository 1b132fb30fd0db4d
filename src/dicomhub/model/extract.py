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
from dicomhub.model.attributes import INDEXED
from dicomhub.model.identifiers import Level, require_uid
from dicomhub.model.records import InstanceHeader

__all__ = ["extract_header", "person_name_key", "read_header"]

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
    meta = getattr(ds, "file_meta", None)
    uids: dict[str, str] = {}
    for keyword in _REQUIRED_UIDS:
        uids[keyword] = require_uid(ds.get(keyword), keyword)
    ts = ""
    if meta is not None and "TransferSyntaxUID" in meta:
        ts = str(meta.TransferSyntaxUID)
    by_level: dict[Level, dict[str, Any]] = {level: {} for level in Level}
    for attr in INDEXED:
        if attr.keyword in uids:
            value: Any = uids[attr.keyword]
        elif attr.integer:
            value = _integer(ds, attr.keyword)
        else:
            value = _text(ds, attr.keyword)
        by_level[attr.level][attr.column] = value
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
        specific_character_set=_text(ds, "SpecificCharacterSet") or "",
    )
