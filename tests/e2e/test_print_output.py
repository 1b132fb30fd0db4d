"""What a print job becomes besides its PNGs, end to end (``dicomhub serve`` as the printer,
pynetdicom as the print SCU):

- the job's PDF at ``GET /print/jobs/{id}.pdf`` and ``dicomhub print-jobs --pdf``: one
  page per film, each page's MediaBox the Film Size ID in points (turned for LANDSCAPE),
  each page's image the film's PNG pixel for pixel; an unknown job is a 404 with a reason
  and a CLI message with a non-zero exit;
- N-SET of a film box: Trim, Magnification Type, Border Density and Min/Max Density
  change the printed film (checked by pixels, within 1 gray level); an attribute fixed at
  N-CREATE is 0x0105 No Such Attribute, an unsupported value 0x0106, the server stays up.
"""

from __future__ import annotations

import io
import re
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from .helpers import DicomhubServer, ServerPool, assert_alive, run_cli
from .test_print import (
    FILM_BOX,
    FILM_SESSION,
    GRAYSCALE_IMAGE_BOX,
    PrintScu,
    film_box,
    gradient,
    image_box,
    session_attributes,
)

pytestmark = pytest.mark.e2e

DPI = 30


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool) -> DicomhubServer:
    return module_servers.start("print-output", args=["--print-dpi", str(DPI)])


def _pdf_pages(pdf: bytes) -> list[tuple[tuple[float, float], bytes, tuple[int, int]]]:
    """(MediaBox size, inflated image, image size) of each page, in page order."""
    objects = {
        int(m.group(1)): m.group(2) for m in re.finditer(rb"(\d+) 0 obj\n(.*?)\nendobj\n", pdf, re.DOTALL)
    }
    kids = re.search(rb"/Kids \[([^\]]*)\]", pdf)
    assert kids is not None
    pages = []
    for kid in re.findall(rb"(\d+) 0 R", kids.group(1)):
        page = objects[int(kid)]
        box = re.search(rb"/MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", page)
        film = re.search(rb"/Film (\d+) 0 R", page)
        assert box is not None and film is not None
        image = objects[int(film.group(1))]
        size = re.search(rb"/Width (\d+) /Height (\d+)", image)
        assert size is not None
        data = image[image.index(b"stream\n") + 7 : image.rindex(b"\nendstream")]
        pages.append(
            (
                (float(box.group(1)), float(box.group(2))),
                zlib.decompress(data),
                (int(size.group(1)), int(size.group(2))),
            )
        )
    return pages


