"""The print job PDF: one page per film, each exactly the film's physical size, lossless.

Read back with regular expressions and zlib (no PDF library is a dependency):
the cross-reference table must point at every object, each page's MediaBox
must be the Film Size ID in points (turned for LANDSCAPE), and each page's
image stream must inflate to the film's pixels exactly.
"""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest
from PIL import Image

from dicomhub.services.printpdf import FilmPdf, page_size


def _group(pattern: bytes, data: bytes) -> bytes:
    found = re.search(pattern, data)
    assert found is not None, f"{pattern!r} not found"
    return found.group(1)


def _objects(pdf: bytes) -> dict[int, bytes]:
    """Objects by number, checked against the cross-reference table."""
    xref = int(_group(rb"startxref\n(\d+)\n%%EOF\n$", pdf))
    assert pdf[xref:].startswith(b"xref\n0 ")
    count = int(_group(rb"^xref\n0 (\d+)\n", pdf[xref:]))
    entries = re.findall(rb"(\d{10}) 00000 n \n", pdf[xref:])
    assert len(entries) == count - 1
    objects = {}
    for number, offset in enumerate((int(e) for e in entries), start=1):
        head = f"{number} 0 obj\n".encode()
        assert pdf[offset:].startswith(head), f"xref entry {number} points at {pdf[offset : offset + 20]!r}"
        end = pdf.index(b"\nendobj\n", offset)
        objects[number] = pdf[offset + len(head) : end]
    return objects


def _stream(body: bytes) -> bytes:
    length = int(_group(rb"/Length (\d+)", body))
    start = body.index(b"stream\n") + len(b"stream\n")
    assert body[start + length :] == b"\nendstream"
    return body[start : start + length]


def test_pages_have_the_film_size_and_hold_the_films_losslessly() -> None:
    rng = np.random.default_rng(7)
    gray = Image.fromarray(rng.integers(0, 256, (340, 280), dtype=np.uint8), "L")
    color = Image.fromarray(rng.integers(0, 256, (210, 297, 3), dtype=np.uint8), "RGB")
    pdf = FilmPdf()
    pdf.add_film(gray, "14INX17IN", "PORTRAIT")
    pdf.add_film(color, "A4", "LANDSCAPE")
    data = pdf.finish()
    assert data.startswith(b"%PDF-1.4\n")
    objects = _objects(data)
    catalog = objects[1]
    assert b"/Type /Catalog" in catalog and b"/Pages 2 0 R" in catalog
    kids = [int(k) for k in re.findall(rb"(\d+) 0 R", objects[2])]
    assert b"/Count 2" in objects[2] and len(kids) == 2

    expected = [((1008.0, 1224.0), gray, b"/DeviceGray"), ((841.89, 595.28), color, b"/DeviceRGB")]
    for kid, ((width, height), film, space) in zip(kids, expected, strict=True):
        page = objects[kid]
        box = re.search(rb"/MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", page)
        assert box is not None
        assert (float(box.group(1)), float(box.group(2))) == pytest.approx((width, height), abs=0.01)
        image = objects[int(_group(rb"/Film (\d+) 0 R", page))]
        assert space in image and b"/FlateDecode" in image
        assert f"/Width {film.width} /Height {film.height}".encode() in image
        assert zlib.decompress(_stream(image)) == film.tobytes()
        contents = _stream(objects[int(_group(rb"/Contents (\d+) 0 R", page))])
        # The image (unit square) is scaled onto the whole page.
        assert contents.startswith(f"q {box.group(1).decode()} 0 0 {box.group(2).decode()} 0 0 cm".encode())


def test_page_size_turns_for_landscape() -> None:
    assert page_size("8INX10IN", "PORTRAIT") == (576.0, 720.0)
    assert page_size("8INX10IN", "LANDSCAPE") == (720.0, 576.0)
    assert page_size("24CMX30CM", "PORTRAIT") == pytest.approx((680.31, 850.39), abs=0.01)
