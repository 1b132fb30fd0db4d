"""Rendering: Modality LUT, windows, photometric interpretations, viewport, encoding."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from dicomhub.errors import InvalidRequest
from dicomhub.web.dicomweb.render import (
    Viewport,
    Window,
    parse_quality,
    parse_viewport,
    parse_window,
    render,
    to_display,
)


def test_parse_window() -> None:
    assert parse_window(None) is None
    assert parse_window("40,400") == Window(40.0, 400.0, "LINEAR")
    assert parse_window("40,400,sigmoid") == Window(40.0, 400.0, "SIGMOID")
    for bad in ("40", "a,b", "40,0", "40,400,CUBIC", "1,2,3,4"):
        with pytest.raises(InvalidRequest):
            parse_window(bad)


def test_parse_viewport_and_quality() -> None:
    assert parse_viewport("128,64") == Viewport(128, 64)
    assert parse_viewport("128,64,10,20,30,40") == Viewport(128, 64, 10, 20, 30, 40)
    for bad in ("128", "0,10", "a,b", "10,10,1,1,0,5"):
        with pytest.raises(InvalidRequest):
            parse_viewport(bad)
    assert parse_quality("75") == 75
    for bad in ("0", "101", "x"):
        with pytest.raises(InvalidRequest):
            parse_quality(bad)


def test_linear_window_follows_ps3_3() -> None:
    # c=100, w=101: below c-0.5-(w-1)/2 = 49.5 -> 0, above c-0.5+(w-1)/2 = 149.5 -> 255.
    values = np.array([[0, 49, 99, 150, 4000]], dtype=np.int16)
    out = to_display(values, window=Window(100, 101))
    assert out[0, 0] == 0 and out[0, 1] == 0 and out[0, 3] == 255 and out[0, 4] == 255
    assert 120 <= out[0, 2] <= 135  # the centre maps to mid grey


def test_modality_lut_before_window() -> None:
    stored = np.array([[0, 1024, 2048]], dtype=np.uint16)
    # Intercept -1024: stored 1024 is 0 HU, the centre of a (0, 2) window.
    out = to_display(stored, rescale_intercept=-1024, window=Window(0, 2, "LINEAR_EXACT"))
    assert out.tolist() == [[0, 128, 255]]


def test_default_window_then_min_max() -> None:
    stored = np.array([[10, 20, 30]], dtype=np.uint16)
    assert to_display(stored).tolist() == [[0, 128, 255]]
    header = Window(20, 2, "LINEAR_EXACT")
    assert to_display(stored, default_window=header).tolist() == [[0, 128, 255]]
    request = Window(1000, 10)
    assert to_display(stored, window=request, default_window=header).tolist() == [[0, 0, 0]]
    flat = np.full((2, 2), 7, dtype=np.uint16)
    assert to_display(flat).tolist() == [[0, 0], [0, 0]]


def test_monochrome1_is_inverted() -> None:
    stored = np.array([[10, 30]], dtype=np.uint16)
    assert to_display(stored, "MONOCHROME1").tolist() == [[255, 0]]


def test_rgb_passes_through_and_scales() -> None:
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    assert to_display(rgb, "RGB") is rgb
    wide = np.full((1, 1, 3), 4095, dtype=np.uint16)
    assert to_display(wide, "RGB", bits_stored=12).tolist() == [[[255, 255, 255]]]
    with pytest.raises(InvalidRequest):
        to_display(np.zeros((2, 2, 2), dtype=np.uint8))


def _open(data: bytes) -> Image.Image:
    image = Image.open(BytesIO(data))
    image.load()
    return image


def test_render_jpeg_and_png_with_viewport() -> None:
    gray = (np.arange(64 * 32, dtype=np.uint32) % 256).astype(np.uint8).reshape(32, 64)
    jpeg = _open(render(gray, "image/jpeg", quality=50))
    assert jpeg.format == "JPEG" and jpeg.size == (64, 32) and jpeg.mode == "L"
    png = _open(render(gray, "image/png"))
    assert png.format == "PNG" and np.array_equal(np.asarray(png), gray)
    # Scale to fit, keeping the 2:1 aspect ratio.
    assert _open(render(gray, viewport=Viewport(128, 128))).size == (128, 64)
    assert _open(render(gray, viewport=Viewport(None, 16))).size == (32, 16)
    # Region first: 16x16 from (8, 4), flipped left-right, then 32x32.
    region = _open(render(gray, "image/png", viewport=Viewport(16, 16, 8, 4, -16, 16)))
    assert np.array_equal(np.asarray(region), gray[4:20, 8:24][:, ::-1])
    with pytest.raises(InvalidRequest):
        render(gray, viewport=Viewport(16, 16, 60, 0, 16, 16))
    with pytest.raises(InvalidRequest):
        render(gray, "image/gif")


def test_render_rgb() -> None:
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 2] = 255
    image = _open(render(rgb, "image/png"))
    assert image.mode == "RGB" and np.asarray(image)[0, 0].tolist() == [0, 0, 255]
