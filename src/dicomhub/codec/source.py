"""Open a Part 10 file for streaming: header, where Pixel Data is, and what follows it.

Nothing here reads the pixel data itself; the callers read it frame by frame from
:attr:`Source.fh`, so a 500 MB multi-frame object never sits in memory.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import BaseTag
from pydicom.uid import UID

from dicomhub.errors import TranscodeError

from .syntaxes import DEFLATED, EXPLICIT_LE

__all__ = ["PixelElement", "Source", "open_source"]

_PIXEL_TAGS = {0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData", 0x7FE00010: "PixelData"}
_ITEM = 0xE000FFFE
_SEQ_DELIMITER = 0xE0DDFFFE
_UNDEFINED = 0xFFFFFFFF
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class PixelElement:
    """Where the top-level pixel data element sits in :attr:`Source.fh`."""

    keyword: str
    vr: str | None
    value_offset: int
    length: int | None  # None: undefined length, i.e. encapsulated
    end_offset: int


@dataclass(slots=True)
class Source:
    """A Part 10 file opened for streaming (see :func:`open_source`)."""

    fh: BinaryIO
    path: str
    file_meta: FileMetaDataset
    transfer_syntax_uid: str  # as stored in the file (deflated stays deflated)
    body_offset: int  # where the data set starts in the original file
    ds: Dataset  # the elements before the pixel data
    pixel: PixelElement | None
    trailing: Dataset  # top-level elements after the pixel data (rare)
    little_endian: bool
    implicit_vr: bool
    _temp: IO[bytes] | None = None

    @property
    def number_of_frames(self) -> int:
        """NumberOfFrames, 1 when absent or empty."""
        value = self.ds.get("NumberOfFrames")
        try:
            return max(1, int(value)) if value not in (None, "") else 1
        except (TypeError, ValueError):
            return 1

    def close(self) -> None:
        """Close the file (and drop the inflated copy of a deflated source)."""
        self.fh.close()
        if self._temp is not None:
            self._temp.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _stop_at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


def _inflate(fh: BinaryIO, file_meta: FileMetaDataset) -> IO[bytes]:
    """Copy a deflated file as Explicit VR Little Endian into a temporary file, chunk by chunk."""
    out = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the Source
    meta = FileMetaDataset(file_meta)
    meta.TransferSyntaxUID = UID(EXPLICIT_LE)
    buf = DicomBytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    out.write(buf.getvalue())
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    while chunk := fh.read(_CHUNK):
        out.write(inflater.decompress(chunk))
    out.write(inflater.flush())
    out.seek(len(buf.getvalue()))
    return out


def _read_u32_pair(fh: BinaryIO, little: bool) -> tuple[int, int]:
    data = fh.read(8)
    if len(data) < 8:
        raise TranscodeError("the encapsulated pixel data ends before its sequence delimiter")
    g, e, length = struct.unpack("<HHL" if little else ">HHL", data)
    return (e << 16) | g, length


def _locate_pixels(fh: BinaryIO, little: bool, implicit: bool) -> PixelElement | None:
    start = fh.tell()
    head = fh.read(8)
    if len(head) < 8:
        fh.seek(start)
        return None
    endian = "<" if little else ">"
    group, elem = struct.unpack(f"{endian}HH", head[:4])
    tag = (group << 16) | elem
    if tag not in _PIXEL_TAGS:
        fh.seek(start)
        return None
    vr: str | None
    if implicit:
        vr = None
        (length,) = struct.unpack(f"{endian}L", head[4:])
    else:
        vr = head[4:6].decode("ascii", "replace")
        (length,) = struct.unpack(f"{endian}L", fh.read(4))
    value_offset = fh.tell()
    if length != _UNDEFINED:
        end = value_offset + length
        return PixelElement(_PIXEL_TAGS[tag], vr, value_offset, length, end)
    # Encapsulated: skip over the items (headers only) to find the end of the element.
    while True:
        item, item_length = _read_u32_pair(fh, little)
        if item == _SEQ_DELIMITER:
            break
        if item != _ITEM:
            raise TranscodeError(f"unexpected tag {item:08X} inside encapsulated pixel data")
        fh.seek(item_length, os.SEEK_CUR)
    end = fh.tell()
    fh.seek(value_offset)
    return PixelElement(_PIXEL_TAGS[tag], vr, value_offset, None, end)


def open_source(
    src: str | os.PathLike[str] | BinaryIO, *, parse_body: bool = True, name: str = ""
) -> Source:
    """Open `src` and read everything but the pixel data.

    Parameters
    ----------
    src : str, os.PathLike or binary file object
        A Part 10 file (preamble, ``DICM``, File Meta), or a seekable binary
        reader positioned at its start (an object in memory); the Source then
        owns it and closes it.
    parse_body : bool
        ``False`` stops after the File Meta (for the same-syntax copy).
    name : str
        What to call a file object in messages (its ``name`` attribute else).

    Returns
    -------
    Source
        Close it (or use it as a context manager).

    Raises
    ------
    dicomhub.errors.TranscodeError
        When the file is not a readable Part 10 object.
    """
    fh: BinaryIO
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        fh = open(path, "rb")  # noqa: SIM115 - owned by the Source
    else:
        fh, path = src, name or str(getattr(src, "name", "<stream>"))
    try:
        return _open(fh, path, parse_body)
    except TranscodeError:
        fh.close()
        raise
    except Exception as exc:
        fh.close()
        raise TranscodeError(f"cannot read {os.path.basename(path)} as a DICOM file: {exc}") from exc


def _open(fh: BinaryIO, path: str, parse_body: bool) -> Source:
    if read_preamble(fh, force=False) is None:
        raise TranscodeError("not a Part 10 file (no preamble and DICM prefix)")
    # pydicom's own iter_pixels() reads the File Meta with this helper too.
    file_meta = _read_file_meta_info(fh)
    tsyntax = str(file_meta.get("TransferSyntaxUID", "")).strip()
    if not tsyntax:
        raise TranscodeError("the File Meta has no TransferSyntaxUID")
    body_offset = fh.tell()
    uid = UID(tsyntax)
    source = Source(
        fh=fh,
        path=path,
        file_meta=file_meta,
        transfer_syntax_uid=tsyntax,
        body_offset=body_offset,
        ds=Dataset(),
        pixel=None,
        trailing=Dataset(),
        little_endian=True if tsyntax == DEFLATED else bool(uid.is_little_endian),
        implicit_vr=False if tsyntax == DEFLATED else bool(uid.is_implicit_VR),
    )
    if not parse_body:
        return source
    if tsyntax == DEFLATED:
        temp = _inflate(fh, file_meta)
        fh.close()
        source._temp = temp
        source.fh = fh = temp  # type: ignore[assignment]
    little, implicit = source.little_endian, source.implicit_vr
    ds = read_dataset(fh, is_implicit_VR=implicit, is_little_endian=little, stop_when=_stop_at_pixels)
    ds.file_meta = file_meta
    source.ds = ds
    source.pixel = _locate_pixels(fh, little, implicit)
    if source.pixel is not None:
        fh.seek(source.pixel.end_offset)
        rest = fh.read(8)
        if len(rest) == 8:
            fh.seek(source.pixel.end_offset)
            source.trailing = read_dataset(fh, is_implicit_VR=implicit, is_little_endian=little)
        fh.seek(source.pixel.value_offset)
    return source


def copy_range(fh: BinaryIO, start: int, length: int | None, dst: Any) -> int:
    """Copy `length` bytes (to EOF when None) of `fh` from `start` to ``dst.write``, in chunks."""
    fh.seek(start)
    done = 0
    while length is None or done < length:
        want = _CHUNK if length is None else min(_CHUNK, length - done)
        chunk = fh.read(want)
        if not chunk:
            break
        dst.write(chunk)
        done += len(chunk)
    return done


def copy_file(fh: BinaryIO, dst: Any) -> None:
    """Copy the rest of `fh` to `dst`."""
    shutil.copyfileobj(fh, dst, _CHUNK)
