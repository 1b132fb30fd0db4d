"""What a print job becomes besides its PNGs, end to end (``dicomhub serve`` as the printer,
pynetdicom as the print SCU):

- the job's PDF at ``GET /print/jobs/{id}.pdf`` and ``dicomhub print-jobs --pdf``: one
  page per film, each page's MediaBox the Film Size ID in points (turned for LANDSCAPE),
  each page's image the film's PNG pixel for pixel; an unknown job is a 404 with a reason
  and a CLI message with a non-zero exit;
- N-SET of a film box: Trim, Magnification Type, Border Density and Min/Max Density
  change the printed film (checked by pixels, within 1 gray level); an attribute fixed at
  N-CREATE is 0x0105 No Such Attribute, an unsupported value 0x0106, the server stays up;
- the operating-system printer and N-EVENT-REPORT: the server's ``print_os_command`` is a
  small recording script standing in for CUPS ``lp`` (a mock of an OS printer: a real
  cupsd with a PDF queue does not install and start in seconds as an unprivileged
  process). It keeps each PDF it is given, or fails with a message on its standard error
  while a FAIL file exists. An SCU that proposed the Print Job SOP Class gets the job's
  reports (Printing, then Done or Failure) and the Printer's (Failure, then Normal again);
  the PDF the printer got is the job's PDF; a failed job records the command's message;
  an SCU that did not propose the Print Job SOP Class gets no job report;
- archiving (``print_archive``): each job's PDF is an Encapsulated PDF instance that
  QIDO-RS finds (in the printed images' study when they name one, else in the calling
  AE's own study under patient PRINTS) and whose document, retrieved with WADO-RS, is
  the bytes of ``GET /print/jobs/{id}.pdf``.
"""

from __future__ import annotations

import io
import re
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from .helpers import HOST, DicomhubServer, ServerPool, assert_alive, run_cli
from .test_print import (
    FILM_BOX,
    FILM_SESSION,
    GRAYSCALE_IMAGE_BOX,
    GRAYSCALE_META,
    PRINT_JOB,
    PRINTER,
    PRINTER_INSTANCE,
    PrintScu,
    blocking_reads_only,
    film_box,
    gradient,
    image_box,
    session_attributes,
)

pytestmark = pytest.mark.e2e

DPI = 30

# Stands in for `lp`: keeps the PDF from its standard input, or fails like lp does.
RECORDING_PRINTER = """
import pathlib, sys, uuid
spool = pathlib.Path(sys.argv[1])
pdf = sys.stdin.buffer.read()
if (spool / "FAIL").exists():
    sys.stderr.write("lp: The printer or class does not exist.\\n")
    sys.exit(1)
(spool / (uuid.uuid4().hex + ".pdf")).write_bytes(pdf)
"""


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spool")


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool, spool: Path) -> DicomhubServer:
    script = spool.parent / "fake_lp.py"
    script.write_text(RECORDING_PRINTER)
    command = ",".join([sys.executable, str(script), str(spool)])
    return module_servers.start(
        "print-output",
        args=["--print-dpi", str(DPI)],
        env={"DICOMHUB_PRINT_OS_COMMAND": command, "DICOMHUB_PRINT_ARCHIVE": "true"},
    )


def archived_pdf(hub: DicomhubServer, job: str) -> Dataset:
    """The job's Encapsulated PDF instance, found with QIDO-RS and retrieved with WADO-RS."""
    uid = job_state(hub, job)["archived_sop_instance_uid"]
    assert uid
    found = httpx.get(f"{hub.base_url}/dicomweb/instances", params={"SOPInstanceUID": uid}, timeout=10)
    assert found.status_code == 200, found.text
    [match] = found.json()
    assert match["00080016"]["Value"] == ["1.2.840.10008.5.1.4.1.1.104.1"]
    study, series = match["0020000D"]["Value"][0], match["0020000E"]["Value"][0]
    return DICOMwebClient(url=hub.base_url + "/dicomweb").retrieve_instance(study, series, uid)


def document(ds: Dataset) -> bytes:
    return bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)]


