"""Whether two encodings of a DICOM object hold the same content.

The duplicate decision of ingest compares a SHA-256 of the data set bytes
first; only when those digests differ does it ask this module, so the first
store of an object and an identical resend never pay for it. Two objects are
the same when their data sets say the same thing, however they are encoded:

* every element but the File Meta group (0002,eeee), group lengths
  (gggg,0000) and Data Set Trailing Padding (FFFC,FFFC) is present in both,
  with the same value after the encoding is undone: byte order (values
  swapped by the size of their VR's unit), explicit or implicit VR (an
  implicit or UN element takes the VR the other copy states, else the
  dictionary's), defined or undefined lengths, and the padding PS3.5 6.2
  allows (trailing spaces and NULs, and leading spaces where the VR says they
  are insignificant);
* sequences item by item, recursively; a sequence that an implicit VR
  copy holds as UN bytes (a private sequence, PS3.5 6.2.2) is parsed first;
* Pixel Data: equal bytes in one native byte order, or the same
  encapsulated stream, are equal; otherwise both are decoded frame by frame
  and the arrays must be equal value for value (a lossy original and its
  decompressed copy decode to the same values);
* when the transfer syntaxes differ, what a transcoder rewrites with the
  pixel encoding does not count: Photometric Interpretation within the colour
  family (RGB, YBR_FULL, YBR_FULL_422, YBR_RCT, YBR_ICT: the pixels are then
  compared as RGB), Planar Configuration (decoders return pixel-interleaved
  arrays), the Extended Offset Table (an encapsulated index), and, when one
  side is in a lossy syntax, the Lossy Image Compression attributes (the
  pixel comparison already proves the values equal).

Everything else counts: a changed character, a different Specific Character
Set, an element present in one copy only (even empty), one pixel value.

Both objects are read as streams (:func:`~dicomhub.codec.source.open_source`):
the elements before and after the pixel data in full, the pixel data one
chunk or frame at a time, so two large objects are never held in memory.

References
----------
PS3.5 Section 6.2 (value representations and their padding), 7.1 (data
elements), 7.5 (sequences), A.4 (encapsulation), 8.2 (native pixel data).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset, read_sequence
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

from dicomhub.errors import TranscodeError

from .pixels import decoded_frames
from .source import Source, open_source
from .syntaxes import HTJ2K, J2K, JPEG_BASELINE, JPEG_EXTENDED, transfer_syntax

__all__ = ["ObjectSource", "content_difference", "same_content"]

#: A Part 10 object: a file path, or its bytes (a ``bytes``, ``memoryview`` or ``mmap``).
ObjectSource = str | os.PathLike[str] | bytes | memoryview

_CHUNK: Final = 1 << 20
_TRAILING_PADDING: Final = 0xFFFCFFFC
_EXTENDED_OFFSET_TABLE: Final = frozenset({0x7FE00001, 0x7FE00002})
_PHOTOMETRIC: Final = 0x00280004
_NUMBER_OF_FRAMES: Final = 0x00280008
_PLANAR: Final = 0x00280006
_LOSSY_ATTRIBUTES: Final = frozenset({0x00282110, 0x00282112, 0x00282114})
_COLOUR: Final = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"})

# Bytes per unit of a binary VR: the size by which a big endian value is swapped.
_UNIT: Final = {
    "OB": 1, "UN": 1,
    "AT": 2, "OW": 2, "SS": 2, "US": 2,
    "FL": 4, "OF": 4, "OL": 4, "SL": 4, "UL": 4,
    "FD": 8, "OD": 8, "OV": 8, "SV": 8, "UV": 8,
}  # fmt: skip
_TEXT: Final = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
# PS3.5 Table 6.2-1: leading spaces are insignificant in these VRs too, per value.
_LEADING_INSIGNIFICANT: Final = frozenset({"AE", "CS", "DS", "IS", "LO", "SH"})
_PADDING: Final = b" \x00"
# Elements stay raw bytes when read here, so the character set is never applied.
_ASCII: Final = "iso8859"
# The most two decoders of one lossy stream differ by, per sample (see _Comparison),
# and the syntaxes whose decoding the standards leave that open: lossy JPEG (ISO
# 10918) and irreversible (9/7 wavelet) JPEG 2000 and HTJ2K.
_LOSSY_DECODER_TOLERANCE: Final = 2
_INEXACT_DECODING: Final = frozenset({JPEG_BASELINE, JPEG_EXTENDED, J2K, HTJ2K})


def content_difference(a: ObjectSource, b: ObjectSource) -> str | None:
    """Why two Part 10 objects differ in content, or None when they are the same object.

    Parameters
    ----------
    a, b : str, os.PathLike, bytes or memoryview
        The two objects (preamble, ``DICM``, File Meta, data set), as files or
        as bytes. Their File Meta groups are not compared.

    Returns
    -------
    str or None
        ``None`` when both data sets hold the same elements with the same
        values and the same pixel values (see the module docstring for what
        an encoding may change); otherwise the first difference found, for
        a log or an operator, e.g. ``"(0010,0010) PatientName differs"``.

    Raises
    ------
    dicomhub.errors.TranscodeError
        When either object cannot be read as a Part 10 file. Pixel data that
        cannot be decoded is reported as a difference, not raised: what cannot
        be compared is not known to be the same.

    References
    ----------
    PS3.5 Sections 6.2, 7.1, 7.5, 8.2 and Annex A.4.
    """
    with _open(a) as first, _open(b) as second:
        return _Comparison(first, second).run()


def same_content(a: ObjectSource, b: ObjectSource) -> bool:
    """Whether two Part 10 objects hold the same content (:func:`content_difference` is None).

    Parameters
    ----------
    a, b : str, os.PathLike, bytes or memoryview
        The two objects.

    Returns
    -------
    bool

    Raises
    ------
    dicomhub.errors.TranscodeError
        When either object cannot be read as a Part 10 file.
    """
    return content_difference(a, b) is None


class _BufferReader(io.RawIOBase):
    """A seekable reader over bytes already in memory (or mapped) that copies only what is read."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        chunk = self._view[self._pos : self._pos + len(out)]
        out[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        # The view must go before the mapping it may point into is closed by its owner;
        # a slice still referenced (by a traceback in flight) keeps it until collected.
        with contextlib.suppress(BufferError):
            self._view.release()
        super().close()


def _open(src: ObjectSource) -> Source:
    if isinstance(src, (str, os.PathLike)):
        return open_source(src)
    return open_source(io.BufferedReader(_BufferReader(src), _CHUNK), name="<memory>")


@dataclass(frozen=True, slots=True)
class _Side:
    """How one copy's elements are encoded where they are being compared."""

    little_endian: bool
    implicit_vr: bool


class _Comparison:
    def __init__(self, a: Source, b: Source) -> None:
        self.a, self.b = a, b
        self.syntax_differs = a.transfer_syntax_uid != b.transfer_syntax_uid
        self.lossy = _lossy(a.transfer_syntax_uid) or _lossy(b.transfer_syntax_uid)
        self.as_rgb = False  # colour pixels in two syntaxes are compared as RGB
        # A lossy stream does not decode to one exact result: ISO 10918-2 lets a
        # conforming IDCT be off by one, and neither chroma upsampling nor the
        # YCbCr -> RGB rounding is fixed, so the copy another decoder (DCMTK's
        # dcmdjpeg, GDCM) made differs from ours by a level or two here and there.
        # JPEG-LS near-lossless decodes exactly (integer arithmetic): no tolerance there.
        inexact = a.transfer_syntax_uid in _INEXACT_DECODING or b.transfer_syntax_uid in _INEXACT_DECODING
        self.tolerance = _LOSSY_DECODER_TOLERANCE if self.syntax_differs and inexact else 0

    def run(self) -> str | None:
        a, b = self.a, self.b
        sides = (_Side(a.little_endian, a.implicit_vr), _Side(b.little_endian, b.implicit_vr))
        ignored = self._ignored_top_level()
        return (
            _compare_datasets(a.ds, b.ds, *sides, ignored)
            or self._compare_pixels()
            or _compare_datasets(a.trailing, b.trailing, *sides, ignored)
        )

    def _ignored_top_level(self) -> frozenset[int]:
        """The top-level attributes a change of pixel encoding may rewrite (module docstring)."""
        if not self.syntax_differs:
            return frozenset()
        ignored = set(_EXTENDED_OFFSET_TABLE) | {_PLANAR}
        if self.lossy:
            ignored |= _LOSSY_ATTRIBUTES
        if _frames_stated(self.a.ds) in ("", "1") and _frames_stated(self.b.ds) in ("", "1"):
            # One frame either way: GDCM drops NumberOfFrames 1 when it decompresses.
            ignored.add(_NUMBER_OF_FRAMES)
        pa = _text_value(self.a.ds, _PHOTOMETRIC)
        pb = _text_value(self.b.ds, _PHOTOMETRIC)
        if pa in _COLOUR and pb in _COLOUR:
            # Decoders convert colour spaces differently (a JPEG codec returns
            # RGB from YBR_FULL, a native decoder keeps YBR), so the pixels of
            # two encodings are compared in one colour space: RGB.
            ignored.add(_PHOTOMETRIC)
            self.as_rgb = True
        return frozenset(ignored)

    def _compare_pixels(self) -> str | None:
        pa, pb = self.a.pixel, self.b.pixel
        if pa is None or pb is None:
            if pa is None and pb is None:
                return None
            return "Pixel Data is present in one copy only"
        if pa.keyword != pb.keyword:
            return f"one copy holds {pa.keyword}, the other {pb.keyword}"
        if self._same_stored_pixels():
            return None
        return self._compare_decoded()

    def _same_stored_pixels(self) -> bool:
        """Equal pixel data bytes in the same encoding (no decoding needed)."""
        a, b = self.a, self.b
        pa, pb = a.pixel, b.pixel
        assert pa is not None and pb is not None  # checked by the caller
        native_a, native_b = pa.length is not None, pb.length is not None
        if native_a != native_b:
            return False
        if native_a:
            # Native pixel data in one byte order: the same bytes are the same values.
            if a.little_endian != b.little_endian:
                return False
        elif a.transfer_syntax_uid != b.transfer_syntax_uid:
            return False
        if pa.end_offset - pa.value_offset != pb.end_offset - pb.value_offset:
            return False
        return _equal_ranges(a, pa.value_offset, b, pb.value_offset, pa.end_offset - pa.value_offset)

    def _compare_decoded(self) -> str | None:
        try:
            frames_a = decoded_frames(self.a, as_rgb=self.as_rgb or None)
            frames_b = decoded_frames(self.b, as_rgb=self.as_rgb or None)
            for number, ((arr_a, _pa), (arr_b, _pb)) in enumerate(_zip_frames(frames_a, frames_b), 1):
                if arr_a.shape != arr_b.shape:
                    return f"frame {number} decodes to {arr_a.shape} and {arr_b.shape} pixels"
                if not _equal_pixels(arr_a, arr_b, self.tolerance):
                    return f"frame {number} has other pixel values"
        except TranscodeError as exc:
            return f"the pixel data cannot be compared: {exc}"
        return None


def _zip_frames(
    a: Iterator[tuple[Any, dict[str, Any]]], b: Iterator[tuple[Any, dict[str, Any]]]
) -> Iterator[tuple[tuple[Any, dict[str, Any]], tuple[Any, dict[str, Any]]]]:
    """Frames of both copies in step, one of each in memory at a time."""
    while True:
        first = next(a, None)
        second = next(b, None)
        if first is None or second is None:
            if first is not second:
                raise TranscodeError("the copies hold different numbers of frames")
            return
        yield first, second


def _equal_pixels(a: Any, b: Any, tolerance: int) -> bool:
    if not tolerance:
        return bool(np.array_equal(a, b))
    difference = np.abs(a.astype(np.int64) - b.astype(np.int64))
    return int(difference.max(initial=0)) <= tolerance


def _lossy(uid: str) -> bool:
    try:
        return transfer_syntax(uid).lossy
    except Exception:  # an unknown syntax: not known to be lossy
        return False


def _text_value(ds: Dataset, tag: int) -> str:
    """A top-level text value without padding ('' when absent); never converts the element."""
    elem = ds.get_item(tag)
    if elem is None:
        return ""
    _vr, value = _raw(elem, _Side(True, False), "CS")
    return value.strip(_PADDING).decode("ascii", "replace")


def _frames_stated(ds: Dataset) -> str:
    return _text_value(ds, _NUMBER_OF_FRAMES).lstrip("0+") or ("" if _NUMBER_OF_FRAMES not in ds else "0")


def _equal_ranges(a: Source, start_a: int, b: Source, start_b: int, length: int) -> bool:
    done = 0
    while done < length:
        want = min(_CHUNK, length - done)
        a.fh.seek(start_a + done)
        b.fh.seek(start_b + done)
        if a.fh.read(want) != b.fh.read(want):
            return False
        done += want
    return True


def _compare_datasets(
    a: Dataset, b: Dataset, side_a: _Side, side_b: _Side, ignored: frozenset[int] = frozenset()
) -> str | None:
    """The first element that differs between two data sets (of one level), or None."""
    tags = sorted({int(t) for t in a.keys()} | {int(t) for t in b.keys()})
    for tag in tags:
        if tag >> 16 == 0x0002 or tag & 0xFFFF == 0 or tag == _TRAILING_PADDING or tag in ignored:
            continue
        ea, eb = a.get_item(tag), b.get_item(tag)
        if ea is None or eb is None:
            return f"{_name(tag)} is present in one copy only"
        reason = _compare_elements(tag, ea, eb, side_a, side_b)
        if reason is not None:
            return reason
    return None


def _compare_elements(
    tag: int, ea: DataElement | RawDataElement, eb: DataElement | RawDataElement, side_a: _Side, side_b: _Side
) -> str | None:
    vr = _common_vr(tag, _stated_vr(ea, side_a), _stated_vr(eb, side_b))
    if vr == "SQ":
        items_a, items_b = _items(ea, side_a), _items(eb, side_b)
        if items_a is None or items_b is None:
            return f"{_name(tag)} is a sequence in one copy only"
        (seq_a, item_side_a), (seq_b, item_side_b) = items_a, items_b
        if len(seq_a) != len(seq_b):
            return f"{_name(tag)} holds {len(seq_a)} and {len(seq_b)} items"
        for number, (item_a, item_b) in enumerate(zip(seq_a, seq_b, strict=True), 1):
            reason = _compare_datasets(item_a, item_b, item_side_a, item_side_b)
            if reason is not None:
                return f"{_name(tag)} item {number}: {reason}"
        return None
    _vr_a, value_a = _raw(ea, side_a, vr)
    _vr_b, value_b = _raw(eb, side_b, vr)
    if _canonical(value_a, vr, side_a) != _canonical(value_b, vr, side_b):
        return f"{_name(tag)} differs"
    return None


def _stated_vr(elem: DataElement | RawDataElement, side: _Side) -> str | None:
    """The VR this copy states for the element: None when it does not say (implicit VR)."""
    if isinstance(elem, DataElement):
        # pydicom resolved it: from the file when explicit, else from the dictionary.
        return None if side.implicit_vr and elem.VR != "SQ" else str(elem.VR)
    return None if elem.VR is None else str(elem.VR)


def _dictionary_vr(tag: int) -> str | None:
    try:
        return str(dictionary_VR(Tag(tag)))
    except KeyError:
        return None


def _common_vr(tag: int, vr_a: str | None, vr_b: str | None) -> str:
    """The VR both values are read as: a stated VR wins over UN, then the dictionary's."""
    stated = [vr for vr in (vr_a, vr_b) if vr is not None and vr != "UN"]
    if stated:
        if "SQ" in stated:
            return "SQ"
        return stated[0]
    dictionary = _dictionary_vr(tag)
    if dictionary is not None and " or " not in dictionary:
        return dictionary
    # Ambiguous (US or SS, OB or OW) or unknown: only implicit VR little endian
    # copies (or UN on both sides) get here, so their bytes are comparable as they are.
    return "UN"


def _items(elem: DataElement | RawDataElement, side: _Side) -> tuple[list[Dataset], _Side] | None:
    """A sequence's items and how they are encoded (None: not a sequence)."""
    if isinstance(elem, DataElement):
        if isinstance(elem.value, DicomSequence):
            return list(elem.value), side
        return ([], side) if elem.is_empty else None
    value = elem.value
    if not isinstance(value, bytes):
        return None
    if not value:
        return [], side
    # pydicom keeps a sequence of defined length as bytes until it is used: in
    # this copy's encoding, except that a sequence held as UN is encoded in
    # Implicit VR Little Endian (PS3.5 6.2.2).
    if elem.VR == "UN":
        side = _Side(True, True)
    try:
        seq = read_sequence(io.BytesIO(value), side.implicit_vr, side.little_endian, len(value), _ASCII)
    except Exception:  # not a sequence after all: reported as a sequence in one copy only
        return None
    return list(seq), side


def _raw(elem: DataElement | RawDataElement, side: _Side, vr: str) -> tuple[str | None, bytes]:
    """The element's value bytes as encoded in this copy."""
    if isinstance(elem, RawDataElement):
        return elem.VR, bytes(elem.value or b"")
    if elem.is_empty:
        return elem.VR, b""
    # pydicom converted it already (it does so for some elements while reading):
    # write it back in this copy's encoding and take the value bytes.
    ds = Dataset()
    ds.add(elem)
    fp = DicomBytesIO()
    fp.is_little_endian = side.little_endian
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    raw = read_dataset(io.BytesIO(fp.getvalue()), False, side.little_endian).get_item(elem.tag)
    assert isinstance(raw, RawDataElement)  # freshly read: nothing converted
    return raw.VR, bytes(raw.value or b"")


def _canonical(value: bytes, vr: str, side: _Side) -> bytes:
    """The value in one encoding: little endian, without the padding its VR allows."""
    if vr in _TEXT:
        if vr in _LEADING_INSIGNIFICANT:
            return b"\\".join(v.strip(_PADDING) for v in value.split(b"\\"))
        return value.rstrip(_PADDING)
    unit = _UNIT.get(vr, 1)
    if side.little_endian or unit == 1 or len(value) % unit:
        return value
    swapped = np.frombuffer(value, dtype=f">u{unit}").astype(f"<u{unit}")
    return swapped.tobytes()


def _name(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    return f"{text} {keyword}" if keyword else text
