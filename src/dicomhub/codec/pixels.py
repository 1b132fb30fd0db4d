"""Frame-at-a-time decoding and encoding on top of ``pydicom.pixels``.

Decoding reads from the open file (:class:`~dicomhub.codec.source.Source`), one
frame at a time; encoding turns one decoded frame into one codestream.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID

from dicomhub.errors import TranscodeError

from . import gdcm_plugin, htj2k, jpeg_baseline
from .source import Source
from .syntaxes import (
    DEFLATED,
    EXPLICIT_LE,
    J2K,
    J2K_LOSSLESS,
    JPEG_10918_UIDS,
    JPEG_BASELINE,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR,
    RLE,
)

__all__ = [
    "EncodedFrame",
    "LOSSY_METHODS",
    "NATIVE",
    "decoded_frames",
    "decoding_plugins",
    "encode_frame",
    "encoding_plugins",
    "frame_nbytes",
    "register_fallback",
]

Array = NDArray[Any]

#: PS3.3 C.7.6.1.1.5.1: (0028,2114) Lossy Image Compression Method defined terms.
LOSSY_METHODS = {
    JPEG_BASELINE: "ISO_10918_1",
    JPEG_LS_NEAR: "ISO_14495_1",
    J2K: "ISO_15444_1",
    htj2k.HTJ2K: "ISO_15444_15",
}
# The default lossy settings: visually lossless for diagnostic images.
J2K_COMPRESSION_RATIO = 10.0
JLS_NEAR_ERROR = 2

#: The ``decoding_plugin`` of a frame read from uncompressed pixel data.
NATIVE = "native"
# The order dicomhub tries pydicom's decoding plugins in: the pylibjpeg family
# (libjpeg, OpenJPEG, RLE) is the fast path, pyjpegls / pydicom's RLE / Pillow
# the alternatives already installed, GDCM the fallback for what they miss.
_PLUGIN_PREFERENCE = ("pylibjpeg", "pyjpegls", "pydicom", "pillow", gdcm_plugin.PLUGIN)
# The same for pydicom's encoding plugins; GDCM is not among them (see encoding_plugins).
_ENCODER_PREFERENCE = ("pylibjpeg", "pyjpegls", "pydicom")
_REGISTER = threading.Lock()
_registered = False

_ENCODABLE = (
    frozenset({RLE, JPEG_LS_LOSSLESS, JPEG_LS_NEAR, J2K_LOSSLESS, J2K, JPEG_BASELINE}) | htj2k.HTJ2K_UIDS
)


def _invalid_frames(ds: Dataset) -> bool:
    value = ds.get("NumberOfFrames")
    if value in (None, ""):
        return False
    try:
        int(value)
    except (TypeError, ValueError):
        return True
    return False


def decoder_options(source: Source, as_rgb: bool | None = None) -> dict[str, Any]:
    """The keyword options for pydicom's decoders, from the source header.

    `as_rgb` None applies the transcoding rule below; True also converts YBR_FULL
    (and uncompressed YBR_FULL_422) to RGB, as a rendered image needs.
    """
    if source.pixel is None:
        raise TranscodeError("the object has no pixel data")
    ds = source.ds
    if _invalid_frames(ds):
        # GDCM and DCMTK read an unparsable NumberOfFrames ("1A") as 1, and so does
        # Source.number_of_frames; pydicom would refuse the whole pixel module.
        ds = Dataset(ds)
        ds.NumberOfFrames = source.number_of_frames
    try:
        opts = as_pixel_options(ds)
    except (ValueError, TypeError, AttributeError) as exc:  # e.g. NumberOfFrames "1A"
        raise TranscodeError(f"the pixel module cannot be read: {_short(exc)}") from exc
    # A deflated source was inflated to Explicit VR Little Endian by open_source().
    ts = EXPLICIT_LE if source.transfer_syntax_uid == DEFLATED else source.transfer_syntax_uid
    opts["transfer_syntax_uid"] = UID(ts)
    opts["pixel_keyword"] = source.pixel.keyword
    if source.pixel.vr is not None:
        opts["pixel_vr"] = source.pixel.vr
    # The JPEG (ISO 10918) codecs undo the YCbCr transform themselves, so their
    # YBR_FULL(_422) output is RGB.  Elsewhere YBR_FULL is kept: converting it would lose bits.
    opts["as_rgb"] = ts in JPEG_10918_UIDS if as_rgb is None else as_rgb
    return opts


def register_fallback() -> None:
    """Register the GDCM fallback plugin with pydicom's decoders (once; thread-safe).

    The plugin (:mod:`dicomhub.codec.gdcm_plugin`) is added to every decoder of a
    syntax it supports, under its own label, so pydicom's own ``gdcm`` plugin is
    left as it is.  Without ``python-gdcm`` it registers as unavailable.
    """
    global _registered
    if _registered:
        return
    with _REGISTER:
        if _registered:
            return
        for ts in gdcm_plugin.DECODER_DEPENDENCIES:
            # pydicom's decoders are module globals: another copy of this module
            # (a test reloading it) may have registered the plugin already.
            with contextlib.suppress(ValueError):
                get_decoder(ts).add_plugin(
                    gdcm_plugin.PLUGIN, ("dicomhub.codec.gdcm_plugin", "_decode_frame")
                )
        # pydicom logs every plugin failure with its traceback at ERROR before raising;
        # with the plugin named per attempt, a fast-path miss that the fallback then
        # decodes would read as an error in the archive's log. dicomhub reports a real
        # failure itself, with each plugin's reason (TranscodeError, the decode check).
        logging.getLogger("pydicom.pixels.decoders.base").addFilter(_drop_plugin_tracebacks)
        _registered = True


def _drop_plugin_tracebacks(record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and record.funcName == "_decode_frame")


def decoding_plugins(transfer_syntax_uid: str) -> tuple[str, ...]:
    """The pydicom decoding plugins dicomhub tries for `transfer_syntax_uid`, in order.

    The pylibjpeg family first (it is the fast path), then the other installed
    plugins, then the GDCM fallback.  pydicom's own ``gdcm`` plugin is never used:
    pydicom would try it first of all, and it refuses 12-bit JPEG Extended.

    Parameters
    ----------
    transfer_syntax_uid : str
        An encapsulated Transfer Syntax UID.

    Returns
    -------
    tuple of str
        Plugin labels, empty when no installed plugin decodes the syntax (or it is
        native: native pixel data needs no plugin).
    """
    register_fallback()
    try:
        decoder = get_decoder(transfer_syntax_uid)
    except NotImplementedError:
        return ()
    if not decoder.UID.is_encapsulated:
        return ()
    available = set(decoder.available_plugins)
    return tuple(name for name in _PLUGIN_PREFERENCE if name in available)


def decoded_frames(
    source: Source, indices: Iterable[int] | None = None, *, as_rgb: bool | None = None
) -> Iterator[tuple[Array, dict[str, Any]]]:
    """Yield ``(array, pixel properties)`` for each frame (or the 0-based `indices`).

    The array is ``(rows, columns[, samples])`` with PlanarConfiguration 0; the
    properties are pydicom's (photometric_interpretation after decoding, etc.),
    plus ``decoding_plugin``: the plugin that decoded the frame (``"native"`` for
    uncompressed pixel data).

    `as_rgb`: see :func:`decoder_options` (None: YBR is converted to RGB for the JPEG
    family only, as transcoding wants; True converts YBR colour pixels to RGB
    whatever the syntax, to compare two encodings of one image).

    Each frame is decoded by the first plugin of :func:`decoding_plugins` that
    succeeds: when one fails on a frame, that frame and the frames after it go to
    the next one (so an object whose first frame needs GDCM is not tried with
    pylibjpeg again for every frame).

    Raises
    ------
    dicomhub.errors.TranscodeError
        When the pixel data cannot be decoded.
    """
    opts = decoder_options(source, as_rgb)
    ts = str(opts["transfer_syntax_uid"])
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise TranscodeError(f"no decoder for transfer syntax {ts}") from exc
    plugins: tuple[str, ...] = decoding_plugins(ts) if decoder.UID.is_encapsulated else (NATIVE,)
    if not plugins:
        raise TranscodeError(f"pixel data in {decoder.UID.name} cannot be decoded in this install")
    assert source.pixel is not None  # checked by decoder_options
    wanted = list(indices) if indices is not None else None
    expected = len(wanted) if wanted is not None else source.number_of_frames
    count = 0
    failures: list[str] = []
    for plugin in plugins:
        # The first attempt reads the frames as asked; a later one resumes at the frame that failed.
        todo = (
            wanted[count:] if wanted is not None else (None if count == 0 else list(range(count, expected)))
        )
        source.fh.seek(source.pixel.value_offset)
        try:
            for arr, props in decoder.iter_array(
                source.fh,
                indices=todo,
                raw=False,
                decoding_plugin="" if plugin == NATIVE else plugin,
                **opts,
            ):
                if count == expected:
                    break  # JPEG may yield more frames than NumberOfFrames
                count += 1
                out = dict(props)
                out["decoding_plugin"] = plugin
                yield arr, out
        except TranscodeError:
            raise
        except Exception as exc:
            # pydicom wraps each plugin's error in "Unable to decode as exceptions were
            # raised by all available plugins: <plugin>: ...": keep the plugin's words.
            text = _short(exc)
            text = text.split(f"available plugins: {plugin}: ", 1)[-1]
            failures.append(f"{plugin}: {text}")
            continue
        break
    else:
        detail = "; ".join(failures)
        raise TranscodeError(f"cannot decode the pixel data ({decoder.UID.name}): {detail}")
    if count < expected:
        raise TranscodeError(f"the pixel data holds {count} frames, NumberOfFrames says {expected}")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return " ".join(line.strip() for line in text[:3]) or type(exc).__name__


def frame_nbytes(props: dict[str, Any]) -> int:
    """Bytes of one native frame with these pixel properties."""
    pixels = int(props["rows"]) * int(props["columns"]) * int(props["samples_per_pixel"])
    return (pixels * int(props["bits_allocated"]) + 7) // 8


@dataclass(slots=True)
class EncodedFrame:
    """One encoded frame and the pixel module values that describe it."""

    data: bytes
    photometric_interpretation: str
    extra: dict[str, Any] = field(default_factory=dict)


def check_encodable(target_uid: str) -> None:
    """Raise TranscodeError unless pixel data can be encoded in `target_uid` here."""
    from .syntaxes import can_encode

    if target_uid not in _ENCODABLE or not can_encode(target_uid):
        from pydicom.uid import UID

        raise TranscodeError(f"pixel data cannot be encoded as {UID(target_uid).name} in this install")


def encode_frame(arr: Array, props: dict[str, Any], target_uid: str) -> EncodedFrame:
    """Encode one decoded frame in the encapsulated syntax `target_uid`.

    Parameters
    ----------
    arr : numpy.ndarray
        As yielded by :func:`decoded_frames`.
    props : dict
        Its pixel properties.
    target_uid : str
        RLE, JPEG-LS (lossless, near-lossless), JPEG 2000 (lossless, lossy) or JPEG baseline.

    Returns
    -------
    EncodedFrame

    Raises
    ------
    dicomhub.errors.TranscodeError
        When the pixel data does not suit the target (bit depth, colour space, sign).
    """
    pi = str(props["photometric_interpretation"])
    bits_stored = int(props.get("bits_stored", props["bits_allocated"]))
    pixel_representation = int(props.get("pixel_representation", 0))
    if target_uid in htj2k.HTJ2K_UIDS:
        data, out_pi = htj2k.encode_frame(arr, pi, target_uid)
        return EncodedFrame(data, out_pi)
    if target_uid == JPEG_BASELINE:
        data, out_pi = jpeg_baseline.encode_frame(
            arr, pi, bits_stored=bits_stored, pixel_representation=pixel_representation
        )
        return EncodedFrame(data, out_pi)
    opts: dict[str, Any] = {
        "rows": int(props["rows"]),
        "columns": int(props["columns"]),
        "samples_per_pixel": int(props["samples_per_pixel"]),
        "bits_allocated": int(props["bits_allocated"]),
        "bits_stored": bits_stored,
        "pixel_representation": pixel_representation,
        "photometric_interpretation": pi,
        "number_of_frames": 1,
        "planar_configuration": 0,
    }
    out_pi = pi
    if target_uid in (J2K_LOSSLESS, J2K):
        if pi == "RGB":
            # The reversible / irreversible colour transform (PS3.5 8.2.4) compresses better.
            out_pi = "YBR_RCT" if target_uid == J2K_LOSSLESS else "YBR_ICT"
            opts["photometric_interpretation"] = out_pi
        opts["use_mct"] = out_pi in ("YBR_RCT", "YBR_ICT")
        if target_uid == J2K:
            if pi == "PALETTE COLOR":
                raise TranscodeError("lossy JPEG 2000 cannot encode PALETTE COLOR indices")
            opts["j2k_cr"] = [J2K_COMPRESSION_RATIO]
    elif target_uid == JPEG_LS_NEAR:
        if pi == "PALETTE COLOR":
            raise TranscodeError("near-lossless JPEG-LS cannot encode PALETTE COLOR indices")
        opts["jls_error"] = JLS_NEAR_ERROR
    failures = []
    for plugin in encoding_plugins(target_uid):
        try:
            data = get_encoder(target_uid).encode(arr, encoding_plugin=plugin, **opts)
        except Exception as exc:
            failures.append(f"{plugin}: {_short(exc)}")
            continue
        return EncodedFrame(bytes(data), out_pi)
    detail = "; ".join(failures) or "no encoder installed"
    raise TranscodeError(f"cannot encode the pixel data as {_name(target_uid)}: {detail}")


def encoding_plugins(transfer_syntax_uid: str) -> tuple[str, ...]:
    """The encoders dicomhub uses for `transfer_syntax_uid`, in the order it tries them.

    pydicom's plugins in :data:`_ENCODER_PREFERENCE` order (pydicom itself would put
    ``gdcm`` first for RLE once python-gdcm is installed; GDCM stays a decoder here),
    ``pillow`` for JPEG baseline (see ``jpeg_baseline.py``) and ``imagecodecs`` for HTJ2K.

    Parameters
    ----------
    transfer_syntax_uid : str
        An encapsulated Transfer Syntax UID.

    Returns
    -------
    tuple of str
        Empty when this install cannot encode the syntax.
    """
    if transfer_syntax_uid == JPEG_BASELINE:
        return ("pillow",)
    if transfer_syntax_uid in htj2k.HTJ2K_UIDS:
        return ("imagecodecs",) if htj2k.is_available() else ()
    try:
        encoder = get_encoder(transfer_syntax_uid)
    except NotImplementedError:
        return ()
    available = set(encoder.available_plugins)
    return tuple(name for name in _ENCODER_PREFERENCE if name in available)


def _name(uid: str) -> str:
    from pydicom.uid import UID

    return str(UID(uid).name)


def native_bytes(arr: Array, little_endian: bool) -> bytes:
    """The frame as native bytes in the given byte order."""
    if arr.dtype.itemsize == 1:
        return arr.tobytes()
    if little_endian:
        return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder(">")).tobytes()
