"""GDCM as the fallback pixel decoder: a ``pydicom.pixels`` decoding plugin.

pydicom 3 ships a ``gdcm`` plugin of its own, but it refuses 12-bit JPEG
Extended (process 2+4) pixel data outright, which is exactly what the
pylibjpeg family cannot decode (libjpeg reports a misplaced marker and Pillow
has no 12-bit JPEG).  The GDCM of ``python-gdcm`` 3.2 decodes those frames (it
carries IJG libjpeg builds for 8, 12 and 16 bits), so this module is that
plugin without the refusal, plus HTJ2K (GDCM 3.2 knows its transfer syntaxes)
and with the output Photometric Interpretation taken from what GDCM reports,
so that callers always learn the colour space of the samples they get.

It is registered under :data:`PLUGIN` by :func:`dicomhub.codec.pixels.register_fallback`,
which tries it only after the preferred plugins failed: decoding goes through
the pylibjpeg family first.

GDCM runs in a helper process (:func:`main`), one per
process that needs it, started on first use and kept: GDCM calls ``abort()`` on
some corrupt code streams (a JPEG 2000 stream of garbage after its SIZ marker
does it), and an archive must not lose a DIMSE worker or the web server to a
bad object.  A helper that dies or hangs fails that frame only; the next
fallback decode starts a new one.  The fallback is the rare path, so the cost
of a pipe round trip per frame does not matter.

Adapted from ``pydicom.pixels.decoders.gdcm`` (pydicom, MIT licence).
"""

from __future__ import annotations

import atexit
import importlib.metadata
import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
from types import ModuleType
from typing import IO, Any

from pydicom import uid

__all__ = ["DECODER_DEPENDENCIES", "GDCM_VERSION", "PLUGIN", "decode_with_gdcm", "is_available", "main"]

#: The label of this plugin in pydicom's decoders (pydicom's own is ``gdcm``).
PLUGIN = "gdcm-fallback"


def _installed_version() -> tuple[int, ...]:
    """The version of the installed python-gdcm (its releases carry GDCM's version),
    read from its metadata: importing GDCM maps about 25 MB of shared libraries, and
    only the helper process needs them. ``()``: not installed."""
    # Not importlib.util.find_spec("gdcm"): the None entry in sys.modules (see _gdcm) hides it.
    try:
        release = importlib.metadata.version("python-gdcm")
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(x) for x in release.split(".")[:3] if x.isdigit())


# The fallback is optional: without it the preferred plugins are all there is.
GDCM_VERSION: tuple[int, ...] = _installed_version()


def _gdcm() -> ModuleType | None:
    """GDCM's bindings, imported on first use (in the helper process only).

    :mod:`dicomhub` keeps ``gdcm`` out of its other processes by a ``None`` entry
    in :data:`sys.modules` (see the package's ``__init__``); here it is wanted.
    """
    if "gdcm" in sys.modules and sys.modules["gdcm"] is None:
        del sys.modules["gdcm"]
    try:
        import gdcm
    except ImportError:
        return None
    module: ModuleType = gdcm
    return module

_HTJ2K = (uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K)

# pydicom's plugin protocol: the syntaxes this plugin can decode and what it needs.
DECODER_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    str(ts): ("python-gdcm>=3.2",)
    for ts in (
        uid.JPEGBaseline8Bit,
        uid.JPEGExtended12Bit,
        uid.JPEGLossless,
        uid.JPEGLosslessSV1,
        uid.JPEGLSLossless,
        uid.JPEGLSNearLossless,
        uid.JPEG2000Lossless,
        uid.JPEG2000,
        *_HTJ2K,
        uid.RLELossless,
    )
}


def is_available(tsyntax: str) -> bool:
    """Return whether GDCM is installed (3.2 or later) and decodes `tsyntax`.

    Parameters
    ----------
    tsyntax : str
        A Transfer Syntax UID.

    Returns
    -------
    bool
    """
    return GDCM_VERSION >= (3, 2) and str(tsyntax) in DECODER_DEPENDENCIES


#: Seconds a helper may take for one frame before it is killed.
FRAME_TIMEOUT = 60.0
_LENGTH = struct.Struct("<I")


