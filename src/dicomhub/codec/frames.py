"""Single frames for WADO-RS, and a decodability check for ingest.

References
----------
PS3.18 Section 8.7.3 (frames in a transfer syntax), PS3.5 Annex A.4.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from numpy.typing import NDArray
from pydicom.encaps import get_frame

from dicomhub.errors import NotFound, TranscodeError

from .pixels import check_encodable, decoded_frames, encode_frame, native_bytes
from .source import Source, open_source
from .syntaxes import EXPLICIT_BE, transfer_syntax

__all__ = ["DecodeReport", "DecodedFrame", "check_decodable", "decode_frame", "decode_report", "read_frames"]


def _stored_frame_nbytes(source: Source) -> int:
    ds = source.ds
    rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    samples = int(ds.get("SamplesPerPixel", 1))
    bits = int(ds.get("BitsAllocated", 8))
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        samples = 2  # stored subsampled: Y Y Cb Cr per two pixels (PS3.3 C.7.6.3.1.2)
    return (rows * columns * samples * bits + 7) // 8


def read_frames(
    src: str | os.PathLike[str],
    frame_numbers: Sequence[int],
    target_transfer_syntax_uid: str | None,
) -> list[bytes]:
    """Return frames of `src`, as WADO-RS ``.../frames/{list}`` asks.

    Parameters
    ----------
    src : str or os.PathLike
        A Part 10 file.
    frame_numbers : sequence of int
        1-based frame numbers, in the order wanted (repeats allowed).
    target_transfer_syntax_uid : str or None
        ``None`` for the stored syntax.  A native syntax gives raw little-endian frame
        bytes (application/octet-stream); an encapsulated one gives the codestream of
        each frame.  Asking for a lossy syntax is taken as permission to use it.

    Returns
    -------
    list of bytes
        One item per requested frame.

    Raises
    ------
    dicomhub.errors.NotFound
        For a frame number outside 1..NumberOfFrames, or an object without pixel data.
    dicomhub.errors.TranscodeError
        When the frames cannot be decoded or encoded as asked.
    """
    with open_source(src) as source:
        if source.pixel is None:
            raise NotFound("the object has no pixel data")
        count = source.number_of_frames
        bad = [n for n in frame_numbers if not 1 <= int(n) <= count]
        if bad:
            raise NotFound(f"frame {bad[0]} is out of range (the object has {count} frames)")
        stored = transfer_syntax(source.transfer_syntax_uid).uid if _known(source) else None
        target = (
            transfer_syntax(target_transfer_syntax_uid).uid
            if target_transfer_syntax_uid is not None
            else source.transfer_syntax_uid
        )
        stored_native = source.pixel.length is not None
        target_native = not transfer_syntax(target).encapsulated if _is_known(target) else stored_native
        if stored_native and target_native and source.transfer_syntax_uid != EXPLICIT_BE:
            return [_native_stored(source, int(n)) for n in frame_numbers]
        if not stored_native and target == stored:
            return [_encapsulated_stored(source, int(n) - 1, count) for n in frame_numbers]
        if not target_native:
            check_encodable(target)
        result = []
        for n in frame_numbers:
            ((arr, props),) = list(decoded_frames(source, [int(n) - 1]))
            if target_native:
                result.append(native_bytes(arr, True))
            else:
                result.append(encode_frame(arr, props, target).data)
        return result


def _is_known(uid: str) -> bool:
    try:
        transfer_syntax(uid)
    except Exception:
        return False
    return True


def _known(source: Source) -> bool:
    return _is_known(source.transfer_syntax_uid)


def _native_stored(source: Source, number: int) -> bytes:
    assert source.pixel is not None
    nbytes = _stored_frame_nbytes(source)
    start = source.pixel.value_offset + (number - 1) * nbytes
    source.fh.seek(start)
    data = source.fh.read(nbytes)
    if len(data) != nbytes:
        raise TranscodeError(f"frame {number} is truncated ({len(data)} of {nbytes} bytes)")
    return data


def _encapsulated_stored(source: Source, index: int, count: int) -> bytes:
    assert source.pixel is not None
    source.fh.seek(source.pixel.value_offset)
    offsets = source.ds.get("ExtendedOffsetTable")
    lengths = source.ds.get("ExtendedOffsetTableLengths")
    try:
        if offsets is not None and lengths is not None:
            return get_frame(source.fh, index, number_of_frames=count, extended_offsets=(offsets, lengths))
        return get_frame(source.fh, index, number_of_frames=count)
    except Exception as exc:
        raise TranscodeError(f"cannot find frame {index + 1} in the encapsulated pixel data: {exc}") from exc


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """One decoded frame, for rendering.

    Attributes
    ----------
    pixels : numpy.ndarray
        ``(rows, columns)`` or ``(rows, columns, samples)``; YBR colour converted to RGB.
    photometric_interpretation : str
        Of `pixels` (``RGB`` after a conversion).
    decoder : str
        The decoding plugin that read it (``native``, ``pylibjpeg``, ``gdcm-fallback``...).
    """

    pixels: NDArray[Any]
    photometric_interpretation: str
    decoder: str


def decode_frame(src: str | os.PathLike[str], number: int) -> DecodedFrame:
    """Decode frame `number` (1-based) of `src` for display, through the decoder chain.

    WADO-RS rendered and thumbnail images use this rather than pydicom's
    ``pixel_array``, so they get the same decoders, in the same order (the GDCM
    fallback included), as transcoding.

    Parameters
    ----------
    src : str or os.PathLike
        A Part 10 file.
    number : int
        1-based frame number.

    Returns
    -------
    DecodedFrame

    Raises
    ------
    dicomhub.errors.NotFound
        For a frame number outside 1..NumberOfFrames, or an object without pixel data.
    dicomhub.errors.TranscodeError
        When the frame cannot be decoded.
    """
    with open_source(src) as source:
        if source.pixel is None:
            raise NotFound("the object has no pixel data")
        if not 1 <= number <= source.number_of_frames:
            raise NotFound(
                f"frame {number} is out of range (the object has {source.number_of_frames} frames)"
            )
        ((arr, props),) = list(decoded_frames(source, [number - 1], as_rgb=True))
    return DecodedFrame(arr, str(props["photometric_interpretation"]), str(props["decoding_plugin"]))


@dataclass(frozen=True, slots=True)
class DecodeReport:
    """What decoding an object's pixel data found.

    Attributes
    ----------
    reason : str or None
        ``None`` when the pixel data decodes (or there is none), else a short reason.
    decoders : tuple of str
        The decoders that decoded its frames, in order of use (``native`` for
        uncompressed pixel data, ``gdcm-fallback`` when the fast path failed);
        empty when nothing decoded or there is no pixel data.
    """

    reason: str | None
    decoders: tuple[str, ...] = ()

    @property
    def decoder(self) -> str | None:
        """The decoders joined by ``+``, or None."""
        return "+".join(self.decoders) or None


def decode_report(src: str | os.PathLike[str], *, all_frames: bool = False) -> DecodeReport:
    """Decode the pixel data of `src` and say whether it decoded, and with what.

    Parameters
    ----------
    src : str or os.PathLike
        A Part 10 file.
    all_frames : bool
        Decode every frame rather than the first only.

    Returns
    -------
    DecodeReport
        ``reason`` is ``None`` when the pixel data decodes (or there is none) and each
        decoded frame holds Rows x Columns x SamplesPerPixel samples of BitsAllocated.
    """
    used: list[str] = []
    try:
        with open_source(src) as source:
            if source.pixel is None:
                return DecodeReport(None)
            ds = source.ds
            rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
            samples = int(ds.get("SamplesPerPixel", 1))
            bits = int(ds.get("BitsAllocated", 0))
            if not (rows and columns and bits):
                return DecodeReport("Rows, Columns or BitsAllocated is missing or zero")
            expected = rows * columns * samples
            indices = None if all_frames else [0]
            for number, (arr, props) in enumerate(decoded_frames(source, indices), start=1):
                plugin = str(props.get("decoding_plugin", ""))
                if plugin and plugin not in used:
                    used.append(plugin)
                if arr.size != expected or arr.dtype.itemsize != max(1, bits // 8):
                    return DecodeReport(
                        f"frame {number} decodes to {arr.size} samples of {arr.dtype.itemsize * 8} bits, "
                        f"expected {rows}x{columns}x{samples} of {bits}",
                        tuple(used),
                    )
    except TranscodeError as exc:
        return DecodeReport(str(exc))
    except Exception as exc:  # anything a broken file can make a decoder raise
        return DecodeReport(f"{type(exc).__name__}: {exc}")
    return DecodeReport(None, tuple(used))


def check_decodable(src: str | os.PathLike[str], *, all_frames: bool = False) -> str | None:
    """Return why the pixel data of `src` does not decode, or None when it does.

    Parameters
    ----------
    src : str or os.PathLike
        A Part 10 file.
    all_frames : bool
        Decode every frame rather than the first only.

    Returns
    -------
    str or None
        ``None`` when the pixel data decodes (or there is none) and each decoded frame
        holds Rows x Columns x SamplesPerPixel samples of BitsAllocated; otherwise a
        short reason.  :func:`decode_report` also says which decoder read it.
    """
    return decode_report(src, all_frames=all_frames).reason