class ReportedScu(PrintScu):
    """A print SCU that takes N-EVENT-REPORTs: keeps them, answers Success, and tells when
    its answers have left the socket (releasing before that raced them, see
    test_storage_commitment.request). Without `print_job` it does not propose the Print
    Job SOP Class (and so must get no job report)."""

    def __init__(self, hub: DicomhubServer, calling: str, print_job: bool = True) -> None:  # noqa: PLW0231
        self.meta = GRAYSCALE_META
        self.last = Dataset()
        self.reports: list[tuple[str, str, int, Dataset]] = []
        self._queued = self._sent = 0
        self._lock = threading.Condition()
        self.ae = AE(ae_title=calling)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 60
        self.ae.add_requested_context(GRAYSCALE_META, [ExplicitVRLittleEndian])
        if print_job:
            self.ae.add_requested_context(PRINT_JOB, [ExplicitVRLittleEndian])
        self.assoc = self.ae.associate(
            HOST,
            hub.dimse_port,
            ae_title=hub.aet,
            evt_handlers=[
                (evt.EVT_N_EVENT_REPORT, self._report),
                (evt.EVT_DIMSE_SENT, self._dimse_sent),
                (evt.EVT_PDU_SENT, self._pdu_sent),
                (evt.EVT_DIMSE_RECV, self._received),
            ],
        )
        assert self.assoc.is_established
        blocking_reads_only(self.assoc)

    def _report(self, event: evt.Event) -> tuple[int, None]:
        request = event.request
        with self._lock:
            self.reports.append(
                (
                    str(request.AffectedSOPClassUID),
                    str(request.AffectedSOPInstanceUID),
                    int(request.EventTypeID),
                    event.event_information,
                )
            )
        return 0x0000, None

    def _dimse_sent(self, event: evt.Event) -> None:
        if type(event.message).__name__ == "N_EVENT_REPORT_RSP":
            with self._lock:
                self._queued += 1

    def _pdu_sent(self, event: evt.Event) -> None:
        with self._lock:
            self._sent = self._queued
            self._lock.notify_all()

    def answered(self, count: int, timeout: float = 30) -> list[tuple[str, str, int, Dataset]]:
        """Wait until `count` reports are answered on the wire; the reports."""
        with self._lock:
            assert self._lock.wait_for(lambda: self._sent >= count, timeout), f"reports: {self.reports}"
            return list(self.reports)

    def print_one(self) -> str:
        """A film session with one 1x1 film box holding an image, printed; the job's id."""
        session = generate_uid()
        assert self.create(session_attributes("EVENTS"), FILM_SESSION, session)[0] == 0
        status, reply, _box = self.create(film_box("STANDARD\\1,1"), FILM_BOX)
        assert status == 0 and reply is not None
        only = reply.ReferencedImageBoxSequence[0].ReferencedSOPInstanceUID
        assert self.set(image_box(gradient(16, 16, 0), 1), GRAYSCALE_IMAGE_BOX, only) == 0
        status, action_reply = self.action(FILM_SESSION, session)
        assert status == 0 and action_reply is not None
        assert self.delete(FILM_SESSION, session) == 0
        return str(action_reply.ReferencedPrintJobSequence[0].ReferencedSOPInstanceUID)


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
    scu = ReportedScu(hub, "PDFSCU", print_job=False)
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
    # Archived in the calling AE's own study (the images name no study).
    archived = archived_pdf(hub, job)
    assert document(archived) == r.content and archived.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert archived.PatientID == "PRINTS" and archived.Modality == "DOC"

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
    scu = ReportedScu(hub, "NSETSCU", print_job=False)
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


