"""One PDF per print job: each rendered film one page of the film's physical size.

Written here rather than with Pillow's PDF plug-in because that one encodes
grayscale and RGB pages as JPEG: a film is a diagnostic picture, so the pages
are kept lossless (Flate, as the PNGs are).  The page's MediaBox is the Film
Size ID in points (1/72 inch), turned for LANDSCAPE, and the film's picture
fills it, so a PDF viewer or ``lp`` prints the film at its true size.

Pages are compressed as they are added, so a job of many films holds only
their compressed streams, never all the pictures at once.

References
----------
ISO 32000-1 (PDF 1.7) 7.5 (file structure), 8.9 (images); PS3.3 C.13.5.1
(Film Size ID, Film Orientation).
"""

from __future__ import annotations

import zlib
from typing import Final

from PIL import Image

from dicomhub.model.printing import FILM_SIZES

__all__ = ["PDF_MEDIA_TYPE", "FilmPdf", "page_size"]

PDF_MEDIA_TYPE: Final = "application/pdf"
_POINTS_PER_INCH: Final = 72


def page_size(film_size_id: str, orientation: str) -> tuple[float, float]:
    """Width and height in points of a film of `film_size_id` in `orientation`."""
    width, height = FILM_SIZES[film_size_id]
    if orientation == "LANDSCAPE":
        width, height = height, width
    return width * _POINTS_PER_INCH, height * _POINTS_PER_INCH


def _number(value: float) -> str:
    # PDF reals have no exponent; two decimals are 1/3600 inch, below any printer's dot.
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text or "0"


class FilmPdf:
    """A PDF built one film (page) at a time; :meth:`finish` gives its bytes."""

    def __init__(self) -> None:
        self._objects: list[bytes] = []  # object n is _objects[n - 1]; 1 and 2 reserved
        self._pages: list[int] = []
        self._objects.extend([b"", b""])

    def _add(self, body: bytes) -> int:
        self._objects.append(body)
        return len(self._objects)

    @staticmethod
    def _stream(dictionary: str, data: bytes) -> bytes:
        return f"<< {dictionary} /Length {len(data)} >>\nstream\n".encode() + data + b"\nendstream"

    def add_film(self, picture: Image.Image, film_size_id: str, orientation: str) -> None:
        """Add `picture` (mode ``L`` or ``RGB``) as a page the size of the film."""
        if picture.mode not in ("L", "RGB"):
            picture = picture.convert("RGB")
        space = "/DeviceGray" if picture.mode == "L" else "/DeviceRGB"
        width, height = page_size(film_size_id, orientation)
        # Level 1 as for the PNGs: films are large and mostly flat, so speed wins.
        data = zlib.compress(picture.tobytes(), 1)
        image = self._add(
            self._stream(
                f"/Type /XObject /Subtype /Image /Width {picture.width} /Height {picture.height} "
                f"/ColorSpace {space} /BitsPerComponent 8 /Filter /FlateDecode",
                data,
            )
        )
        # The image space is the unit square: scale it to the whole page.
        drawing = f"q {_number(width)} 0 0 {_number(height)} 0 0 cm /Film Do Q".encode()
        contents = self._add(self._stream("", drawing))
        page = self._add(
            (
                f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {_number(width)} {_number(height)}] "
                f"/Resources << /XObject << /Film {image} 0 R >> >> /Contents {contents} 0 R >>"
            ).encode()
        )
        self._pages.append(page)

    @property
    def pages(self) -> int:
        return len(self._pages)

    def finish(self) -> bytes:
        """The whole PDF file."""
        kids = " ".join(f"{page} 0 R" for page in self._pages)
        self._objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
        self._objects[1] = f"<< /Type /Pages /Kids [{kids}] /Count {len(self._pages)} >>".encode()
        # The binary comment line tells transfer programs the file is binary (7.5.2).
        out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
        offsets: list[int] = []
        for number, body in enumerate(self._objects, start=1):
            offsets.append(len(out))
            out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
        xref = len(out)
        out += f"xref\n0 {len(self._objects) + 1}\n0000000000 65535 f \n".encode()
        for offset in offsets:
            out += f"{offset:010d} 00000 n \n".encode()
        out += (
            f"trailer\n<< /Size {len(self._objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
        ).encode()
        return bytes(out)
