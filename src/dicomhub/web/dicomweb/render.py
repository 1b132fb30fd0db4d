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
from dicomhub.services.display import WINDOW_FUNCTIONS as _FUNCTIONS
from dicomhub.services.display import Window, to_display

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

Array = np.ndarray[Any, Any]


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
