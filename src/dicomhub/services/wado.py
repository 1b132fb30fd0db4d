"""Retrieve for WADO: instances, metadata, frames, bulk data and pixels to render.

Protocol-neutral: the web adapter (``web/dicomweb/wado.py``) negotiates media
types and frames the multipart bodies; this service finds the instances,
reads their bytes (streamed, or by byte range) and locates values inside the
stored Part 10 objects.

Values are located with a deferred header parse (``pydicom.dcmread`` with
``defer_size``): elements larger than the threshold are not read, only their
position in the blob is recorded, so a frame or a bulk data value is one
seek and one read of the stored file.

References
----------
PS3.18 Section 10.4 (WADO-RS retrieve), 8.7.3 (media types of bulk data and
pixel data), PS3.5 A.4 (encapsulated pixel data).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from dicomhub import codec
from dicomhub.errors import DicomhubError, InvalidRequest, NotFound, TranscodeError
from dicomhub.index.repository import IndexRepository
from dicomhub.model.caller import Caller
from dicomhub.model.coercion import PatientCoercion, coerce_json
from dicomhub.model.encoding import little_endian_alternatives, reencode
from dicomhub.model.extract import read_header
from dicomhub.model.identifiers import Level, require_uid
from dicomhub.model.part10 import file_meta_header
from dicomhub.model.query import Condition, Query, Single
from dicomhub.model.records import InstanceRow
from dicomhub.services.blobfiles import blob_as_file
from dicomhub.services.coercion import ArchivePatients, coerce_part10
from dicomhub.services.headers import header_to_json
from dicomhub.services.search import SearchService
from dicomhub.services.transcode import TranscodeService
from dicomhub.storage.base import BlobStore

__all__ = [
    "ENCAPSULATED_DOCUMENT",
    "NATIVE_SYNTAXES",
    "PIXEL_DATA",
    "VIDEO_MEDIA_TYPES",
    "BulkValue",
    "CannotDecode",
    "CannotEncode",
    "PixelLayout",
    "RenderSource",
    "WadoService",
]

LOGGER = logging.getLogger("dicomhub.wado")

PIXEL_DATA = 0x7FE00010
# Elements above this many bytes are located, not read, by the header parse.
_DEFER = 1024
_CHUNK = 1024 * 1024
# Larger objects go through the codec layer's frame-by-frame path instead.
_REENCODE_IN_MEMORY = 64 * 1024 * 1024

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
#: Transfer syntaxes whose pixel data is native (not encapsulated).
NATIVE_SYNTAXES = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE, DEFLATED})
#: Video transfer syntaxes and the media type of their bit stream (PS3.18 Table 8.7.4-1):
#: the pixel data fragments, concatenated, are the stream (PS3.5 8.2.5 to 8.2.8).
VIDEO_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.100": "video/mpeg",  # MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.101": "video/mpeg",  # MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.102": "video/mp4",  # MPEG-4 AVC/H.264 High Profile / Level 4.1
    "1.2.840.10008.1.2.4.103": "video/mp4",  # ... BD-compatible
    "1.2.840.10008.1.2.4.104": "video/mp4",  # ... for 2D Video
    "1.2.840.10008.1.2.4.105": "video/mp4",  # ... for 3D Video
    "1.2.840.10008.1.2.4.106": "video/mp4",  # ... Stereo High Profile
    "1.2.840.10008.1.2.4.107": "video/mp4",  # HEVC/H.265 Main Profile / Level 5.1
    "1.2.840.10008.1.2.4.108": "video/mp4",  # HEVC/H.265 Main 10 Profile / Level 5.1
}
#: Encapsulated Document (0042,0011).
ENCAPSULATED_DOCUMENT = 0x00420011
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)


class CannotEncode(InvalidRequest):
    """The object cannot be given in the requested transfer syntax (no transcoder yet)."""


class CannotDecode(InvalidRequest):
    """The pixel data cannot be decoded (compressed syntax without a codec, odd layout)."""


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """Where the frames of one instance are.

    For native pixel data, frame ``n`` (1-based) is the ``frame_size`` bytes at
    ``value_offset + (n - 1) * frame_size`` of the blob. Encapsulated pixel
    data (``encapsulated``) is read frame by frame by the codec layer.
    """

    transfer_syntax_uid: str
    number_of_frames: int
    value_offset: int
    value_length: int
    frame_size: int
    bits_allocated: int
    encapsulated: bool = False


@dataclass(frozen=True, slots=True)
class BulkValue:
    """A bulk data value: either in memory, or a byte range of the blob."""

    length: int
    data: bytes | None = None
    offset: int = 0


@dataclass(frozen=True, slots=True)
class RenderSource:
    """One decoded frame and the header values that rendering needs."""

    pixels: np.ndarray[Any, Any]
    photometric_interpretation: str
    rescale_slope: float
    rescale_intercept: float
    window_center: float | None
    window_width: float | None
    bits_stored: int
    pixel_representation: int


def _first_float(value: object) -> float | None:
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _int(ds: Dataset, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        return default if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return default


class WadoService:
    """The retrieve side of DICOMweb (WADO-RS, WADO-URI)."""

    def __init__(
        self,
        index: IndexRepository,
        search: SearchService,
        blobs: BlobStore,
        transcode: TranscodeService,
        patients: ArchivePatients | None = None,
    ) -> None:
        """``patients``: the patient coercions objects and metadata leave with."""
        self.index = index
        self.search = search
        self.blobs = blobs
        self.transcode = transcode
        self.patients = patients

    def coercions(self, rows: Sequence[InstanceRow]) -> dict[str, PatientCoercion]:
        """The patient coercions of the studies of ``rows``, by Study Instance UID."""
        return {} if self.patients is None or not rows else self.patients.coercions(rows)

    # ------------------------------------------------------------ finding

    @staticmethod
    def query(
        study: str, series: str | None = None, instance: str | None = None, *, include_rejected: bool = False
    ) -> Query:
        """An IMAGE-level query for the instances below the given UIDs (rejected ones
        only with ``include_rejected``).

        Raises
        ------
        InvalidIdentifier
            When a UID is malformed.
        """
        conditions = [Condition("StudyInstanceUID", "UI", Single(require_uid(study, "StudyInstanceUID")))]
        if series is not None:
            conditions.append(
                Condition("SeriesInstanceUID", "UI", Single(require_uid(series, "SeriesInstanceUID")))
            )
        if instance is not None:
            conditions.append(
                Condition("SOPInstanceUID", "UI", Single(require_uid(instance, "SOPInstanceUID")))
            )
        return Query(level=Level.IMAGE, conditions=tuple(conditions), include_rejected=include_rejected)

    def instances(
        self,
        caller: Caller,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        *,
        include_rejected: bool = False,
    ) -> list[InstanceRow]:
        """The instances of a study, series or instance; :class:`NotFound` when there are none."""
        query = self.query(study, series, instance, include_rejected=include_rejected)
        rows = self.search.instances(query, caller)
        if not rows:
            raise NotFound(_what(study, series, instance))
        return rows

    def metadata(
        self,
        caller: Caller,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        *,
        include_rejected: bool = False,
    ) -> list[tuple[InstanceRow, str]]:
        """Instances and their header as DICOM JSON text (``bulkdata:GGGGEEEE`` placeholders).

        The JSON comes from the index in the same query as the rows; headers
        not prepared yet are computed from the blob and saved.
        """
        query = self.query(study, series, instance, include_rejected=include_rejected)
        pairs = self.search.instances_with_header_json(query, caller)
        if not pairs:
            raise NotFound(_what(study, series, instance))
        out: list[tuple[InstanceRow, str]] = []
        computed: list[tuple[int, str]] = []
        for row, text in pairs:
            if text is None:
                try:
                    text = header_to_json(read_header(self.blobs.read(row.blob_key)))
                except DicomhubError:
                    LOGGER.exception("cannot read header of instance %s", row.pk)
                    text = "{}"
                else:
                    computed.append((row.pk, text))
            out.append((row, text))
        if computed:
            self.index.set_header_json(computed)
        coerced = self.coercions([row for row, _text in out])
        if coerced:
            out = [
                (row, text if row.study_instance_uid not in coerced
                 else coerce_json(text, coerced[row.study_instance_uid]))
                for row, text in out
            ]  # fmt: skip
        return out

    # ------------------------------------------------------------ bytes

    def stream(self, row: InstanceRow, chunk_size: int = _CHUNK) -> Iterator[bytes]:
        """The stored Part 10 bytes of ``row``, in chunks (never the whole object at once)."""
        with self.blobs.open(row.blob_key) as fp:
            while True:
                chunk = fp.read(chunk_size)
                if not chunk:
                    return
                yield chunk

    def stream_range(
        self, row: InstanceRow, offset: int, length: int, chunk_size: int = _CHUNK
    ) -> Iterator[bytes]:
        """``length`` bytes of the blob of ``row`` from ``offset``, in chunks."""
        with self.blobs.open(row.blob_key) as fp:
            fp.seek(offset)
            left = length
            while left > 0:
                chunk = fp.read(min(chunk_size, left))
                if not chunk:
                    LOGGER.error("instance %s: blob ends before the value", row.sop_instance_uid)
                    return
                left -= len(chunk)
                yield chunk

    def read_range(self, row: InstanceRow, offset: int, length: int) -> bytes:
        """``length`` bytes of the blob of ``row`` from ``offset``."""
        with self.blobs.open(row.blob_key) as fp:
            fp.seek(offset)
            data = fp.read(length)
        if len(data) != length:
            raise InvalidRequest(f"instance {row.sop_instance_uid}: stored object is shorter than expected")
        return data

    def can_encode(self, row: InstanceRow, transfer_syntax_uid: str) -> bool:
        """True when ``row`` can be given in ``transfer_syntax_uid``.

        A lossy syntax counts only because the client named it: WADO-RS
        never picks one on its own.
        """
        return self.transcode.can_produce(row, transfer_syntax_uid, allow_lossy=True)

    def encoded(
        self, row: InstanceRow, transfer_syntax_uid: str, coercion: PatientCoercion | None = None
    ) -> Iterator[bytes]:
        """The Part 10 object of ``row`` in ``transfer_syntax_uid``, in chunks.

        Transcoding happens in this call, into a temporary file that the
        returned iterator streams and then removes. With a patient ``coercion``
        the object is corrected in memory (one at a time) after any transcoding.

        Raises
        ------
        CannotEncode
            When the stored object cannot be given in that syntax.
        """
        if coercion is not None:
            return self._coerced(self.encoded(row, transfer_syntax_uid), coercion)
        if transfer_syntax_uid == row.transfer_syntax_uid:
            return self.stream(row)
        if not self.can_encode(row, transfer_syntax_uid):
            raise CannotEncode(
                f"instance {row.sop_instance_uid} is stored in {row.transfer_syntax_uid} and "
                f"cannot be transcoded to {transfer_syntax_uid} in this install"
            )
        if transfer_syntax_uid in little_endian_alternatives(row.transfer_syntax_uid) and (
            row.size <= _REENCODE_IN_MEMORY
        ):
            return self._reencoded(row, transfer_syntax_uid)
        return self._transcoded(row, transfer_syntax_uid)

    @staticmethod
    def _coerced(chunks: Iterator[bytes], coercion: PatientCoercion) -> Iterator[bytes]:
        data = coerce_part10(b"".join(chunks), coercion)
        for start in range(0, len(data), _CHUNK):
            yield data[start : start + _CHUNK]

    def _transcoded(self, row: InstanceRow, transfer_syntax_uid: str) -> Iterator[bytes]:
        # Transcoded now rather than when the first chunk is pulled, so that a
        # caller asking before it starts a response can still answer 406.
        # Later in a multipart body the client sees a broken stream, never a wrong object.
        try:
            result = self.transcode.transcode(row, transfer_syntax_uid, allow_lossy=True)
        except TranscodeError as exc:
            raise CannotEncode(str(exc)) from exc
        return result.chunks()

    def frames_in(
        self, row: InstanceRow, numbers: Sequence[int], transfer_syntax_uid: str
    ) -> list[bytes]:
        """Frames ``numbers`` (1-based) decoded and, for a compressed target, re-encoded.

        Raises
        ------
        NotFound
            For a frame number out of range.
        CannotEncode
            When the frames cannot be given in that syntax.
        """
        layout, _ds = self.pixel_layout(row)
        _check_frame_numbers(row, layout, numbers)
        try:
            return self.transcode.frames(row, list(numbers), transfer_syntax_uid)
        except TranscodeError as exc:
            raise CannotEncode(str(exc)) from exc

    def _reencoded(self, row: InstanceRow, transfer_syntax_uid: str) -> Iterator[bytes]:
        # One instance in memory at a time: re-encoding needs a full parse.
        body = reencode(self.blobs.read(row.blob_key), transfer_syntax_uid)
        yield file_meta_header(row.sop_class_uid, row.sop_instance_uid, transfer_syntax_uid)
        for start in range(0, len(body), _CHUNK):
            yield body[start : start + _CHUNK]

    # ------------------------------------------------------------ values

    def _header(self, row: InstanceRow) -> Dataset:
        """The data set of ``row`` with large values deferred (located, not read)."""
        try:
            with self.blobs.open(row.blob_key) as fp:
                return pydicom.dcmread(fp, defer_size=_DEFER, force=True)
        except DicomhubError:
            raise
        except Exception as exc:  # pydicom raises a wide variety on broken input
            raise CannotDecode(f"instance {row.sop_instance_uid} cannot be parsed: {exc}") from exc

    def pixel_layout(self, row: InstanceRow) -> tuple[PixelLayout, Dataset]:
        """Where the frames of ``row`` are, and its (deferred) header.

        Raises
        ------
        NotFound
            When the instance has no Pixel Data.
        CannotDecode
            When native frames are not byte-aligned or not located.
        """
        ds = self._header(row)
        elem = ds.get_item(PIXEL_DATA, keep_deferred=True)
        if elem is None:
            raise NotFound(f"instance {row.sop_instance_uid} has no pixel data")
        frames = max(1, _int(ds, "NumberOfFrames", 1))
        bits = _int(ds, "BitsAllocated", 16)
        ts = row.transfer_syntax_uid
        if ts not in NATIVE_SYNTAXES:
            # Not read here: a multi-frame value can be hundreds of MB.
            return PixelLayout(ts, frames, 0, 0, 0, bits, encapsulated=True), ds
        if ts == DEFLATED:
            raise CannotDecode("frames of deflated objects are not supported yet")
        rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
        spp = _int(ds, "SamplesPerPixel", 1)
        bits_frame = rows * cols * spp * bits
        if bits_frame % 8:
            raise CannotDecode("frames that do not end on a byte boundary are not supported")
        if not isinstance(elem, RawDataElement):
            raise CannotDecode("pixel data not located")
        # Deferred (value None) or small enough to have been read: the raw
        # element knows where its value starts either way.
        return PixelLayout(ts, frames, elem.value_tell, elem.length, bits_frame // 8, bits), ds

    def frames(self, row: InstanceRow, numbers: Sequence[int]) -> tuple[PixelLayout, list[bytes]]:
        """The bytes of frames ``numbers`` (1-based) as stored: native or compressed.

        Raises
        ------
        NotFound
            When a frame number is out of range (or there is no pixel data).
        """
        layout, _ds = self.pixel_layout(row)
        _check_frame_numbers(row, layout, numbers)
        if layout.encapsulated:
            try:
                return layout, self.transcode.frames(row, list(numbers), None)
            except TranscodeError as exc:
                raise CannotDecode(f"instance {row.sop_instance_uid}: {exc}") from exc
        if layout.frame_size * layout.number_of_frames > layout.value_length:
            raise CannotDecode(f"instance {row.sop_instance_uid}: pixel data shorter than its frames")
        with self.blobs.open(row.blob_key) as fp:
            out = []
            for n in numbers:
                fp.seek(layout.value_offset + (n - 1) * layout.frame_size)
                out.append(fp.read(layout.frame_size))
        return layout, out

    def bulk(self, row: InstanceRow, tag: int) -> BulkValue:
        """A bulk data value of ``row``: the top-level element ``tag``, else the first nested one.

        Values of an object stored big endian come in memory and little endian
        (bulk data is little endian, PS3.18 8.7.3.3.2); Pixel Data is left to
        the frame path.

        Raises
        ------
        NotFound
            When the element is absent.
        """
        ds = self._header(row)
        found = _find(ds, tag)
        if found is None:
            raise NotFound(
                f"instance {row.sop_instance_uid} has no element ({tag >> 16:04X},{tag & 0xFFFF:04X})"
            )
        word = _WORD_SIZES.get(str(found.VR)) if row.transfer_syntax_uid == EXPLICIT_VR_BE else None
        if isinstance(found, RawDataElement) and found.value is None:
            if word is None or tag == PIXEL_DATA:
                return BulkValue(length=found.length, offset=found.value_tell)
            value: object = self.read_range(row, found.value_tell, found.length)
        else:
            value = found.value
        if isinstance(value, (bytes, bytearray)):
            data = bytes(value)
            if word is not None and tag != PIXEL_DATA:
                data = _little_endian(data, word)
            return BulkValue(length=len(data), data=data)
        raise NotFound(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not bulk data")

    def video_stream(self, row: InstanceRow, chunk_size: int = _CHUNK) -> Iterator[bytes]:
        """The video bit stream of ``row``: its pixel data fragments, in order, in chunks.

        Raises
        ------
        NotFound
            When the instance has no encapsulated pixel data.
        CannotDecode
            When the pixel data is not a sequence of items (checked before
            the first chunk; a later break ends the stream early and is logged).

        References
        ----------
        PS3.5 A.4 (encapsulated pixel data), 8.2.5 (MPEG2 video in fragments).
        """
        layout, ds = self.pixel_layout(row)
        elem = ds.get_item(PIXEL_DATA, keep_deferred=True)
        if not layout.encapsulated or not isinstance(elem, RawDataElement):
            raise NotFound(f"instance {row.sop_instance_uid} has no encapsulated pixel data")
        with self.blobs.open(row.blob_key) as fp:
            fp.seek(elem.value_tell)
            first = fp.read(8)
        if len(first) != 8 or struct.unpack("<HH", first[:4]) != _ITEM:
            raise CannotDecode(f"instance {row.sop_instance_uid}: pixel data is not encapsulated")
        return self._fragments(row, elem.value_tell, chunk_size)

    def _fragments(self, row: InstanceRow, offset: int, chunk_size: int) -> Iterator[bytes]:
        with self.blobs.open(row.blob_key) as fp:
            fp.seek(offset)
            basic_offset_table = True
            while True:
                head = fp.read(8)
                if len(head) != 8:
                    LOGGER.error("instance %s: pixel data ends without a delimiter", row.sop_instance_uid)
                    return
                group, element, length = struct.unpack("<HHL", head)
                if (group, element) == _SEQUENCE_DELIMITER:
                    return
                if (group, element) != _ITEM or length == 0xFFFFFFFF:
                    LOGGER.error("instance %s: a pixel data item is malformed", row.sop_instance_uid)
                    return
                if basic_offset_table:  # the first item holds offsets, not stream
                    basic_offset_table = False
                    fp.seek(length, 1)
                    continue
                left = length
                while left > 0:
                    chunk = fp.read(min(chunk_size, left))
                    if not chunk:
                        LOGGER.error("instance %s: a pixel data item is truncated", row.sop_instance_uid)
                        return
                    left -= len(chunk)
                    yield chunk

    def render_source(self, row: InstanceRow, frame: int = 1) -> RenderSource:
        """Frame ``frame`` (1-based) of ``row`` decoded, with the values rendering needs.

        Raises
        ------
        NotFound
            When the frame is out of range.
        CannotDecode
            When the pixel data cannot be decoded (e.g. no codec for its syntax).
        """
        layout, ds = self.pixel_layout(row)
        if not 1 <= frame <= layout.number_of_frames:
            raise NotFound(
                f"frame {frame} is out of range: instance {row.sop_instance_uid} has "
                f"{layout.number_of_frames} frame(s)"
            )
        try:
            # The codec's decoder chain (the GDCM fallback included), as for transcoding:
            # pydicom's own order would put its gdcm plugin first, in this process.
            with blob_as_file(self.blobs, row.blob_key) as path:
                decoded = codec.decode_frame(path, frame)
        except TranscodeError as exc:
            raise CannotDecode(
                f"the pixel data of instance {row.sop_instance_uid} ({row.transfer_syntax_uid}) "
                f"cannot be decoded: {exc}"
            ) from exc
        return RenderSource(
            pixels=decoded.pixels,
            photometric_interpretation=decoded.photometric_interpretation,
            rescale_slope=_first_float(ds.get("RescaleSlope")) or 1.0,
            rescale_intercept=_first_float(ds.get("RescaleIntercept")) or 0.0,
            window_center=_first_float(ds.get("WindowCenter")),
            window_width=_first_float(ds.get("WindowWidth")),
            bits_stored=_int(ds, "BitsStored", layout.bits_allocated),
            pixel_representation=_int(ds, "PixelRepresentation", 0),
        )


#: Bytes per word of the binary VRs that big-endian objects store byte-swapped.
_WORD_SIZES = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def _little_endian(data: bytes, word: int) -> bytes:
    """``data``, words of ``word`` bytes stored big endian, as little endian."""
    if len(data) % word:
        return data  # not whole words: nothing sound to swap
    return np.frombuffer(data, dtype=f">u{word}").astype(f"<u{word}").tobytes()


def _check_frame_numbers(row: InstanceRow, layout: PixelLayout, numbers: Sequence[int]) -> None:
    for n in numbers:
        if not 1 <= n <= layout.number_of_frames:
            raise NotFound(
                f"frame {n} is out of range: instance {row.sop_instance_uid} has "
                f"{layout.number_of_frames} frame(s)"
            )


def _what(study: str, series: str | None, instance: str | None) -> str:
    if instance is not None:
        return f"no instance {instance} in series {series} of study {study}"
    if series is not None:
        return f"no series {series} in study {study}"
    return f"no study {study}"


def _find(ds: Dataset, tag: int) -> DataElement | RawDataElement | None:
    """Element ``tag`` at the top level of ``ds``, else depth-first in its sequences."""
    elem = ds.get_item(tag, keep_deferred=True)
    if elem is not None:
        return elem
    for key in list(ds.keys()):
        raw = ds.get_item(key, keep_deferred=True)
        if raw is None or (isinstance(raw, RawDataElement) and raw.value is None):
            continue
        try:
            is_sequence = raw.VR == "SQ" or (raw.VR is None and dictionary_VR(key) == "SQ")
        except KeyError:
            is_sequence = False
        if not is_sequence:
            continue
        value = ds[key].value
        if isinstance(value, DicomSequence):
            for item in value:
                hit = _find(item, tag)
                if hit is not None:
                    return hit
    return None