def job_state(hub: DicomhubServer, job: str) -> dict[str, Any]:
    r = httpx.get(f"{hub.base_url}/print/jobs/{job}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_os_printer_and_event_reports(hub: DicomhubServer, spool: Path) -> None:
    scu = ReportedScu(hub, "EVENTSCU")
    job = scu.print_one()
    reports = scu.answered(2)
    assert [(c, i, e) for c, i, e, _ in reports] == [
        (PRINT_JOB, job, 2),
        (PRINT_JOB, job, 3),
    ]  # Printing, Done
    assert reports[1][3].ExecutionStatusInfo == "NORMAL" and reports[1][3].FilmSessionLabel == "EVENTS"
    status, got = scu.assoc.send_n_get([0x21000020], PRINT_JOB, job)
    assert status.Status == 0 and got is not None and got.ExecutionStatus == "DONE"
    printed = [path.read_bytes() for path in spool.glob("*.pdf")]
    pdf = httpx.get(f"{hub.base_url}/print/jobs/{job}.pdf", timeout=10).content
    assert pdf in printed
    assert job_state(hub, job)["state"] == "DONE"

    (spool / "FAIL").write_text("")
    failed = scu.print_one()
    reports = scu.answered(5)[2:]  # the job: Printing, Failure; the Printer: Failure
    assert [(c, i, e) for c, i, e, _ in reports] == [
        (PRINT_JOB, failed, 2),
        (PRINT_JOB, failed, 4),
        (PRINTER, PRINTER_INSTANCE, 3),
    ]
    assert reports[2][3].PrinterStatusInfo == "PRINTER DOWN"
    status, printer = scu.assoc.send_n_get([0x21100010], PRINTER, PRINTER_INSTANCE, meta_uid=GRAYSCALE_META)
    assert status.Status == 0 and printer is not None and printer.PrinterStatus == "FAILURE"
    state = job_state(hub, failed)
    assert state["state"] == "FAILURE" and "The printer or class does not exist" in state["status_info"]

    (spool / "FAIL").unlink()
    again = scu.print_one()
    reports = scu.answered(8)[5:]
    assert [(c, i, e) for c, i, e, _ in reports] == [
        (PRINT_JOB, again, 2),
        (PRINT_JOB, again, 3),
        (PRINTER, PRINTER_INSTANCE, 1),  # Normal again
    ]
    scu.release()

    # Without the Print Job SOP Class: printed, but no job report.
    quiet = ReportedScu(hub, "QUIETSCU", print_job=False)
    job = quiet.print_one()
    deadline = time.monotonic() + 20
    while job_state(hub, job)["state"] != "DONE" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job_state(hub, job)["state"] == "DONE"
    # one more exchange: a report sent after the print would have arrived before its answer
    status, _ = quiet.assoc.send_n_get([0x21100010], PRINTER, PRINTER_INSTANCE, meta_uid=GRAYSCALE_META)
    assert status.Status == 0
    assert quiet.reports == []
    quiet.release()
    assert_alive(hub)


def test_archived_in_the_printed_images_study(hub: DicomhubServer) -> None:
    scu = ReportedScu(hub, "IDENTSCU", print_job=False)
    session = generate_uid()
    assert scu.create(session_attributes("IDENT"), FILM_SESSION, session)[0] == 0
    status, reply, _box = scu.create(film_box("STANDARD\\1,1"), FILM_BOX)
    assert status == 0 and reply is not None
    change = image_box(gradient(16, 16, 2), 1)
    item = change.BasicGrayscaleImageSequence[0]
    study = generate_uid()
    item.PatientID, item.PatientName, item.StudyInstanceUID = "P-PRINTED", "Printed^Pat", study
    only = reply.ReferencedImageBoxSequence[0].ReferencedSOPInstanceUID
    assert scu.set(change, GRAYSCALE_IMAGE_BOX, only) == 0
    status, action_reply = scu.action(FILM_SESSION, session)
    assert status == 0 and action_reply is not None
    job = str(action_reply.ReferencedPrintJobSequence[0].ReferencedSOPInstanceUID)
    scu.release()
    archived = archived_pdf(hub, job)
    assert (archived.StudyInstanceUID, archived.PatientID) == (study, "P-PRINTED")
    pdf = httpx.get(f"{hub.base_url}/print/jobs/{job}.pdf", timeout=10)
    assert document(archived) == pdf.content
    studies = httpx.get(
        f"{hub.base_url}/dicomweb/studies", params={"PatientID": "P-PRINTED"}, timeout=10
    ).json()
    assert [s["0020000D"]["Value"][0] for s in studies] == [study]