def test_job_pdf(hub: DicomhubServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    scu = PrintScu(hub, "PDFSCU")
    session = generate_uid()
    assert scu.create(session_attributes("PDF"), FILM_SESSION, session)[0] == 0
    status, reply, _first = scu.create(film_box("STANDARD\\1,2"), FILM_BOX)
    assert status == 0 and reply is not None
    boxes = [item.ReferencedSOPInstanceUID for item in reply.ReferencedImageBoxSequence]
    assert scu.set(image_box(gradient(40, 30, 0), 1), GRAYSCALE_IMAGE_BOX, boxes[0]) == 0
    status, reply, _second = scu.create(
        film_box("STANDARD\\1,1", FilmOrientation="LANDSCAPE", FilmSizeID="24CMX30CM"), FILM_BOX
    )
    assert status == 0 and reply is not None
    only = reply.ReferencedImageBoxSequence[0].ReferencedSOPInstanceUID
    assert scu.set(image_box(gradient(30, 50, 1), 1, "REVERSE"), GRAYSCALE_IMAGE_BOX, only) == 0
    status, action_reply = scu.action(FILM_SESSION, session)
    assert status == 0 and action_reply is not None
    job = str(action_reply.ReferencedPrintJobSequence[0].ReferencedSOPInstanceUID)
    scu.release()

    r = httpx.get(f"{hub.base_url}/print/jobs/{job}.pdf", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf"
    assert r.content.startswith(b"%PDF-1.4") and r.content.endswith(b"%%EOF\n")
    pages = _pdf_pages(r.content)
    # 14INX17IN portrait, 24CMX30CM landscape: inches x 72 points
    assert [size for size, _, _ in pages] == [(1008.0, 1224.0), pytest.approx((850.39, 680.31), abs=0.01)]
    for number, (_size, pixels, (width, height)) in enumerate(pages, start=1):
        png = httpx.get(f"{hub.base_url}/print/jobs/{job}/films/{number}.png", timeout=10)
        film = Image.open(io.BytesIO(png.content))
        assert (width, height) == film.size
        assert np.array_equal(np.frombuffer(pixels, np.uint8), np.asarray(film).ravel())
    listed = httpx.get(f"{hub.base_url}/print/jobs/{job}", timeout=10).json()
    assert listed["pdf"]["size"] == len(r.content)

    out = tmp_path_factory.mktemp("pdf") / "job.pdf"
    code, text = run_cli("print-jobs", "--pdf", job, "--output", str(out), "--data-dir", str(hub.data_dir))
    assert code == 0, text
    assert out.read_bytes() == r.content

    missing = httpx.get(f"{hub.base_url}/print/jobs/2.25.42.pdf", timeout=10)
    assert missing.status_code == 404 and "2.25.42" in missing.text
    code, text = run_cli(
        "print-jobs", "--pdf", "2.25.42", "--output", str(out), "--data-dir", str(hub.data_dir)
    )
    assert code != 0 and "no print job 2.25.42" in text


def test_film_box_n_set(hub: DicomhubServer) -> None:
    scu = PrintScu(hub, "NSETSCU")
    assert scu.create(session_attributes("N-SET"), FILM_SESSION, generate_uid())[0] == 0
    status, reply, box = scu.create(film_box("STANDARD\\1,1", FilmSizeID="8INX10IN"), FILM_BOX)
    assert status == 0 and reply is not None
    only = reply.ReferencedImageBoxSequence[0].ReferencedSOPInstanceUID
    values = np.zeros((4, 4), np.uint8)
    values[:, 2:] = 255
    assert scu.set(image_box(values, 1), GRAYSCALE_IMAGE_BOX, only) == 0

    fixed = film_box("STANDARD\\2,2")  # the layout is fixed at N-CREATE
    assert scu.set(fixed, FILM_BOX, box) == 0x0105
    bad = Dataset()
    bad.MinDensity, bad.MaxDensity = 200, 100
    assert scu.set(bad, FILM_BOX, box) == 0x0106
    change = Dataset()
    change.Trim = "YES"
    change.MagnificationType = "REPLICATE"
    change.BorderDensity = "WHITE"
    change.MinDensity, change.MaxDensity = 30, 270
    assert scu.set(change, FILM_BOX, box) == 0
    status, action_reply = scu.action(FILM_BOX, box)
    assert status == 0 and action_reply is not None
    job = str(action_reply.ReferencedPrintJobSequence[0].ReferencedSOPInstanceUID)
    scu.release()

    png = httpx.get(f"{hub.base_url}/print/jobs/{job}/films/1.png", timeout=10)
    pixels = np.asarray(Image.open(io.BytesIO(png.content)), dtype=np.int16)
    assert pixels.shape == (10 * DPI, 8 * DPI)  # 300 x 240: the 4x4 image x60 at y 30
    white, black = 255 * (1 - 30 / 300), 255 * (1 - 270 / 300)
    assert np.abs(pixels[40:260, 10:110] - black).max() <= 1
    assert np.abs(pixels[40:260, 130:230] - white).max() <= 1
    assert (pixels[0:29, :] == 255).all()  # white border above the image...
    assert (pixels[29, :] == 0).all()  # ...and the trim box just above it (1 pixel at 30 dpi)
    assert (pixels[30:270, 0] == 0).all()  # the image fills the width: its edge column is the trim
    listed = httpx.get(f"{hub.base_url}/print/jobs/{job}", timeout=10).json()
    assert listed["films"][0]["Trim"] == "YES" and listed["films"][0]["MinDensity"] == "30"
    assert_alive(hub)
