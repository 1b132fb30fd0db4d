"""Rendered images: stored pixel values -> windowed 8-bit image -> JPEG or PNG.

Pure numpy and Pillow; the pixels come decoded from the service layer.

References
----------
PS3.18 8.3.5.1 (rendered media type query parameters: window, viewport,
quality), PS3.3 C.11.1 (Modality LUT: RescaleSlope/RescaleIntercept),
PS3.3 C.11.2.1.2 (VOI LUT window functions LINEAR, LINEAR_EXACT, SIGMOID).
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image

from dicomhub.errors import InvalidRequest

__all__ = [
    "RENDERED_TYPES",
    "Viewport",
    "Window",
    "parse_quality",
    "parse_viewport",
    "parse_window",
    "render",
    "to_display",
]

#: Media types of rendered images, the default first.
RENDERED_TYPES = ("image/jpeg", "image/png")
_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

Array = np.ndarray[Any, Any]


@dataclass(frozen=True, slots=True)
class Window:
    """A VOI window: center, width and function (PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True, slots=True)
class Viewport:
    """Output size and optional source region (PS3.18 8.3.5.1.3).

    ``width`` or ``height`` may be None (WADO-URI ``rows``/``columns`` given
    alone): the other follows from the aspect ratio. A negative source
    width/height flips the region.
    """

    width: int | None
    height: int | None
    sx: int = 0
    sy: int = 0
    sw: int | None = None
    sh: int | None = None


def parse_window(text: str | None) -> Window | None:
    """``center,width[,function]`` -> :class:`Window`.

    Raises
    ------
    InvalidRequest
        For a malformed value, a width below 1 or an unknown function.
    """
    if text is None or text == "":
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise InvalidRequest("window must be center,width[,function]")
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError as exc:
        raise InvalidRequest(f"window center and width must be numbers: {text!r}") from exc
    function = parts[2].upper() if len(parts) == 3 and parts[2] else "LINEAR"
    if function not in _FUNCTIONS:
        raise InvalidRequest(f"window function must be one of {', '.join(_FUNCTIONS)}")
    if width < 1 or not np.isfinite(center) or not np.isfinite(width):
        raise InvalidRequest("window width must be at least 1")
    return Window(center, width, function)


def parse_viewport(text: str | None) -> Viewport | None:
    """``vw,vh[,sx,sy,sw,sh]`` -> :class:`Viewport`.

    Raises
    ------
    InvalidRequest
        For a malformed value or sizes below 1.
    """
    if text is None or text == "":
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 6):
        raise InvalidRequest("viewport must be vw,vh or vw,vh,sx,sy,sw,sh")
    try:
        values = [int(p) if p else None for p in parts]
    except ValueError as exc:
        raise InvalidRequest(f"viewport values must be integers: {text!r}") from exc
    vw, vh = values[0], values[1]
    if vw is None or vh is None or vw < 1 or vh < 1 or vw > 8192 or vh > 8192:
        raise InvalidRequest("viewport width and height must be between 1 and 8192")
    if len(values) == 2:
        return Viewport(vw, vh)
    sx, sy, sw, sh = values[2:]
    if (sx or 0) < 0 or (sy or 0) < 0 or sw == 0 or sh == 0:
        raise InvalidRequest("viewport source region must start at >= 0 and have a non-zero size")
    return Viewport(vw, vh, sx or 0, sy or 0, sw, sh)


def parse_quality(text: str | None) -> int | None:
    """``quality`` (1-100) -> int.

    Raises
    ------
    InvalidRequest
        When it is not an integer from 1 to 100.
    """
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise InvalidRequest(f"quality must be an integer: {text!r}") from exc
    if not 1 <= value <= 100:
        raise InvalidRequest("quality must be from 1 to 100")
    return value


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


def _fit(width: int, height: int, box_w: int | None, box_h: int | None) -> tuple[int, int]:
    """The largest size with the aspect ratio of ``width x height`` inside the box."""
    if box_w is None and box_h is None:
        return width, height
    scale_w = box_w / width if box_w is not None else None
    scale_h = box_h / height if box_h is not None else None
    scale = min(s for s in (scale_w, scale_h) if s is not None)
    return max(1, round(width * scale)), max(1, round(height * scale))


def render(
    display: Array,
    media_type: str = "image/jpeg",
    *,
    viewport: Viewport | None = None,
    quality: int | None = None,
) -> bytes:
    """Encode 8-bit display values as ``image/jpeg`` or ``image/png``.

    The viewport's source region is cut out first, then scaled to fit the
    viewport keeping the aspect ratio.

    Raises
    ------
    InvalidRequest
        For an unsupported media type or a region outside the image.
    """
    if media_type not in RENDERED_TYPES:
        raise InvalidRequest(f"cannot render as {media_type}")
    # Pillow infers "L" or "RGB" from a uint8 array's shape.
    image = Image.fromarray(np.ascontiguousarray(display, dtype=np.uint8))
    if viewport is not None:
        if viewport.sw is not None or viewport.sh is not None or viewport.sx or viewport.sy:
            image = _region(image, viewport)
        size = _fit(image.width, image.height, viewport.width, viewport.height)
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS)
    out = BytesIO()
    if media_type == "image/png":
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=quality or 90)
    return out.getvalue()


def _region(image: Image.Image, viewport: Viewport) -> Image.Image:
    sw = viewport.sw if viewport.sw is not None else image.width - viewport.sx
    sh = viewport.sh if viewport.sh is not None else image.height - viewport.sy
    left, top = viewport.sx, viewport.sy
    right, bottom = left + abs(sw), top + abs(sh)
    if right > image.width or bottom > image.height or right <= left or bottom <= top:
        raise InvalidRequest("viewport source region lies outside the image")
    region = image.crop((left, top, right, bottom))
    if sw < 0:
        region = region.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if sh < 0:
        region = region.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return region
