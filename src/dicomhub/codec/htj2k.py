"""HTJ2K encoding with imagecodecs (OpenJPH), which pydicom has no encoder for.

Decoding HTJ2K needs nothing from here: pylibjpeg-openjpeg decodes it (and GDCM
as the fallback).  Encoding uses ``imagecodecs.htj2k_encode`` (OpenJPH 0.26),
the only maintained HTJ2K encoder with Python bindings installed here.

What the encoder does, per syntax (PS3.5 8.2.15 and A.4.11-13):

* ``htj2k-lossless`` (1.2.840.10008.1.2.4.201): reversible 5/3 wavelet.
* ``htj2k-lossless-rpcl`` (.202): the same, in RPCL progression order (OpenJPH's
  default), with a TLM marker segment and one tile-part per resolution level.
* ``htj2k`` (.203): irreversible 9/7 wavelet with OpenJPH's default quantisation
  step (it has no rate control, so there is no compression ratio to ask for).

RGB is coded with the multi-component transform, as for JPEG 2000 here: the
reversible one (Photometric Interpretation ``YBR_RCT``) for the lossless syntaxes,
the irreversible one (``YBR_ICT``) for ``htj2k``.  Other colour spaces (YBR_FULL)
are coded without it and keep their value.  imagecodecs sets the code stream's
precision from the array's type (8 or 16 bits, the sign from the dtype), so a
12-bit image is coded at 16-bit precision; the values are the same and
decoders (pylibjpeg-openjpeg, GDCM) return them unchanged.

References
----------
PS3.5 Section 8.2.15 (HTJ2K), Table A.4-1; ISO/IEC 15444-15.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from dicomhub.errors import TranscodeError

__all__ = ["HTJ2K_UIDS", "encode_frame", "is_available"]

HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
HTJ2K_UIDS = frozenset({HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL, HTJ2K})
# imagecodecs' tilepart flag 1: a new tile-part at each resolution level.
_TILEPART_PER_RESOLUTION = 1


def is_available() -> bool:
    """Return whether imagecodecs with its HTJ2K (OpenJPH) codec is installed.

    Returns
    -------
    bool
    """
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(getattr(imagecodecs.HTJ2K, "available", False))


def encode_frame(arr: NDArray[Any], photometric_interpretation: str, target_uid: str) -> tuple[bytes, str]:
    """Encode one decoded frame as an HTJ2K code stream.

    Parameters
    ----------
    arr : numpy.ndarray
        ``(rows, columns[, samples])``, PlanarConfiguration 0, of 8- or 16-bit integers.
    photometric_interpretation : str
        Of `arr`; PALETTE COLOR is refused for the lossy syntax.
    target_uid : str
        One of :data:`HTJ2K_UIDS`.

    Returns
    -------
    tuple of (bytes, str)
        A raw code stream (no JPH file box), as PS3.5 encapsulates it, and the
        Photometric Interpretation of the encoded object.

    Raises
    ------
    dicomhub.errors.TranscodeError
        When the pixel data does not suit the encoder (sample size, palette for lossy).
    """
    if target_uid not in HTJ2K_UIDS:
        raise TranscodeError(f"{target_uid} is not an HTJ2K transfer syntax")
    if not is_available():
        raise TranscodeError("HTJ2K encoding needs imagecodecs with its HTJ2K codec")
    import imagecodecs

    if arr.dtype.kind not in "ui" or arr.dtype.itemsize not in (1, 2):
        raise TranscodeError(f"HTJ2K encoding takes 8- or 16-bit integer samples, not {arr.dtype}")
    lossy = target_uid == HTJ2K
    if lossy and photometric_interpretation == "PALETTE COLOR":
        raise TranscodeError("lossy HTJ2K cannot encode PALETTE COLOR indices")
    mct = photometric_interpretation == "RGB"
    out_pi = ("YBR_ICT" if lossy else "YBR_RCT") if mct else photometric_interpretation
    options: dict[str, Any] = {"reversible": not lossy, "rgb": mct}
    if target_uid == HTJ2K_LOSSLESS_RPCL:
        options.update(tlm=True, tilepart=_TILEPART_PER_RESOLUTION)
    data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    try:
        return bytes(imagecodecs.htj2k_encode(data, **options)), out_pi
    except Exception as exc:  # imagecodecs raises its own Htj2kError, ValueError, ...
        raise TranscodeError(f"cannot encode the pixel data as HTJ2K: {exc}") from exc