def _frame_request(runner: Any) -> dict[str, Any]:
    """What the helper needs to decode one frame, and the runner updated to match.

    The runner's options are set here, in the calling process, as pydicom's own
    plugin sets them: they describe the decoded frame pydicom will read.
    """
    tsyntax = str(runner.transfer_syntax)
    bits_stored = int(runner.bits_stored)
    if tsyntax in uid.JPEGLSTransferSyntaxes:
        # GDCM returns JPEG-LS colour-by-pixel, in a container sized by the codestream's precision.
        runner.set_option("planar_configuration", 0)
        bits_stored = int(runner.get_option("jls_precision", bits_stored))
        runner.set_option("bits_allocated", 8 if bits_stored <= 8 else 16)
    elif tsyntax in uid.JPEG2000TransferSyntaxes or tsyntax in _HTJ2K:
        bits_stored = int(runner.get_option("j2k_precision", bits_stored))
        runner.set_option("bits_allocated", 8 if bits_stored <= 8 else 16 if bits_stored <= 16 else 32)
    return {
        "transfer_syntax_uid": tsyntax,
        "photometric_interpretation": str(runner.photometric_interpretation),
        "rows": int(runner.rows),
        "columns": int(runner.columns),
        "samples_per_pixel": int(runner.samples_per_pixel),
        "planar_configuration": int(runner.planar_configuration) if runner.samples_per_pixel > 1 else 0,
        "bits_allocated": int(runner.bits_allocated),
        "bits_stored": bits_stored,
        "pixel_representation": int(runner.pixel_representation),
    }


