"""A structural check of an encoded data set: every element ends inside the data.

The header-only parse that indexing uses stops before Pixel Data, so it cannot
see an object whose pixel data was cut off in transit. Walking the element
framing (tags and lengths, no value decoding) finds such truncation cheaply,
before an acknowledgement would make a broken object look stored.

References
----------
PS3.5 Section 7 (data set encoding), 7.5 (nesting of data sets), A.4
(encapsulated pixel data).
"""

from __future__ import annotations

import struct

from pydicom.valuerep import VR

from dicomhub.errors import InvalidRequest

__all__ = ["InvalidVR", "TopLevel", "check_part10_complete", "dataset_offset", "scan_part10"]



class InvalidVR(InvalidRequest):
    """An element of an explicit VR data set whose VR field holds no VR.

    Its framing cannot be walked (pydicom guesses on as implicit VR, which
    some real objects need at their start); :func:`~dicomhub.model.extract.extract_part10`
    lets pydicom decide whether such an object is readable.
    """


# (VR as bytes or b"" when implicit, value offset, value length) by tag.
TopLevel = dict[int, tuple[bytes, int, int]]

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_DEFLATED = "1.2.840.10008.1.2.1.99"
# In an explicit VR data set (and the File Meta group is always one, PS3.10 7.1) an
# element with any other two bytes in the VR field makes pydicom read on as implicit
# VR, so the header read after ingest would fail on an object ingest accepted.
_VRS = frozenset(vr.value.encode("ascii") for vr in VR if len(vr.value) == 2)


def dataset_offset(data: bytes) -> int:
    """Offset of the data set after a Part 10 File Meta group."""
    if len(data) < 144:
        raise InvalidRequest("truncated File Meta Information")
    group, elem, vr, length = struct.unpack_from("<HH2sH", data, 132)
    if (group, elem) != (2, 0) or vr != b"UL" or length != 4:
        # No group length: walk the group-2 elements (explicit VR LE).
        pos = 132
        while pos + 8 <= len(data):
            (group,) = struct.unpack_from("<H", data, pos)
            if group != 2:
                return pos
            if data[pos + 4 : pos + 6] not in _VRS:
                raise InvalidRequest("File Meta Information element without an explicit VR")
            pos = _skip_explicit(data, pos, "<")
        raise InvalidRequest("truncated File Meta Information")
    (group_length,) = struct.unpack_from("<I", data, 140)
    return 144 + int(group_length)


def _skip_explicit(data: bytes, pos: int, endian: str) -> int:
    vr = data[pos + 4 : pos + 6]
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            raise InvalidRequest("truncated element header")
        (length,) = struct.unpack_from(endian + "I", data, pos + 8)
        return pos + 12 + int(length)
    (length,) = struct.unpack_from(endian + "H", data, pos + 6)
    return pos + 8 + int(length)


def check_part10_complete(data: bytes, transfer_syntax_uid: str) -> None:
    """Raise :class:`InvalidRequest` when an element of the data set runs past the end.

    Deflated data sets are not walked (their framing is inside the zlib stream,
    which the header parse already inflates).
    """
    scan_part10(data, transfer_syntax_uid, frozenset())


def scan_part10(data: bytes, transfer_syntax_uid: str, wanted: frozenset[int]) -> TopLevel:
    """Walk the whole data set once: check it is complete, and locate ``wanted`` top-level tags.

    Returns
    -------
    dict
        For each wanted tag present at the top level: its VR (``b""`` for
        implicit VR), value offset and value length (undefined-length values
        are not located).

    Raises
    ------
    InvalidRequest
        When the data set is truncated or its framing is malformed.
    """
    found: TopLevel = {}
    if transfer_syntax_uid == _DEFLATED:
        return found
    implicit = transfer_syntax_uid == "1.2.840.10008.1.2"
    endian = ">" if transfer_syntax_uid == "1.2.840.10008.1.2.2" else "<"
    try:
        end = _walk(data, dataset_offset(data), len(data), implicit, endian, False, wanted, found)
    except struct.error as exc:
        raise InvalidRequest("the data set is truncated") from exc
    if end != len(data):
        raise InvalidRequest("the data set is truncated")
    return found


