"""JPEG baseline (process 1) encoding with Pillow: pydicom has no encoder for it.

References
----------
PS3.5 Section 8.2.1 and Table 8.2.1-1: 8-bit samples only; colour is YCbCr, and
PhotometricInterpretation is YBR_FULL_422 when the chroma is subsampled
horizontally by two (4:2:2), which is what this module asks Pillow for.
"""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom.pixels.processing import convert_color_space

from dicomhub.errors import TranscodeError

__all__ = ["DEFAULT_QUALITY", "encode_frame"]

DEFAULT_QUALITY = 90
# Pillow's subsampling codes: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0.  4:2:2 is what
# YBR_FULL_422 describes (PS3.3 C.7.6.3.1.2); 4:2:0 has no exact DICOM name.
_SUBSAMPLING_422 = 1


def encode_frame(
    arr: NDArray[np.generic],
    photometric_interpretation: str,
    *,
    bits_stored: int,
    pixel_representation: int,
    quality: int = DEFAULT_QUALITY,
) -> tuple[bytes, str]:
    """Encode one frame as a JPEG baseline codestream.

    Parameters
    ----------
    arr : numpy.ndarray
        ``(rows, columns)`` or ``(rows, columns, 3)`` with PlanarConfiguration 0.
    photometric_interpretation : str
        Of `arr`: MONOCHROME1/2, RGB or YBR_FULL.
    bits_stored, pixel_representation : int
        Must be 8 and 0 (unsigned).
    quality : int
        Pillow's JPEG quality, 1-95.

    Returns
    -------
    tuple of (bytes, str)
        The codestream and the PhotometricInterpretation of the encoded data.

    Raises
    ------
    dicomhub.errors.TranscodeError
        When the pixel data does not suit JPEG baseline.
    """
    if arr.dtype.itemsize != 1 or bits_stored != 8 or pixel_representation != 0:
        raise TranscodeError(
            "JPEG baseline needs unsigned 8-bit samples (BitsAllocated/BitsStored 8, "
            f"PixelRepresentation 0); this object has BitsStored {bits_stored}, "
            f"PixelRepresentation {pixel_representation}"
        )
    pi = photometric_interpretation
    out = io.BytesIO()
    if pi in ("MONOCHROME1", "MONOCHROME2") and arr.ndim == 2:
        Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(out, format="JPEG", quality=quality)
        return out.getvalue(), pi
    if pi in ("RGB", "YBR_FULL") and arr.ndim == 3 and arr.shape[2] == 3:
        rgb = arr if pi == "RGB" else convert_color_space(arr, "YBR_FULL", "RGB")
        # Pillow converts RGB to YCbCr (JFIF) itself; the result is YBR_FULL_422.
        Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(
            out, format="JPEG", quality=quality, subsampling=_SUBSAMPLING_422
        )
        return out.getvalue(), "YBR_FULL_422"
    raise TranscodeError(f"JPEG baseline cannot encode PhotometricInterpretation {pi!r}")