def decode_with_gdcm(request: dict[str, Any], src: bytes) -> tuple[bytes, str]:
    """Decode one frame with GDCM, in this process (the helper's side).

    Parameters
    ----------
    request : dict
        As made by the calling process (transfer syntax, pixel module values).
    src : bytes
        The frame's codestream.

    Returns
    -------
    tuple of (bytes, str)
        The decoded frame and the Photometric Interpretation of its samples.

    Raises
    ------
    ValueError
        When GDCM cannot decode the frame.
    """
    gdcm = _gdcm()
    if gdcm is None:
        raise ValueError("python-gdcm is not installed")
    tsyntax = request["transfer_syntax_uid"]
    pi = request["photometric_interpretation"]
    bits_stored = request["bits_stored"]
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    elem = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    elem.SetValue(fragments.__ref__())

    img = gdcm.Image()
    img.SetNumberOfDimensions(2)
    img.SetDimensions((request["columns"], request["rows"], 1))
    img.SetDataElement(elem)
    img.SetPhotometricInterpretation(
        gdcm.PhotometricInterpretation(gdcm.PhotometricInterpretation.GetPIType(pi))
    )
    if request["samples_per_pixel"] > 1:
        img.SetPlanarConfiguration(request["planar_configuration"])
    img.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(tsyntax)))
    img.SetPixelFormat(
        gdcm.PixelFormat(
            request["samples_per_pixel"],
            request["bits_allocated"],
            bits_stored,
            bits_stored - 1,
            request["pixel_representation"],
        )
    )
    # GDCM hands back char* as str: re-encode the bytes it holds.
    buffer = img.GetBuffer()
    frame = buffer.encode("utf-8", "surrogateescape") if buffer is not None else b""
    expected = (
        request["rows"] * request["columns"] * request["samples_per_pixel"] * (request["bits_allocated"] // 8)
    )
    if len(frame) < expected:
        # GDCM reports a failed decode by an empty (or short) buffer, never by an exception.
        raise ValueError(f"GDCM could not decode the frame ({len(frame)} of {expected} bytes)")
    out_pi = str(img.GetPhotometricInterpretation()).strip() or pi
    if (tsyntax in uid.JPEG2000TransferSyntaxes or tsyntax in _HTJ2K) and pi in ("YBR_ICT", "YBR_RCT"):
        out_pi = "RGB"  # GDCM applies the inverse MCT
    return frame[:expected], out_pi


class _Helper:
    """The helper process of this process, started on first use (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid = 0  # the process that started _proc

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._pid != os.getpid():
            # Inherited through fork (a DIMSE worker): the helper and its pipes belong to
            # the parent, which may be using them. Leave them alone and start our own.
            self._proc = None
        if self._proc is None or self._proc.poll() is not None:
            self._pid = os.getpid()
            # GDCM's JPEG codec prints "Unsupported JPEG data precision 12" for every
            # 12-bit frame it then decodes: the helper's stderr is not worth keeping.
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "from dicomhub.codec.gdcm_plugin import main; main()"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        return self._proc

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe is not None:
                    pipe.close()
            self._proc = None

    def close(self) -> None:
        """End the helper (it also ends by itself when its stdin closes)."""
        with self._lock:
            if self._proc is not None and self._pid == os.getpid():
                if self._proc.stdin is not None:
                    self._proc.stdin.close()
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                if self._proc.stdout is not None:
                    self._proc.stdout.close()
            self._proc = None

    def decode(self, request: dict[str, Any], src: bytes) -> tuple[bytes, str]:
        with self._lock:
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                _write_message(proc.stdin, request, src)
                reply, data = _read_message(proc.stdout, time.monotonic() + FRAME_TIMEOUT)
            except (OSError, EOFError, TimeoutError) as exc:
                self._stop()
                raise ValueError(f"the GDCM helper process failed on this frame ({exc})") from exc
        if not reply.get("ok"):
            raise ValueError(str(reply.get("error", "GDCM could not decode the frame")))
        return data, str(reply["photometric_interpretation"])


_HELPER = _Helper()
atexit.register(_HELPER.close)


def _decode_frame(src: bytes, runner: Any) -> bytes:
    """Decode one encoded frame `src` with GDCM (pydicom's plugin signature).

    Parameters
    ----------
    src : bytes
        One frame's codestream.
    runner : pydicom.pixels.decoders.base.DecodeRunner
        The runner of this decode; its options are updated to describe the output
        (bits allocated for the codestream's precision, planar configuration 0 for
        JPEG-LS, the Photometric Interpretation GDCM reports).

    Returns
    -------
    bytes
        The decoded frame.

    Raises
    ------
    ValueError
        When GDCM cannot decode the frame (or its helper process died on it).
    """
    request = _frame_request(runner)
    frame, out_pi = _HELPER.decode(request, bytes(src))
    if out_pi != request["photometric_interpretation"]:
        runner.set_option("photometric_interpretation", out_pi)
    return frame


def _write_message(out: IO[bytes], header: dict[str, Any], data: bytes) -> None:
    raw = json.dumps(header).encode()
    out.write(_LENGTH.pack(len(raw)) + raw + _LENGTH.pack(len(data)))
    out.write(data)
    out.flush()


def _read_exact(src: IO[bytes], size: int, deadline: float | None) -> bytes:
    chunks, left = [], size
    fd = src.fileno()
    while left:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError(f"no answer within {FRAME_TIMEOUT:g} s")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the helper process ended")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_message(src: IO[bytes], deadline: float | None = None) -> tuple[dict[str, Any], bytes]:
    (size,) = _LENGTH.unpack(_read_exact(src, _LENGTH.size, deadline))
    header: dict[str, Any] = json.loads(_read_exact(src, size, deadline))
    (size,) = _LENGTH.unpack(_read_exact(src, _LENGTH.size, deadline))
    return header, _read_exact(src, size, deadline)


def _serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """The helper's loop: one request in, one reply out, until stdin closes."""
    gdcm = _gdcm()
    if gdcm is not None:
        gdcm.Trace.WarningOff()
        gdcm.Trace.ErrorOff()
    while True:
        try:
            request, src = _read_message(stdin)
        except EOFError:
            return
        try:
            frame, pi = decode_with_gdcm(request, src)
            _write_message(stdout, {"ok": True, "photometric_interpretation": pi}, frame)
        except Exception as exc:  # noqa: BLE001 - any GDCM failure is this frame's answer
            _write_message(stdout, {"ok": False, "error": f"{type(exc).__name__}: {exc}"}, b"")


def main() -> None:
    """The helper process: answer decode requests on stdin / stdout until stdin closes.

    The protocol gets its own copy of stdout, and file descriptor 1 is pointed at
    stderr: a C library printing to stdout must not corrupt the replies.
    """
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _serve(sys.stdin.buffer, replies)
