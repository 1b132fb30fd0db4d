"""Print Management end to end: ``dicomhub serve`` as the printer, pynetdicom as the print SCU.

- the complete sequence on the grayscale meta SOP class: N-GET of the Printer, N-CREATE of
  the film session, N-CREATE of a STANDARD\\2,2 film box (the response names its four image
  boxes), N-SET of three of them (one REVERSE), N-ACTION on the film box; then a second
  film box ROW\\1,2 on landscape 8INX10IN film printed with N-ACTION on the film session
  (one job, both films), N-DELETE of a film box and of the session. ``GET /print/jobs``
  and ``dicomhub print-jobs`` list the jobs with their source AE; each film's PNG is
  checked by pixels (every image box's region holds its image resampled, polarity
  applied, within 3 gray levels on average);
- a color film on the color meta SOP class (RGB, checked by pixels);
- a Presentation LUT (a table) referenced by a film box maps the film's values;
- N-GET of the Print Job named in the N-ACTION response: Execution Status DONE;
- the refusals of PS3.4 H with their statuses, the server staying up;
- an association aborted in the middle of a session leaves no job.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from .helpers import HOST, DicomhubServer, ServerPool, assert_alive, run_cli

pytestmark = pytest.mark.e2e

GRAYSCALE_META = "1.2.840.10008.5.1.1.9"
COLOR_META = "1.2.840.10008.5.1.1.18"
COLOR_IMAGE_BOX = "1.2.840.10008.5.1.1.4.1"
FILM_SESSION = "1.2.840.10008.5.1.1.1"
FILM_BOX = "1.2.840.10008.5.1.1.2"
GRAYSCALE_IMAGE_BOX = "1.2.840.10008.5.1.1.4"
PRINTER = "1.2.840.10008.5.1.1.16"
PRINTER_INSTANCE = "1.2.840.10008.5.1.1.17"
PRINT_JOB = "1.2.840.10008.5.1.1.14"
PRESENTATION_LUT = "1.2.840.10008.5.1.1.23"
DPI = 30


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool) -> DicomhubServer:
    return module_servers.start("print", args=["--print-dpi", str(DPI)])


def gradient(rows: int, columns: int, seed: int) -> NDArray[np.uint8]:
    y, x = np.mgrid[0:rows, 0:columns]
    return ((x * 4 + y * 2 + seed * 40) % 256).astype(np.uint8)


def preformatted(values: NDArray[np.uint8]) -> Dataset:
    ds = Dataset()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = values.shape
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = values.tobytes()
    return ds


def image_box(values: NDArray[np.uint8], position: int, polarity: str = "NORMAL") -> Dataset:
    ds = Dataset()
    ds.ImageBoxPosition = position
    ds.Polarity = polarity
    ds.BasicGrayscaleImageSequence = Sequence([preformatted(values)])
    return ds


def session_attributes(label: str = "E2E") -> Dataset:
    # Never an empty data set: pynetdicom announces one and then sends no data PDV.
    ds = Dataset()
    ds.NumberOfCopies = 1
    ds.FilmSessionLabel = label
    return ds


def film_box(layout: str, **extra: str) -> Dataset:
    ds = Dataset()
    ds.ImageDisplayFormat = layout
    ds.BorderDensity = "BLACK"
    ds.EmptyImageDensity = "WHITE"
    ds.ReferencedFilmSessionSequence = Sequence()
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def blocking_reads_only(assoc: Any) -> None:
    """Leave the messages of `assoc` to its ``send_*()`` calls.

    pynetdicom's requestor reactor can take a response off the queue between two
    requests when it comes back within microseconds ("Received unexpected N-SET
    service message" and a DIMSE timeout; pynetdicom issue #875): the reactor
    passes its checkpoint just as the next ``send_*()`` pauses it. A print SCU
    expects no requests from the printer, so the reactor's non-blocking reads are
    turned off; the blocking reads of ``send_*()`` are unchanged.
    """
    get_msg = assoc.dimse.get_msg

    def blocking_only(block: bool = False) -> Any:
        return get_msg(block=True) if block else (None, None)

    assoc.dimse.get_msg = blocking_only


class PrintScu:
    """A pynetdicom association proposing the grayscale print meta SOP class; keeps the last
    response's command set (for the Affected SOP Instance UID the SCP chose)."""

    def __init__(self, hub: DicomhubServer, calling: str = "PRINTSCU", meta: str = GRAYSCALE_META) -> None:
        self.meta = meta
        self.ae = AE(ae_title=calling)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 60
        self.ae.add_requested_context(meta, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.ae.add_requested_context(PRINT_JOB, [ExplicitVRLittleEndian])
        self.ae.add_requested_context(PRESENTATION_LUT, [ExplicitVRLittleEndian])
        self.last = Dataset()
        self.assoc = self.ae.associate(
            HOST, hub.dimse_port, ae_title=hub.aet, evt_handlers=[(evt.EVT_DIMSE_RECV, self._received)]
        )
        assert self.assoc.is_established
        blocking_reads_only(self.assoc)

    def _received(self, event: evt.Event) -> None:
        self.last = event.message.command_set

    def create(self, ds: Dataset, sop_class: str, uid: str | None = None) -> tuple[int, Dataset | None, str]:
        status, reply = self.assoc.send_n_create(ds, sop_class, uid, meta_uid=self.meta)
        return int(status.Status), reply, str(self.last.get("AffectedSOPInstanceUID", ""))

    def set(self, ds: Dataset, sop_class: str, uid: str) -> int:
        status, _ = self.assoc.send_n_set(ds, sop_class, uid, meta_uid=self.meta)
        return int(status.Status)

    def action(self, sop_class: str, uid: str) -> tuple[int, Dataset | None]:
        status, reply = self.assoc.send_n_action(None, 1, sop_class, uid, meta_uid=self.meta)
        return int(status.Status), reply

    def delete(self, sop_class: str, uid: str) -> int:
        status = self.assoc.send_n_delete(sop_class, uid, meta_uid=self.meta)
        return int(status.Status)

    def release(self) -> None:
        self.assoc.release()


@pytest.fixture
def scu(hub: DicomhubServer) -> Iterator[PrintScu]:
    client = PrintScu(hub)
    yield client
    if client.assoc.is_established:
        client.release()


def jobs(hub: DicomhubServer) -> list[dict[str, Any]]:
    r = httpx.get(f"{hub.base_url}/print/jobs", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def film_png(hub: DicomhubServer, job: str, number: int) -> NDArray[np.float64]:
    r = httpx.get(f"{hub.base_url}/print/jobs/{job}/films/{number}.png", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("L"), dtype=np.float64)


def check_film(
    film: NDArray[np.float64],
    boxes: list[tuple[float, float, float, float]],
    images: list[NDArray[np.uint8] | None],
) -> None:
    """Each box: its image fitted (aspect kept, centred) within tolerance; an empty box is white."""
    height, width = film.shape
    for (x0, y0, x1, y1), values in zip(boxes, images, strict=True):
        cell = (round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height))
        if values is None:
            assert film[cell[1] : cell[3], cell[0] : cell[2]].min() == 255
            continue
        cw, ch = cell[2] - cell[0], cell[3] - cell[1]
        scale = min(cw / values.shape[1], ch / values.shape[0])
        w, h = round(values.shape[1] * scale), round(values.shape[0] * scale)
        left, top = cell[0] + (cw - w) // 2, cell[1] + (ch - h) // 2
        want = np.asarray(
            Image.fromarray(values, "L").resize((w, h), Image.Resampling.BILINEAR), dtype=np.float64
        )
        region = film[top : top + h, left : left + w]
        assert np.abs(region - want).mean() <= 3, (
            f"box {cell}: mean difference {np.abs(region - want).mean()}"
        )


def test_printer_status(scu: PrintScu) -> None:
    status, reply = scu.assoc.send_n_get(
        [0x21100010, 0x21100030], PRINTER, PRINTER_INSTANCE, meta_uid=GRAYSCALE_META
    )
    assert int(status.Status) == 0
    assert reply is not None and reply.PrinterStatus == "NORMAL" and reply.PrinterName == "DICOMHUB"


def test_print_two_layouts(hub: DicomhubServer, scu: PrintScu) -> None:
    before = {job["id"] for job in jobs(hub)}
    session = generate_uid()
    assert scu.create(session_attributes(), FILM_SESSION, session)[0] == 0

    status, reply, box_uid = scu.create(film_box("STANDARD\\2,2"), FILM_BOX)
    assert status == 0 and box_uid and reply is not None
    image_boxes = [item.ReferencedSOPInstanceUID for item in reply.ReferencedImageBoxSequence]
    assert len(image_boxes) == 4
    assert {item.ReferencedSOPClassUID for item in reply.ReferencedImageBoxSequence} == {GRAYSCALE_IMAGE_BOX}
    pictures = [gradient(64, 48, 0), gradient(48, 64, 1), gradient(32, 32, 2)]
    assert scu.set(image_box(pictures[0], 1), GRAYSCALE_IMAGE_BOX, image_boxes[0]) == 0
    assert scu.set(image_box(pictures[1], 2, "REVERSE"), GRAYSCALE_IMAGE_BOX, image_boxes[1]) == 0
    assert scu.set(image_box(pictures[2], 3), GRAYSCALE_IMAGE_BOX, image_boxes[2]) == 0
    status, action_reply = scu.action(FILM_BOX, box_uid)
    assert status == 0 and action_reply is not None
    first_job = action_reply.ReferencedPrintJobSequence[0].ReferencedSOPInstanceUID

    status, reply, second_box = scu.create(
        film_box("ROW\\1,2", FilmOrientation="LANDSCAPE", FilmSizeID="8INX10IN"), FILM_BOX
    )
    assert status == 0 and reply is not None
    row_boxes = [item.ReferencedSOPInstanceUID for item in reply.ReferencedImageBoxSequence]
    assert len(row_boxes) == 3
    wide = gradient(40, 120, 3)
    assert scu.set(image_box(wide, 1), GRAYSCALE_IMAGE_BOX, row_boxes[0]) == 0
    assert scu.set(image_box(pictures[2], 3), GRAYSCALE_IMAGE_BOX, row_boxes[2]) == 0
    status, action_reply = scu.action(FILM_SESSION, session)  # both film boxes: one job, two films
    assert status == 0 and action_reply is not None
    second_job = action_reply.ReferencedPrintJobSequence[0].ReferencedSOPInstanceUID
    status, job_status = scu.assoc.send_n_get([0x21000020, 0x21000070], PRINT_JOB, second_job)
    assert int(status.Status) == 0 and job_status is not None
    assert (job_status.ExecutionStatus, job_status.Originator) == ("DONE", "PRINTSCU")
    assert int(scu.assoc.send_n_get([0x21000020], PRINT_JOB, generate_uid())[0].Status) == 0x0112
    assert scu.delete(FILM_BOX, box_uid) == 0
    assert scu.delete(FILM_SESSION, session) == 0
    scu.release()

    listed = {job["id"]: job for job in jobs(hub) if job["id"] not in before}
    assert set(listed) == {first_job, second_job}
    one, two = listed[first_job], listed[second_job]
    assert one["state"] == two["state"] == "DONE"
    assert one["source_ae"] == "PRINTSCU" and one["film_session"]["FilmSessionLabel"] == "E2E"
    assert [f["ImageDisplayFormat"] for f in one["films"]] == ["STANDARD\\2,2"]
    assert [f["ImageDisplayFormat"] for f in two["films"]] == ["STANDARD\\2,2", "ROW\\1,2"]
    assert (one["films"][0]["width"], one["films"][0]["height"]) == (14 * DPI, 17 * DPI)
    assert (two["films"][1]["width"], two["films"][1]["height"]) == (10 * DPI, 8 * DPI)

    quarters = [(0.0, 0.0, 0.5, 0.5), (0.5, 0.0, 1.0, 0.5), (0.0, 0.5, 0.5, 1.0), (0.5, 0.5, 1.0, 1.0)]
    expected_first = [pictures[0], 255 - pictures[1], pictures[2], None]
    check_film(film_png(hub, first_job, 1), quarters, expected_first)
    check_film(film_png(hub, second_job, 1), quarters, expected_first)
    rows = [(0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 0.5, 1.0), (0.5, 0.5, 1.0, 1.0)]
    check_film(film_png(hub, second_job, 2), rows, [wide, None, pictures[2]])
    assert httpx.get(f"{hub.base_url}/print/jobs/{second_job}/films/3.png", timeout=10).status_code == 404
    assert httpx.get(f"{hub.base_url}/print/jobs/{second_job}/films/x.png", timeout=10).status_code == 400
    assert httpx.get(f"{hub.base_url}/print/jobs/2.25.1/films/1.png", timeout=10).status_code == 404

    code, out = run_cli("print-jobs", "--json", "--data-dir", str(hub.data_dir))
    assert code == 0, out
    assert {first_job, second_job} <= {job["id"] for job in json.loads(out)}


def test_refusals(hub: DicomhubServer, scu: PrintScu) -> None:
    assert scu.create(film_box("STANDARD\\1,1"), FILM_BOX)[0] == 0x0117  # no film session yet
    session = generate_uid()
    assert scu.create(session_attributes(), FILM_SESSION, session)[0] == 0
    assert scu.create(session_attributes(), FILM_SESSION, generate_uid())[0] == 0x0111  # one per association
    assert scu.action(FILM_SESSION, session)[0] == 0xC600  # no film box to print
    assert scu.create(film_box("SLIDE"), FILM_BOX)[0] == 0x0106
    assert scu.create(film_box("STANDARD\\1,1", FilmSizeID="35MMX35MM"), FILM_BOX)[0] == 0x0106
    status, reply, box = scu.create(film_box("STANDARD\\1,1"), FILM_BOX)
    assert status == 0 and reply is not None
    only = reply.ReferencedImageBoxSequence[0].ReferencedSOPInstanceUID
    picture = gradient(16, 16, 0)
    assert scu.set(image_box(picture, 2), GRAYSCALE_IMAGE_BOX, only) == 0x0106  # outside the layout
    assert scu.set(image_box(picture, 1), GRAYSCALE_IMAGE_BOX, generate_uid()) == 0x0112
    assert scu.set(image_box(picture, 1), GRAYSCALE_IMAGE_BOX, box) == 0x0119  # a film box, not an image box
    too_large = image_box(gradient(17 * DPI + 10, 20, 0), 1)
    too_large.MagnificationType = "NONE"
    assert scu.set(too_large, GRAYSCALE_IMAGE_BOX, only) == 0xC603
    assert scu.set(image_box(gradient(17 * DPI + 10, 20, 0), 1), GRAYSCALE_IMAGE_BOX, only) == 0xB604
    before = len(jobs(hub))
    assert scu.action(FILM_BOX, generate_uid())[0] == 0x0112
    assert len(jobs(hub)) == before
    # An empty film box prints, with a warning (PS3.4 H.4.2.2.4.2).
    status, reply, empty = scu.create(film_box("STANDARD\\2,1"), FILM_BOX)
    assert status == 0
    assert scu.action(FILM_BOX, empty)[0] == 0xB603
    assert len(jobs(hub)) == before + 1
    assert_alive(hub)


def test_print_color(hub: DicomhubServer) -> None:
    client = PrintScu(hub, "COLORSCU", COLOR_META)
    assert client.create(session_attributes("COLOR"), FILM_SESSION, generate_uid())[0] == 0
    status, reply, box = client.create(film_box("STANDARD\\1,1", FilmSizeID="8INX10IN"), FILM_BOX)
    assert status == 0 and reply is not None
    assert reply.ReferencedImageBoxSequence[0].ReferencedSOPClassUID == COLOR_IMAGE_BOX
    rgb = np.zeros((20, 16, 3), dtype=np.uint8)
    rgb[...] = (200, 100, 30)
    rgb[:10, :, 2] = 250
    item = Dataset()
    item.Rows, item.Columns, item.SamplesPerPixel = 20, 16, 3
    item.PhotometricInterpretation = "RGB"
    item.PlanarConfiguration = 0
    item.BitsAllocated = item.BitsStored = 8
    item.HighBit, item.PixelRepresentation = 7, 0
    item.PixelData = rgb.tobytes()
    change = Dataset()
    change.ImageBoxPosition = 1
    change.BasicColorImageSequence = Sequence([item])
    only = reply.ReferencedImageBoxSequence[0].ReferencedSOPInstanceUID
    # a grayscale image box class on the color meta SOP class is not one it groups: 0x0118
    assert client.set(change, GRAYSCALE_IMAGE_BOX, only) == 0x0118
    assert client.set(change, COLOR_IMAGE_BOX, only) == 0
    status, action_reply = client.action(FILM_BOX, box)
    assert status == 0 and action_reply is not None
    job = action_reply.ReferencedPrintJobSequence[0].ReferencedSOPInstanceUID
    client.release()
    r = httpx.get(f"{hub.base_url}/print/jobs/{job}/films/1.png", timeout=10)
    assert r.status_code == 200
    film = Image.open(io.BytesIO(r.content))
    assert film.mode == "RGB" and film.size == (8 * DPI, 10 * DPI)
    pixels = np.asarray(film, dtype=np.int16)
    # 16x20 scaled x15 fills the 240x300 film: top half blue 250, bottom half blue 30
    assert np.abs(pixels[60, 120] - (200, 100, 250)).max() <= 2
    assert np.abs(pixels[240, 120] - (200, 100, 30)).max() <= 2


def test_presentation_lut(hub: DicomhubServer, scu: PrintScu) -> None:
    """An inverting Presentation LUT (10-bit entries) referenced by the film box inverts the film."""
    item = Dataset()
    item.add_new(0x00283002, "US", [256, 0, 10])  # LUT Descriptor
    item.add_new(0x00283006, "OW", np.array([1023 - 4 * v for v in range(256)], "<u2").tobytes())
    lut = Dataset()
    lut.PresentationLUTSequence = Sequence([item])
    status, _ = scu.assoc.send_n_create(lut, PRESENTATION_LUT, "1.2.826.0.1.3680043.10.1419.9.1")
    assert int(status.Status) == 0
    shape = Dataset()
    shape.PresentationLUTShape = "INVERSE"  # softcopy only
    assert int(scu.assoc.send_n_create(shape, PRESENTATION_LUT, generate_uid())[0].Status) == 0x0106
    assert scu.create(session_attributes("LUT"), FILM_SESSION, generate_uid())[0] == 0
    reference = Dataset()
    reference.ReferencedSOPClassUID = PRESENTATION_LUT
    reference.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.10.1419.9.1"
    attributes = film_box("STANDARD\\1,1", FilmSizeID="8INX10IN", MagnificationType="REPLICATE")
    attributes.ReferencedPresentationLUTSequence = Sequence([reference])
    status, reply, box = scu.create(attributes, FILM_BOX)
    assert status == 0 and reply is not None
    values = gradient(20, 16, 5)  # x15 fills the 240x300 film
    only = reply.ReferencedImageBoxSequence[0].ReferencedSOPInstanceUID
    assert scu.set(image_box(values, 1), GRAYSCALE_IMAGE_BOX, only) == 0
    status, action_reply = scu.action(FILM_BOX, box)
    assert status == 0 and action_reply is not None
    job = action_reply.ReferencedPrintJobSequence[0].ReferencedSOPInstanceUID
    film = film_png(hub, job, 1)
    sampled = film[7::15, 7::15]
    assert sampled.shape == values.shape
    assert np.abs(sampled - (255 - values.astype(np.float64))).max() <= 1


def test_aborted_session_leaves_no_job(hub: DicomhubServer) -> None:
    before = len(jobs(hub))
    client = PrintScu(hub, "ABORTSCU")
    assert client.create(session_attributes(), FILM_SESSION, generate_uid())[0] == 0
    status, reply, _box = client.create(film_box("STANDARD\\1,1"), FILM_BOX)
    assert status == 0 and reply is not None
    only = reply.ReferencedImageBoxSequence[0].ReferencedSOPInstanceUID
    assert client.set(image_box(gradient(16, 16, 0), 1), GRAYSCALE_IMAGE_BOX, only) == 0
    client.assoc.abort()
    time.sleep(0.5)
    assert len(jobs(hub)) == before
    assert all(job["source_ae"] != "ABORTSCU" for job in jobs(hub))
    assert_alive(hub)
