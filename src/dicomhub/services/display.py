"""Display values: stored pixel values of one frame -> 8-bit grey or RGB, through the
Modality LUT and a VOI window.

Shared by WADO-RS rendered resources (:mod:`dicomhub.web.dicomweb.render`) and the
Print SCU (:mod:`dicomhub.services.printclient`), so that a film shows what the
viewer shows. Pure numpy.

References
----------
PS3.3 C.11.1 (Modality LUT: RescaleSlope/RescaleIntercept), PS3.3 C.11.2.1.2
(VOI LUT window functions LINEAR, LINEAR_EXACT, SIGMOID).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dicomhub.errors import InvalidRequest

__all__ = ["WINDOW_FUNCTIONS", "Window", "to_display"]

#: The VOI LUT functions of PS3.3 C.11.2.1.3.
WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

Array = np.ndarray[Any, Any]


@dataclass(frozen=True, slots=True)
class Window:
    """A VOI window: center, width and function (PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    function: str = "LINEAR"


def _apply_window(values: Array, window: Window) -> Array:
    c, w = window.center, window.width
    if window.function == "LINEAR_EXACT":
        out = ((values - c) / w + 0.5) * 255.0
    elif window.function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    else:
        # PS3.3 C.11.2.1.2.1: linear with the (c - 0.5), (w - 1) convention.
        if w <= 1:
            out = np.where(values <= c - 0.5, 0.0, 255.0)
        else:
            out = ((values - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return np.clip(out, 0.0, 255.0)


def to_display(
    pixels: Array,
    photometric_interpretation: str = "MONOCHROME2",
    *,
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    window: Window | None = None,
    default_window: Window | None = None,
    bits_stored: int = 8,
) -> Array:
    """Stored values of one frame -> 8-bit display values (2-D grey or ``H x W x 3`` RGB).

    Grey images get the Modality LUT (slope/intercept), then ``window`` (the
    request's), else ``default_window`` (the header's), else the full range of
    the frame; MONOCHROME1 is inverted. Colour images are scaled to 8 bits.

    Raises
    ------
    InvalidRequest
        For an image that is neither a 2-D grey frame nor a 3-sample colour frame.
    """
    photometric = photometric_interpretation.strip().upper()
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        if pixels.dtype == np.uint8:
            return pixels
        top = float((1 << max(1, min(bits_stored, 16))) - 1)
        return np.clip(pixels.astype(np.float64) * (255.0 / top), 0, 255).astype(np.uint8)
    if pixels.ndim != 2:
        raise InvalidRequest(f"cannot render pixel data of shape {pixels.shape}")
    values = pixels.astype(np.float64) * rescale_slope + rescale_intercept
    chosen = window or default_window
    if chosen is None:
        low, high = float(values.min()), float(values.max())
        if high <= low:
            out = np.zeros(values.shape, dtype=np.float64)
        else:
            out = (values - low) * (255.0 / (high - low))
    else:
        out = _apply_window(values, chosen)
    if photometric == "MONOCHROME1":
        out = 255.0 - out
    return np.rint(out).astype(np.uint8)
