"""DICOM Part 10 framing: File Meta Information for objects received without it.

Objects that arrive over DIMSE carry no File Meta header. dicomhub stores every
object as a Part 10 file, so the bytes of the data set are kept exactly as
received and only prefixed with a preamble and a File Meta group built here.

References
----------
PS3.10 Section 7.1 (DICOM File Meta Information).
"""

from __future__ import annotations

import struct

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "file_meta_header",
    "has_part10_header",
]

# A UID root under the "2.25." UUID arc (PS3.5 B.2), fixed for dicomhub.
IMPLEMENTATION_CLASS_UID = "2.25.231594981004421287436613395290826118633"
IMPLEMENTATION_VERSION_NAME = "DICOMHUB_010"

_PREAMBLE = b"\x00" * 128 + b"DICM"


def has_part10_header(data: bytes | memoryview) -> bool:
    """Return True when ``data`` starts with a preamble and the ``DICM`` prefix."""
    return len(data) >= 132 and bytes(data[128:132]) == b"DICM"


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2s2xI", group, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def file_meta_header(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    source_ae_title: str | None = None,
) -> bytes:
    """Encode a preamble, ``DICM`` and a File Meta group (explicit VR little endian).

    Parameters
    ----------
    sop_class_uid, sop_instance_uid : str
        Media Storage SOP Class / Instance UID, from the C-STORE request.
    transfer_syntax_uid : str
        The transfer syntax the data set that follows is encoded in.
    source_ae_title : str, optional
        The calling AE title, recorded as (0002,0016) Source Application Entity Title.

    Returns
    -------
    bytes
        The bytes to put before the data set to make a Part 10 file.
    """
    body = b"".join(
        (
            _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, 0x0002, b"UI", _ui(sop_class_uid)),
            _element(0x0002, 0x0003, b"UI", _ui(sop_instance_uid)),
            _element(0x0002, 0x0010, b"UI", _ui(transfer_syntax_uid)),
            _element(0x0002, 0x0012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)),
            _element(0x0002, 0x0013, b"SH", _text(IMPLEMENTATION_VERSION_NAME)),
            _element(0x0002, 0x0016, b"AE", _text(source_ae_title.strip()[:16]))
            if source_ae_title
            else b"",
        )
    )
    group_length = _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body)))
    return _PREAMBLE + group_length + body
