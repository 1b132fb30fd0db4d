"""Render a printed film box to a picture of the film (Pillow), as a printer would expose it.

The film is ``film_pixels`` large (Film Size ID and orientation at the
configured resolution), laid out by its Image Display Format.  What a film
shows:

* the whole film starts at the Border Density (the space between and around
  the images);
* an image box without an image is filled with the Empty Image Density;
* an image is resampled into its box keeping its aspect ratio, centred, with
  the box's Magnification Type (REPLICATE nearest neighbour, BILINEAR,
  CUBIC; NONE: printed at its own size, which :mod:`dicomhub.model.printing`
  lets through only when it fits);
* gray levels: MONOCHROME2 as it is, MONOCHROME1 inverted, 12-bit images
  scaled to 8 bits by dropping their low bits; Polarity REVERSE inverts
  (PS3.3 C.13.5.1); then the Presentation LUT of the image box (else of the
  film box) maps them to P-values (:mod:`dicomhub.model.presentationlut`).
  Pixel value 255 is the least density (clear film).

Densities given in hundredths of optical density map linearly onto the gray
levels (:func:`dicomhub.model.printing.density_level`: 0 is white, 300
black).  A grayscale image's gray levels are then squeezed into the film
box's Min Density (for its white) to Max Density (for its black); the
defaults 0 and 300 leave them as they are.  Trim ``YES`` draws a box around
each image, just outside it, in black on a light border and in white on a
dark one, :func:`trim_width` pixels wide.
"""

from __future__ import annotations

import io
from typing import Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset

from dicomhub.model.presentationlut import PresentationLut
from dicomhub.model.printing import FilmBox, density_level, film_pixels

__all__ = ["density_range", "image_pixels", "placement", "render_film", "to_png", "trim_width"]

_FILTERS: Final = {
    "REPLICATE": Image.Resampling.NEAREST,
    "BILINEAR": Image.Resampling.BILINEAR,
    "CUBIC": Image.Resampling.BICUBIC,
}


