"""Transcode a Part 10 object to another transfer syntax, one frame at a time.

References
----------
PS3.5 Section 8 (pixel data encoding), Annex A.4 (encapsulation), PS3.10 Section 7
(File Meta), PS3.3 C.7.6.1.1.5 (Lossy Image Compression attributes).
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import UID

from dicomhub.errors import InvalidRequest, TranscodeError

from .pixels import (
    LOSSY_METHODS,
    Array,
    check_encodable,
    decoded_frames,
    encode_frame,
    frame_nbytes,
    native_bytes,
)
from .source import Source, copy_range, open_source
from .syntaxes import DEFLATED, EXPLICIT_BE, NATIVE_UIDS, TransferSyntax, transfer_syntax

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "TranscodeInfo",
    "transcode_bytes",
    "transcode_file",
]

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1419.1"
IMPLEMENTATION_VERSION_NAME = "DICOMHUB_010"
_LOSSY_SOURCES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
_RATIO_WIDTH = 16  # DS is at most 16 characters; written fixed-width so it can be patched
_DROP_AFTER_REENCODE = (0x7FE00001, 0x7FE00002)  # Extended Offset Table (+ Lengths)


@dataclass(frozen=True, slots=True)
class TranscodeInfo:
    """What a transcode did.

    Attributes
    ----------
    source_transfer_syntax_uid, transfer_syntax_uid : str
        Of the input and of the output.
    frames : int
        Frames of pixel data (0 for an object without pixel data).
    lossy : bool
        Whether this transcode lost information (lossy re-encoding).
    """

    source_transfer_syntax_uid: str
    transfer_syntax_uid: str
    frames: int
    lossy: bool


def _target(uid_or_name: str) -> TransferSyntax:
    try:
        return transfer_syntax(uid_or_name)
    except InvalidRequest as exc:
        raise TranscodeError(f"unknown target transfer syntax {uid_or_name!r}") from exc


def _file_meta(source: Source, target_uid: str) -> bytes:
    old = source.file_meta
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = old.get("MediaStorageSOPClassUID", source.ds.get("SOPClassUID", ""))
    meta.MediaStorageSOPInstanceUID = old.get(
        "MediaStorageSOPInstanceUID", source.ds.get("SOPInstanceUID", "")
    )
    meta.TransferSyntaxUID = UID(target_uid)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    for keyword in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle"):
        if keyword in old:
            setattr(meta, keyword, old.get(keyword))
    buf = DicomBytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue()


def _encode_dataset(ds: Dataset, little: bool, implicit: bool) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian = little
    buf.is_implicit_VR = implicit
    if len(ds):
        write_dataset(buf, ds)
    return buf.getvalue()


class _Out:
    """The data set part of the output: plain, or deflated as it is written (PS3.5 A.5)."""

    def __init__(self, dst: BinaryIO, deflate: bool) -> None:
        self._dst = dst
        self._zip = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS) if deflate else None

    def write(self, data: bytes) -> None:
        if self._zip is None:
            self._dst.write(data)
        else:
            self._dst.write(self._zip.compress(data))

    def close(self) -> None:
        if self._zip is not None:
            self._dst.write(self._zip.flush())


def _element_header(tag: int, vr: str | None, length: int, little: bool) -> bytes:
    e = "<" if little else ">"
    head = struct.pack(f"{e}HH", tag >> 16, tag & 0xFFFF)
    if vr is None:
        return head + struct.pack(f"{e}L", length)
    return head + vr.encode("ascii") + b"\x00\x00" + struct.pack(f"{e}L", length)


def _strings(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    return [str(getattr(v, "original_string", v)).strip() for v in values]


def _same_syntax(source: Source, target: TransferSyntax, dst: BinaryIO) -> TranscodeInfo:
    """Same syntax: new File Meta, then the data set bytes exactly as stored."""
    dst.write(_file_meta(source, target.uid))
    with open(source.path, "rb") as fh:
        copy_range(fh, source.body_offset, None, dst)
    frames = source.number_of_frames if source.pixel is not None else 0
    return TranscodeInfo(source.transfer_syntax_uid, target.uid, frames, False)


def _no_pixels(source: Source, target: TransferSyntax, dst: BinaryIO) -> TranscodeInfo:
    little = target.uid != EXPLICIT_BE
    implicit = target.uid == "1.2.840.10008.1.2"
    dst.write(_file_meta(source, target.uid))
    out = _Out(dst, target.uid == DEFLATED)
    out.write(_encode_dataset(source.ds, little, implicit))
    out.close()
    return TranscodeInfo(source.transfer_syntax_uid, target.uid, 0, False)


def transcode_file(
    src: str | os.PathLike[str],
    target_transfer_syntax_uid: str,
    dst: BinaryIO,
    *,
    allow_lossy: bool = False,
) -> TranscodeInfo:
    """Write the Part 10 object `src` to `dst` in another transfer syntax.

    Frames are read, decoded, encoded and written one at a time, so memory stays at
    a few frames whatever the size of the object.

    Parameters
    ----------
    src : str or os.PathLike
        A Part 10 file.
    target_transfer_syntax_uid : str
        The UID (or CLI name) of the wanted transfer syntax.
    dst : BinaryIO
        Receives the whole Part 10 output.  When it is seekable and the target is
        lossy, the real LossyImageCompressionRatio is patched in at the end (otherwise
        the ratio of the first frame is written).
    allow_lossy : bool
        Lossy re-encoding happens only when this is true.

    Returns
    -------
    TranscodeInfo

    Raises
    ------
    dicomhub.errors.TranscodeError
        When the source cannot be decoded, the target cannot be encoded here, the
        pixel data does not suit the target, or the target is lossy and
        `allow_lossy` is false.  Nothing useful is in `dst` then.

    References
    ----------
    PS3.5 Section 8 and Annex A; PS3.3 C.7.6.1.1.5.
    """
    target = _target(target_transfer_syntax_uid)
    with open_source(src) as source:
        if source.transfer_syntax_uid == target.uid:
            return _same_syntax(source, target, dst)
        if source.pixel is None:
            return _no_pixels(source, target, dst)
        if target.lossy and not allow_lossy:
            raise TranscodeError(f"{target.title} is lossy: transcoding to it needs explicit permission")
        if target.encapsulated:
            if source.pixel.keyword != "PixelData":
                raise TranscodeError(f"{source.pixel.keyword} cannot be encapsulated")
            check_encodable(target.uid)
        return _Transcoder(source, target, dst).run()


def transcode_bytes(data: bytes, target_transfer_syntax_uid: str, *, allow_lossy: bool = False) -> bytes:
    """Return the Part 10 object `data` in another transfer syntax.

    Parameters
    ----------
    data : bytes
        A whole Part 10 object.
    target_transfer_syntax_uid : str
        The UID (or CLI name) of the wanted transfer syntax.
    allow_lossy : bool
        Lossy re-encoding happens only when this is true.

    Returns
    -------
    bytes
        The whole Part 10 output.

    Raises
    ------
    dicomhub.errors.TranscodeError
        As :func:`transcode_file`.
    """
    with tempfile.NamedTemporaryFile(suffix=".dcm") as tmp:
        tmp.write(data)
        tmp.flush()
        out = io.BytesIO()
        transcode_file(tmp.name, target_transfer_syntax_uid, out, allow_lossy=allow_lossy)
        return out.getvalue()


class _Transcoder:
    """One pixel-data transcode (the source has pixel data and the syntaxes differ)."""

    def __init__(self, source: Source, target: TransferSyntax, dst: BinaryIO) -> None:
        self.source = source
        self.target = target
        self.dst = dst
        self.little = target.uid != EXPLICIT_BE
        self.implicit = target.uid == "1.2.840.10008.1.2"
        self.frames = source.number_of_frames
        self.ds = source.ds
        self.decoded_bytes = 0
        self.encoded_bytes = 0

    def _raw_copy_ok(self) -> bool:
        # Native to native in the same byte order: the pixel bytes need no decoding.
        src = self.source.transfer_syntax_uid
        if src not in NATIVE_UIDS or self.target.uid not in NATIVE_UIDS:
            return False
        if (src == EXPLICIT_BE) == (self.target.uid == EXPLICIT_BE):
            return True
        # Across byte orders only OB pixel data of at most 8 bits is the same bytes (PS3.5
        # 7.3: OB is never swapped). It matters for 1-bit data, which pydicom's decode
        # unpacks and cannot be written back packed (pydicom's liver_expb.dcm).
        pixel = self.source.pixel
        return pixel is not None and pixel.vr == "OB" and int(self.ds.get("BitsAllocated", 16)) <= 8

    def run(self) -> TranscodeInfo:
        self.dst.write(_file_meta(self.source, self.target.uid))
        out = _Out(self.dst, self.target.uid == DEFLATED)
        if self._raw_copy_ok():
            self._raw_copy(out)
        else:
            frames = decoded_frames(self.source)
            first = next(frames)
            if self.target.encapsulated:
                self._encapsulated(out, first, frames)
            else:
                self._native(out, first, frames)
        out.write(_encode_dataset(self.source.trailing, self.little, self.implicit))
        out.close()
        return TranscodeInfo(self.source.transfer_syntax_uid, self.target.uid, self.frames, self.target.lossy)

    def _pixel_vr(self) -> str | None:
        if self.implicit:
            return None
        pixel = self.source.pixel
        assert pixel is not None
        if pixel.keyword == "FloatPixelData":
            return "OF"
        if pixel.keyword == "DoubleFloatPixelData":
            return "OD"
        return "OW" if int(self.ds.get("BitsAllocated", 8)) > 8 else "OB"

    def _pixel_tag(self) -> int:
        pixel = self.source.pixel
        assert pixel is not None
        return {"PixelData": 0x7FE00010, "FloatPixelData": 0x7FE00008}.get(pixel.keyword, 0x7FE00009)

    def _raw_copy(self, out: _Out) -> None:
        pixel = self.source.pixel
        assert pixel is not None and pixel.length is not None
        out.write(_encode_dataset(self.ds, self.little, self.implicit))
        out.write(_element_header(self._pixel_tag(), self._pixel_vr(), pixel.length, self.little))
        copy_range(self.source.fh, pixel.value_offset, pixel.length, out)

    def _update_pixel_module(self, props: dict[str, Any], pi: str) -> None:
        ds = self.ds
        for tag in _DROP_AFTER_REENCODE:
            if tag in ds:
                del ds[tag]
        ds.PhotometricInterpretation = pi
        if int(props["samples_per_pixel"]) > 1:
            ds.PlanarConfiguration = 0
        if self.source.transfer_syntax_uid in _LOSSY_SOURCES and "LossyImageCompression" not in ds:
            ds.LossyImageCompression = "01"

    def _native(
        self, out: _Out, first: tuple[Array, dict[str, Any]], rest: Iterator[tuple[Array, dict[str, Any]]]
    ) -> None:
        arr, props = first
        self._update_pixel_module(props, str(props["photometric_interpretation"]))
        bits_allocated = int(props["bits_allocated"])
        if bits_allocated == 1:
            raise TranscodeError(
                "1-bit pixel data can only be copied between uncompressed little endian syntaxes"
            )
        nbytes = frame_nbytes(props)
        total = nbytes * self.frames
        out.write(_encode_dataset(self.ds, self.little, self.implicit))
        out.write(_element_header(self._pixel_tag(), self._pixel_vr(), total + total % 2, self.little))
        del arr  # frames are written one at a time; keep no reference to the first
        for index, (frame, _props) in enumerate(_chain(first, rest)):
            data = native_bytes(frame, self.little)
            if len(data) != nbytes:
                raise TranscodeError(f"frame {index + 1} decodes to {len(data)} bytes, expected {nbytes}")
            out.write(data)
        if total % 2:
            out.write(b"\x00")

    def _encapsulated(
        self, out: _Out, first: tuple[Array, dict[str, Any]], rest: Iterator[tuple[Array, dict[str, Any]]]
    ) -> None:
        arr, props = first
        encoded = encode_frame(arr, props, self.target.uid)
        self._update_pixel_module(props, encoded.photometric_interpretation)
        patch_at: int | None = None
        if self.target.lossy:
            ratio = frame_nbytes(props) / max(1, len(encoded.data))
            header, patch_at = self._lossy_header(ratio)
        else:
            header = _encode_dataset(self.ds, True, False)
        start = self.dst.tell() if patch_at is not None and self.dst.seekable() else None
        out.write(header)
        out.write(_element_header(0x7FE00010, "OB", 0xFFFFFFFF, True))
        out.write(struct.pack("<HHL", 0xFFFE, 0xE000, 0))  # empty Basic Offset Table
        self._write_item(out, encoded.data, props)
        for frame, frame_props in rest:
            self._write_item(out, encode_frame(frame, frame_props, self.target.uid).data, frame_props)
        out.write(struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))
        if start is not None and patch_at is not None:
            end = self.dst.tell()
            self.dst.seek(start + patch_at)
            self.dst.write(self._ratio_text(self.decoded_bytes / max(1, self.encoded_bytes)))
            self.dst.seek(end)

    def _write_item(self, out: _Out, data: bytes, props: dict[str, Any]) -> None:
        if len(data) % 2:
            data += b"\x00"  # items have even length (PS3.5 A.4)
        out.write(struct.pack("<HHL", 0xFFFE, 0xE000, len(data)))
        out.write(data)
        self.decoded_bytes += frame_nbytes(props)
        self.encoded_bytes += len(data)

    @staticmethod
    def _ratio_text(ratio: float) -> bytes:
        return f"{ratio:.4f}"[:_RATIO_WIDTH].ljust(_RATIO_WIDTH).encode("ascii")

    def _lossy_header(self, ratio: float) -> tuple[bytes, int]:
        """The header with LossyImageCompression* appended, and where the new ratio sits in it."""
        ds = self.ds
        ds.LossyImageCompression = "01"
        methods = _strings(ds.get("LossyImageCompressionMethod"))
        ds.LossyImageCompressionMethod = [*methods, LOSSY_METHODS[self.target.uid]]
        ratios = _strings(ds.get("LossyImageCompressionRatio"))
        # Encode twice with two placeholders of the same width: the first differing byte is
        # where the value sits, so it can be replaced now and patched at the end.
        variants = []
        for mark in ("1", "2"):
            ds.LossyImageCompressionRatio = [*ratios, mark + "." + "0" * (_RATIO_WIDTH - 2)]
            variants.append(_encode_dataset(ds, True, False))
        a, b = variants
        at = next(i for i in range(len(a)) if a[i] != b[i])
        header = a[:at] + self._ratio_text(ratio) + a[at + _RATIO_WIDTH :]
        ds.LossyImageCompressionRatio = [*ratios, f"{ratio:.4f}"[:_RATIO_WIDTH]]
        return header, at


def _chain(
    first: tuple[Array, dict[str, Any]], rest: Iterator[tuple[Array, dict[str, Any]]]
) -> Iterator[tuple[Array, dict[str, Any]]]:
    yield first
    yield from rest
