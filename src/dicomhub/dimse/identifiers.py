"""Encoding C-FIND response identifiers without building pydicom Datasets.

A study-level C-FIND answers hundreds of matches of a dozen text attributes;
pydicom's writer costs more per match than the query. Plain text values are
framed here directly; anything else (sequences and values from the stored
header) goes through pydicom's element writer.
"""

from __future__ import annotations

import struct

from pydicom.dataelem import DataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset

from dicomhub.model.match import Match

__all__ = ["encode_match"]

_IMPLICIT = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
# Values are Python str: sent as UTF-8, announced by the handler with
# Specific Character Set ISO_IR 192 whenever one is not ASCII.
_ENCODINGS = ["ISO_IR 192"]


def _pydicom_element(elem: DataElement, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_data_element(fp, elem, _ENCODINGS)
    return fp.getvalue()


def encode_match(match: Match, transfer_syntax_uid: str) -> bytes:
    """The identifier of ``match`` encoded in ``transfer_syntax_uid``."""
    if transfer_syntax_uid == _BIG_ENDIAN:
        fp = DicomBytesIO()
        fp.is_little_endian = False
        fp.is_implicit_VR = False
        write_dataset(fp, match.to_dataset())
        return fp.getvalue()
    implicit = transfer_syntax_uid == _IMPLICIT
    parts: list[bytes] = []
    for tag in sorted(match.values):
        vr, value = match.values[tag]
        if isinstance(value, DataElement):
            parts.append(_pydicom_element(value, implicit))
            continue
        if vr == "SQ" or value is None:
            body = b""
        else:
            text = "\\".join(str(v) for v in value) if isinstance(value, list) else str(value)
            body = text.encode("utf-8")
            if len(body) % 2:
                body += b"\x00" if vr == "UI" else b" "
        group, element = tag >> 16, tag & 0xFFFF
        if implicit:
            parts.append(struct.pack("<HHI", group, element, len(body)))
        elif vr in _LONG_VRS:
            parts.append(struct.pack("<HH2s2xI", group, element, vr.encode(), len(body)))
        else:
            parts.append(struct.pack("<HH2sH", group, element, vr.encode(), len(body)))
        parts.append(body)
    return b"".join(parts)