def image_pixels(
    picture: Dataset, color: bool, polarity: str, presentation_lut: PresentationLut | None = None
) -> NDArray[np.uint8]:
    """The 8-bit pixels of a preformatted image, as printed (rows x columns [x 3]).

    Grayscale: MONOCHROME1 and Polarity REVERSE invert the stored values, then
    a Presentation LUT table (if any) maps them to P-values (PS3.3 C.11.4).
    """
    rows, columns = int(picture.Rows), int(picture.Columns)
    allocated = int(picture.BitsAllocated)
    data = bytes(picture.PixelData)
    if color:
        raw = np.frombuffer(data, dtype=np.uint8, count=rows * columns * 3)
        if int(picture.get("PlanarConfiguration", 0)) == 1:
            pixels = raw.reshape(3, rows, columns).transpose(1, 2, 0)
        else:
            pixels = raw.reshape(rows, columns, 3)
    else:
        dtype = np.dtype("<u2") if allocated == 16 else np.dtype(np.uint8)
        values = np.frombuffer(data, dtype=dtype, count=rows * columns).reshape(rows, columns)
        bits = int(picture.get("BitsStored", allocated))
        top = (1 << bits) - 1
        values = np.bitwise_and(values, top).astype(np.int64)
        if str(picture.PhotometricInterpretation).upper() == "MONOCHROME1":
            values = top - values
        if polarity == "REVERSE":
            values = top - values
        if presentation_lut is not None and presentation_lut.table is not None:
            table = np.asarray(presentation_lut.table, dtype=np.int64)
            index = (values * (len(table) - 1) + top // 2) // top
            out_top = (1 << presentation_lut.bits) - 1
            mapped: NDArray[np.uint8] = ((table[index] * 255 + out_top // 2) // out_top).astype(np.uint8)
            return mapped
        eight: NDArray[np.uint8] = (values >> max(bits - 8, 0)).astype(np.uint8)
        return eight
    if polarity == "REVERSE":
        pixels = 255 - pixels
    return np.ascontiguousarray(pixels, dtype=np.uint8)


def density_range(pixels: NDArray[np.uint8], min_density: int, max_density: int) -> NDArray[np.uint8]:
    """Gray levels squeezed into Min Density (level 255) to Max Density (level 0).

    Each level is the density ``max - (max - min) * p / 255`` in hundredths of
    optical density, shown as :func:`~dicomhub.model.printing.density_level` shows it.
    """
    p = np.arange(256, dtype=np.float64)
    density = max_density - (max_density - min_density) * p / 255
    table = np.clip(np.rint(255 * (1 - density / 300)), 0, 255).astype(np.uint8)
    mapped: NDArray[np.uint8] = table[pixels]
    return mapped


def trim_width(dpi: int) -> int:
    """Width in pixels of a trim box: about 1/3 mm, at least one pixel."""
    return max(1, round(dpi / 75))


def placement(
    box: tuple[int, int, int, int], image_size: tuple[int, int], magnification: str
) -> tuple[int, int, int, int]:
    """Where an image of `image_size` (width, height) goes in `box`: (left, top, width, height).

    Scaled to fit keeping its aspect ratio (NONE: its own size), centred.
    """
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    columns, rows = image_size
    if magnification == "NONE":
        new_width, new_height = min(columns, width), min(rows, height)
    else:
        scale = min(width / columns, height / rows)
        new_width = max(1, min(width, round(columns * scale)))
        new_height = max(1, min(height, round(rows * scale)))
    return left + (width - new_width) // 2, top + (height - new_height) // 2, new_width, new_height


def render_film(film_box: FilmBox, color: bool, dpi: int) -> Image.Image:
    """The film of `film_box` at `dpi`: layout, densities, images with polarity and magnification."""
    width, height = film_pixels(film_box.film_size_id, film_box.film_orientation, dpi)
    mode = "RGB" if color else "L"

    def gray(level: int) -> int | tuple[int, int, int]:
        return (level, level, level) if color else level

    border = density_level(film_box.border_density)
    film = Image.new(mode, (width, height), gray(border))
    empty = gray(density_level(film_box.empty_image_density))
    squeeze = (film_box.min_density, film_box.max_density) != (0, 300)
    trims: list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]] = []
    for image_box, (x0, y0, x1, y1) in zip(film_box.image_boxes, film_box.boxes, strict=True):
        box = (round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height))
        if image_box.image is None:
            film.paste(empty, box)
            continue
        lut = image_box.presentation_lut or film_box.presentation_lut
        pixels = image_pixels(image_box.image, color, image_box.polarity, None if color else lut)
        if squeeze and not color:
            pixels = density_range(pixels, film_box.min_density, film_box.max_density)
        picture = Image.fromarray(pixels, mode)
        magnification = image_box.magnification_type or film_box.magnification_type
        left, top, new_width, new_height = placement(box, picture.size, magnification)
        if magnification == "NONE":
            # Fits (checked at N-SET); cropping only guards against rounding.
            picture = picture.crop((0, 0, new_width, new_height))
        elif (new_width, new_height) != picture.size:
            picture = picture.resize((new_width, new_height), _FILTERS[magnification])
        film.paste(picture, (left, top))
        trims.append((box, (left, top, new_width, new_height)))
    if film_box.trim == "YES":
        # After all images: a box reaching into a neighbouring cell is not pasted over.
        _draw_trims(film, trims, trim_width(dpi), 0 if border >= 128 else 255, color)
    return film


def _draw_trims(
    film: Image.Image,
    trims: list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]],
    width: int,
    level: int,
    color: bool,
) -> None:
    """A frame `width` wide just outside each placed image.

    Kept inside the image's cell: where the image touches the cell's edge the frame
    covers the image's outermost pixels there instead (a trim box is always seen).
    """
    draw = ImageDraw.Draw(film)
    fill = (level, level, level) if color else level
    for (cx0, cy0, cx1, cy1), (left, top, w, h) in trims:
        frame = (
            max(cx0, left - width),
            max(cy0, top - width),
            min(cx1, left + w + width) - 1,
            min(cy1, top + h + width) - 1,
        )
        draw.rectangle(frame, outline=fill, width=width)


def to_png(film: Image.Image) -> bytes:
    """PNG bytes of a rendered film (fast compression: films are large and mostly flat)."""
    out = io.BytesIO()
    film.save(out, format="PNG", compress_level=1)
    return out.getvalue()