def _tag(data: bytes, pos: int, endian: str) -> int:
    group, elem = struct.unpack_from(endian + "HH", data, pos)
    return (int(group) << 16) | int(elem)


def _walk(
    data: bytes,
    pos: int,
    end: int,
    implicit: bool,
    endian: str,
    nested: bool,
    wanted: frozenset[int] = frozenset(),
    found: TopLevel | None = None,
) -> int:
    """Walk elements from ``pos``; return where the data set (or item) ends."""
    n = len(data)
    while pos < end:
        if pos + 8 > n:
            raise InvalidRequest("the data set is truncated")
        tag = _tag(data, pos, endian)
        if tag == _ITEM_END:
            if not nested:
                raise InvalidRequest("item delimiter outside an item")
            return pos + 8
        group = tag >> 16
        # Item and delimiter tags are always implicit-VR style (PS3.5 7.5).
        if implicit or group == 0xFFFE:
            (length,) = struct.unpack_from(endian + "I", data, pos + 4)
            header = 8
            vr = b""
        else:
            vr = data[pos + 4 : pos + 6]
            if vr not in _VRS:
                # pydicom would read on as implicit VR from here and fail (or read
                # other elements than this walk): the stored header could not be read.
                raise InvalidVR(f"element ({group:04X},{tag & 0xFFFF:04X}) has no valid VR")
            if vr in _LONG_VRS:
                if pos + 12 > n:
                    raise InvalidRequest("the data set is truncated")
                (length,) = struct.unpack_from(endian + "I", data, pos + 8)
                header = 12
            else:
                (length,) = struct.unpack_from(endian + "H", data, pos + 6)
                header = 8
        pos += header
        if found is not None and tag in wanted and length != _UNDEFINED:
            found[tag] = (vr, pos, length)
        if length == _UNDEFINED:
            pos = _walk_undefined(data, pos, implicit, endian, encapsulated=vr in (b"OB", b"OW"))
            continue
        if length and vr == b"SQ":
            seq_end = pos + length
            if seq_end > n:
                raise InvalidRequest("the data set is truncated")
            pos = _walk_items(data, pos, seq_end, implicit, endian)
            continue
        pos += length
        if pos > n:
            raise InvalidRequest("the data set is truncated")
    return pos


def _walk_items(data: bytes, pos: int, end: int, implicit: bool, endian: str) -> int:
    while pos < end:
        tag = _tag(data, pos, endian)
        (length,) = struct.unpack_from(endian + "I", data, pos + 4)
        pos += 8
        if tag != _ITEM:
            raise InvalidRequest("malformed sequence")
        if length == _UNDEFINED:
            pos = _walk(data, pos, len(data), implicit, endian, nested=True)
        else:
            pos = _walk(data, pos, pos + length, implicit, endian, nested=True)
    if pos != end:
        raise InvalidRequest("malformed sequence")
    return pos


def _walk_undefined(data: bytes, pos: int, implicit: bool, endian: str, encapsulated: bool) -> int:
    """Walk a sequence or encapsulated pixel data of undefined length to its delimiter."""
    n = len(data)
    while True:
        if pos + 8 > n:
            raise InvalidRequest("the data set is truncated")
        tag = _tag(data, pos, endian)
        (length,) = struct.unpack_from(endian + "I", data, pos + 4)
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise InvalidRequest("malformed sequence or encapsulated pixel data")
        if encapsulated:
            pos += length
            if pos > n:
                raise InvalidRequest("the data set is truncated")
        elif length == _UNDEFINED:
            pos = _walk(data, pos, n, implicit, endian, nested=True)
        else:
            pos = _walk(data, pos, pos + length, implicit, endian, nested=True)
