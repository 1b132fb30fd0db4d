"""Printing with DCMTK's print tools: dicomhub's Print SCU to ``dcmprscp``, ``dcmprscu`` to dicomhub.

One ``dicomhub serve`` for the module, with three configured printers: DCMTK's
``dcmprscp`` (grayscale), dicomhub's own Print SCP (colour, to check the colour
meta SOP class end to end) and a pynetdicom printer that reports FAILURE.

- ``POST /print/requests`` prints a series of five CT images on STANDARD\\2,2 films to
  ``dcmprscp``: two films (4 + 1 images); ``dcmprscp`` keeps a Stored Print object per
  film and a Hardcopy Grayscale image per image box; each hardcopy image equals the CT
  image windowed with its header's VOI window (computed here from PS3.3 C.11.2.1.2),
  within 1 gray level;
- ``dicomhub print`` (the CLI) prints an image larger than the printer's image box: the
  hardcopy image is scaled down to the box (aspect ratio kept) and matches the windowed
  source resampled, within 2 gray levels on average;
- a colour image goes to a colour printer (dicomhub's own Print SCP) as RGB on the
  Basic Color Print Management Meta SOP Class, with the film session's copies, medium and
  destination; the job's film matches it by pixels;
- refusals: unknown printer, unknown study, a malformed request, a layout the printer
  does not support (its failure status), a printer in FAILURE, an unreachable printer;
  a caller who may not read the study is told it is not found; the server stays up;
- ``dcmpsprt`` turns two CT images into a Stored Print job and ``dcmprscu`` spools it
  to dicomhub's Print SCP: ``GET /print/jobs`` shows one film of STANDARD\\2,1 from
  ``dcmprscu``'s AE title, its boxes matching the windowed CT images (within 3 gray
  levels on average, the film's own resampling included).
"""

from __future__ import annotations

import io
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import BasicGrayscalePrintManagementMeta  # type: ignore[attr-defined]

from .helpers import (
    HOST,
    DicomhubServer,
    ServerPool,
    assert_alive,
    free_port,
    popen_dcmtk,
    run_cli,
    run_dcmtk,
    store_ok,
    wait_for_port,
)

pytestmark = pytest.mark.e2e

DPI = 40  # 8INX10IN at 40 dpi: 320 x 400 pixels; a STANDARD\2,2 box 160 x 200
CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"
HARDCOPY_GRAYSCALE = "1.2.840.10008.5.1.1.29"


# ---------------------------------------------------------------- the study


def _dataset(study: str, series: str, number: int, sop_class: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName, ds.StudyID = "PRINT1", "Print^Film", "1"
    ds.Modality = "CT" if sop_class == CT else "OT"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    return ds


def ct_image(study: str, series: str, number: int, rows: int = 96, columns: int = 128) -> Dataset:
    ds = _dataset(study, series, number, CT)
    y, x = np.mgrid[0:rows, 0:columns]
    values = ((x * 23 + y * 11 + number * 331) % 2400).astype(np.uint16)
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 1500
    ds.PixelData = values.tobytes()
    return ds


def rgb_image(study: str, series: str) -> Dataset:
    ds = _dataset(study, series, 1, SC)
    y, x = np.mgrid[0:48, 0:64]
    pixels = np.stack([(x * 4) % 256, (y * 5) % 256, ((x + y) * 2) % 256], axis=2).astype(np.uint8)
    ds.Rows, ds.Columns = 48, 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    return ds


def windowed(ds: Dataset) -> NDArray[np.float64]:
    """The 8-bit display values of a CT image: Modality LUT, then the linear VOI window
    of PS3.3 C.11.2.1.2.1 with the header's center and width."""
    values = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    return np.rint(np.clip(((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0, 0, 255))


def resized(values: NDArray[Any], size: tuple[int, int]) -> NDArray[np.float64]:
    image = Image.fromarray(np.asarray(values, dtype=np.uint8))
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float64)


class Study:
    def __init__(self, directory: Path) -> None:
        self.uid = generate_uid()
        self.ct_series, self.large_series, self.color_series = generate_uid(), generate_uid(), generate_uid()
        self.ct = [ct_image(self.uid, self.ct_series, n) for n in range(1, 6)]
        self.large = ct_image(self.uid, self.large_series, 1, rows=480, columns=512)
        self.color = rgb_image(self.uid, self.color_series)
        directory.mkdir(parents=True)
        for ds in [*self.ct, self.large, self.color]:
            ds.save_as(directory / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        self.directory = directory


# ---------------------------------------------------------------- the printers


class Dcmprscp:
    """DCMTK's reference Print SCP with a dcmpstat configuration file of one printer."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.database = root / "database"
        self.database.mkdir(parents=True)
        (root / "spool").mkdir()
        self.config = root / "dcmprscp.cfg"
        self.config.write_text(
            "[[GENERAL]]\n"
            f"[DATABASE]\nDirectory = {self.database}\n"
            f"[PRINT]\nDirectory = {root / 'spool'}\n"
            "[[COMMUNICATION]]\n"
            "[LASER]\nAetitle = LASERCAM\nDescription = DCMTK print SCP\n"
            f"Hostname = {HOST}\nPort = {self.port}\nType = LOCALPRINTER\n"
            "DisplayFormat = 1,1\\2,1\\2,2\n"
            "FilmSizeID = 8INX10IN\\14INX17IN\n"
            "MediumType = PAPER\\CLEAR FILM\\BLUE FILM\n"
            "FilmDestination = MAGAZINE\\PROCESSOR\n"
            "MagnificationType = REPLICATE\\BILINEAR\\CUBIC\\NONE\n"
            "ImplicitOnly = false\nDisableNewVRs = false\nMaxPDU = 32768\n"
            "Supports12Bit = true\nSupportsPresentationLUT = true\nPresentationLUTMatchRequired = false\n"
        )
        self.log = root / "dcmprscp.log"
        self.proc: subprocess.Popen[bytes] = popen_dcmtk(
            "dcmprscp", "-c", self.config, "-p", "LASER", log=self.log
        )
        wait_for_port(self.port, proc=self.proc)

    def stored(self, prefix: str) -> set[Path]:
        return set(self.database.glob(f"{prefix}_*.dcm"))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class FailingPrinter:
    """A printer (pynetdicom) whose N-GET of the Printer reports Printer Status FAILURE."""

    def __init__(self) -> None:
        self.port = free_port()
        self.ae = AE(ae_title="BROKEN")
        self.ae.add_supported_context(BasicGrayscalePrintManagementMeta)
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.server = self.ae.start_server(
            (HOST, self.port), block=False, evt_handlers=[(evt.EVT_N_GET, self._n_get)]
        )

    def _n_get(self, event: Any) -> tuple[int, Dataset]:
        with self.lock:
            self.requests.append(str(event.request.RequestedSOPClassUID))
        ds = Dataset()
        ds.PrinterStatus = "FAILURE"
        ds.PrinterStatusInfo = "FILM JAM"
        return 0x0000, ds

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def dcmprscp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dcmprscp]:
    printer = Dcmprscp(tmp_path_factory.mktemp("dcmprscp"))
    yield printer
    printer.stop()


@pytest.fixture(scope="module")
def failing() -> Iterator[FailingPrinter]:
    printer = FailingPrinter()
    yield printer
    printer.stop()


def config_of(server: DicomhubServer) -> Path:
    """The server's configuration file (its printers), beside its data directory."""
    return server.data_dir.parent / "dicomhub.toml"


@pytest.fixture(scope="module")
def hub(
    module_servers: ServerPool,
    dcmprscp: Dcmprscp,
    failing: FailingPrinter,
) -> DicomhubServer:
    server = module_servers.create("printscu")
    config = config_of(server)
    config.write_text(
        f'[printers.LASER]\naet = "LASERCAM"\nhost = "{HOST}"\nport = {dcmprscp.port}\ndpi = {DPI}\n\n'
        f'[printers.SELF]\naet = "{server.aet}"\nhost = "{HOST}"\nport = {server.dimse_port}\n'
        f"color = true\ndpi = {DPI}\n\n"
        f'[printers.BROKEN]\naet = "BROKEN"\nhost = "{HOST}"\nport = {failing.port}\n\n'
        f'[printers.DOWN]\naet = "DOWN"\nhost = "{HOST}"\nport = {free_port()}\n'
    )
    server.args = ["--config", str(config), "--print-dpi", str(DPI)]
    return server.start()


@pytest.fixture(scope="module")
def study(hub: DicomhubServer, tmp_path_factory: pytest.TempPathFactory) -> Study:
    made = Study(tmp_path_factory.mktemp("study") / "files")
    store_ok(hub, made.directory, expect=7)
    return made


def post_print(hub: DicomhubServer, body: dict[str, Any], token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{hub.base_url}/print/requests", json=body, headers=headers, timeout=60)


def print_cli(hub: DicomhubServer, *args: str) -> tuple[int, str]:
    return run_cli("print", "--data-dir", str(hub.data_dir), "--config", str(config_of(hub)), *args)


def hardcopy_by_position(sp: Path, hardcopies: set[Path]) -> list[Dataset]:
    """The Hardcopy Grayscale images of a Stored Print object, in Image Box Position order."""
    by_uid = {pydicom.dcmread(path).SOPInstanceUID: path for path in hardcopies}
    stored_print = pydicom.dcmread(sp)
    boxes = sorted(stored_print.ImageBoxContentSequence, key=lambda item: int(item.ImageBoxPosition))
    out = []
    for box in boxes:
        reference = box.ReferencedImageSequence[0]
        assert reference.ReferencedSOPClassUID == HARDCOPY_GRAYSCALE
        out.append(pydicom.dcmread(by_uid[reference.ReferencedSOPInstanceUID]))
    return out


# ---------------------------------------------------------------- dicomhub -> dcmprscp


def test_rest_print_series_to_dcmprscp(hub: DicomhubServer, dcmprscp: Dcmprscp, study: Study) -> None:
    before_sp, before_hg = dcmprscp.stored("SP"), dcmprscp.stored("HG")
    r = post_print(
        hub,
        {
            "printer": "LASER",
            "study": study.uid,
            "series": study.ct_series,
            "layout": "STANDARD\\2,2",
            "film_size": "8INX10IN",
            "copies": 2,
            "medium": "CLEAR FILM",
            "destination": "PROCESSOR",
        },
    )
    assert r.status_code == 200, r.text
    outcome = r.json()
    assert outcome["printer"] == "LASER" and outcome["color"] is False
    assert [film["images"] for film in outcome["films"]] == [4, 1]
    assert all(film["status"] == "0x0000" for film in outcome["films"])
    sent = [uid for film in outcome["films"] for uid in film["instances"]]
    assert sorted(sent) == sorted(ds.SOPInstanceUID for ds in study.ct)

    new_sp = sorted(dcmprscp.stored("SP") - before_sp, key=lambda p: p.stat().st_mtime_ns)
    new_hg = dcmprscp.stored("HG") - before_hg
    assert len(new_sp) == 2 and len(new_hg) == 5, (new_sp, new_hg)
    sources = {ds.SOPInstanceUID: ds for ds in study.ct}
    received = []
    for film, sp in zip(outcome["films"], new_sp, strict=True):
        content = pydicom.dcmread(sp).FilmBoxContentSequence[0]
        assert content.ImageDisplayFormat == "STANDARD\\2,2"
        assert content.FilmSizeID == "8INX10IN" and content.FilmOrientation == "PORTRAIT"
        hardcopies = hardcopy_by_position(sp, new_hg)
        assert len(hardcopies) == film["images"]
        for uid, hardcopy in zip(film["instances"], hardcopies, strict=True):
            source = sources[uid]
            assert hardcopy.PhotometricInterpretation == "MONOCHROME2"
            assert (hardcopy.Rows, hardcopy.Columns) == (source.Rows, source.Columns)
            got = hardcopy.pixel_array.astype(np.float64)
            if int(hardcopy.BitsStored) == 12:  # dcmprscp may keep 12 bits: back to 8
                got = np.rint(got / 4095 * 255)
            difference = np.abs(got - windowed(source))
            assert difference.max() <= 1, f"{uid}: largest difference {difference.max()}"
            received.append(uid)
    assert len(received) == 5


def test_cli_prints_large_image_scaled_to_box(hub: DicomhubServer, dcmprscp: Dcmprscp, study: Study) -> None:
    before_hg = dcmprscp.stored("HG")
    rc, out = print_cli(
        hub, "LASER", study.uid, "--instance", study.large.SOPInstanceUID, "--film-size", "8INX10IN"
    )
    assert rc == 0, out
    assert "film 1: 1 image(s), status 0x0000" in out
    (path,) = dcmprscp.stored("HG") - before_hg
    hardcopy = pydicom.dcmread(path)
    # STANDARD\1,1 on 8INX10IN at 40 dpi: a 320 x 400 box; 512 x 480 fits as 320 x 300.
    assert (hardcopy.Columns, hardcopy.Rows) == (320, 300)
    got = hardcopy.pixel_array.astype(np.float64)
    if int(hardcopy.BitsStored) == 12:
        got = np.rint(got / 4095 * 255)
    want = resized(windowed(study.large), (320, 300))
    assert np.abs(got - want).mean() <= 2


def test_color_print_to_color_printer(hub: DicomhubServer, study: Study) -> None:
    r = post_print(
        hub,
        {
            "printer": "SELF",
            "study": study.uid,
            "series": study.color_series,
            "film_size": "8INX10IN",
            "copies": 3,
            "medium": "BLUE FILM",
            "destination": "MAGAZINE",
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["color"] is True
    session = r.json()["film_session_uid"]
    jobs = httpx.get(f"{hub.base_url}/print/jobs", timeout=10).json()
    (job,) = [job for job in jobs if job["film_session_uid"] == session]
    assert job["source_ae"] == hub.aet and job["color"] is True and len(job["films"]) == 1
    assert job["film_session"]["NumberOfCopies"] == "3"
    assert job["film_session"]["MediumType"] == "BLUE FILM"
    assert job["film_session"]["FilmDestination"] == "MAGAZINE"
    assert job["films"][0]["FilmSizeID"] == "8INX10IN" and job["films"][0]["images"] == 1
    png = httpx.get(f"{hub.base_url}/print/jobs/{job['id']}/films/1.png", timeout=10)
    assert png.status_code == 200
    film = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"), dtype=np.float64)
    assert film.shape == (400, 320, 3)
    # 64 x 48 fitted to the 320 x 400 box: 320 x 240, centred (rows 80 to 320).
    want = resized(study.color.pixel_array, (320, 240))
    assert np.abs(film[80:320, :, :] - want).mean() <= 3


def test_refusals(hub: DicomhubServer, study: Study, failing: FailingPrinter) -> None:
    rc, out = print_cli(hub, "NOSUCH", study.uid)
    assert rc == 1 and "unknown printer 'NOSUCH'" in out, out
    rc, out = print_cli(hub, "LASER", "1.2.3.4.5.6.7")
    assert rc == 1 and "no study 1.2.3.4.5.6.7" in out, out

    r = post_print(hub, {"printer": "NOSUCH", "study": study.uid})
    assert r.status_code == 404 and "unknown printer" in r.json()["error"]
    r = post_print(hub, {"printer": "LASER", "study": "1.2.3.4.5.6.7"})
    assert r.status_code == 404, r.text
    r = post_print(hub, {"printer": "LASER", "study": study.uid, "layout": "SLIDE"})
    assert r.status_code == 400 and "Image Display Format" in r.json()["error"]
    r = post_print(hub, {"printer": "LASER", "study": study.uid, "copies": "two"})
    assert r.status_code == 400 and "copies" in r.json()["error"]
    # dcmprscp claims 1,1 2,1 2,2 only: it refuses the film box, dicomhub says with what status.
    r = post_print(
        hub, {"printer": "LASER", "study": study.uid, "series": study.ct_series, "layout": "STANDARD\\3,3"}
    )
    assert r.status_code == 409 and "N-CREATE Basic Film Box" in r.json()["error"], r.text
    assert "status 0x0106" in r.json()["error"]  # Invalid Attribute Value
    r = post_print(hub, {"printer": "BROKEN", "study": study.uid, "series": study.ct_series})
    assert r.status_code == 409 and "FAILURE (FILM JAM)" in r.json()["error"], r.text
    assert failing.requests == ["1.2.840.10008.5.1.1.16"]  # the N-GET of the Printer, nothing after
    r = post_print(hub, {"printer": "DOWN", "study": study.uid})
    assert r.status_code == 409 and "cannot connect" in r.json()["error"], r.text
    assert_alive(hub)


def test_caller_must_read_the_study(module_servers: ServerPool, study: Study, dcmprscp: Dcmprscp) -> None:
    hub = module_servers.create("printauth")
    config = config_of(hub)
    config.write_text(
        f'[printers.LASER]\naet = "LASERCAM"\nhost = "{HOST}"\nport = {dcmprscp.port}\ndpi = {DPI}\n'
    )
    hub.args = ["--config", str(config), "--auth"]
    # With --auth, associations authenticate too: the study and the token go in through
    # the CLI, before the server starts.
    rc, out = run_cli("import", "--data-dir", str(hub.data_dir), str(study.directory))
    assert rc == 0, out
    rc, out = run_cli("token", "create", "viewer", "--data-dir", str(hub.data_dir))
    assert rc == 0, out
    token = out.strip().splitlines()[-1]
    hub.start()
    body = {"printer": "LASER", "study": study.uid, "instances": [study.ct[0].SOPInstanceUID]}
    assert post_print(hub, body).status_code == 401
    r = post_print(hub, body, token)  # no grant yet: the study does not exist for it
    assert r.status_code == 404, r.text
    rc, out = run_cli(
        "grant", "add", "viewer", "reader", f"study:{study.uid}", "--data-dir", str(hub.data_dir)
    )
    assert rc == 0, out
    r = post_print(hub, body, token)
    assert r.status_code == 200, r.text
    assert r.json()["films"][0]["instances"] == [study.ct[0].SOPInstanceUID]
    hub.stop()


# ---------------------------------------------------------------- dcmprscu -> dicomhub


def test_dcmprscu_prints_to_dicomhub(hub: DicomhubServer, study: Study, tmp_path: Path) -> None:
    database, spool = tmp_path / "database", tmp_path / "spool"
    database.mkdir()
    spool.mkdir()
    config = tmp_path / "dcmpstat.cfg"
    config.write_text(
        "[[GENERAL]]\n"
        f"[DATABASE]\nDirectory = {database}\n"
        f"[PRINT]\nDirectory = {spool}\nSpooler = dcmprscu\n"
        "[NETWORK]\naetitle = PRINTSCU\n"
        "[[COMMUNICATION]]\n"
        f"[HUB]\nAetitle = {hub.aet}\nDescription = dicomhub Print SCP\n"
        f"Hostname = {HOST}\nPort = {hub.dimse_port}\nType = PRINTER\n"
        "DisplayFormat = 1,1\\2,1\\2,2\n"
        "FilmSizeID = 8INX10IN\\14INX17IN\n"
        "MediumType = PAPER\\CLEAR FILM\n"
        "MagnificationType = REPLICATE\\BILINEAR\\CUBIC\\NONE\n"
        "ImplicitOnly = false\nDisableNewVRs = false\nMaxPDU = 32768\n"
        "Supports12Bit = false\nSupportsPresentationLUT = false\n"
    )
    sources = study.ct[:2]
    files = [study.directory / f"{ds.SOPInstanceUID}.dcm" for ds in sources]
    rc, out = run_dcmtk(
        "dcmpsprt", "-c", config, "-p", "HUB", "--layout", "2", "1", "--filmsize", "8INX10IN", *files
    )
    assert rc == 0, out
    (stored_print,) = database.glob("SP_*.dcm")
    assert len(list(database.glob("HG_*.dcm"))) == 2
    before = {job["id"] for job in httpx.get(f"{hub.base_url}/print/jobs", timeout=10).json()}
    rc, out = run_dcmtk("dcmprscu", "-c", config, "-p", "HUB", "-v", stored_print)
    assert rc == 0, out
    (job,) = [
        job for job in httpx.get(f"{hub.base_url}/print/jobs", timeout=10).json() if job["id"] not in before
    ]
    assert job["source_ae"] == "PRINTSCU" and job["state"] == "DONE"
    (film,) = job["films"]
    assert film["ImageDisplayFormat"] == "STANDARD\\2,1" and film["FilmSizeID"] == "8INX10IN"
    assert film["images"] == 2
    png = httpx.get(f"{hub.base_url}/print/jobs/{job['id']}/films/1.png", timeout=10)
    picture = np.asarray(Image.open(io.BytesIO(png.content)).convert("L"), dtype=np.float64)
    assert picture.shape == (400, 320)
    # Each 160 x 400 box holds its 128 x 96 image fitted: 160 x 120, centred (rows 140 to 260).
    for column, source in enumerate(sources):
        region = picture[140:260, column * 160 : (column + 1) * 160]
        want = resized(windowed(source), (160, 120))
        assert np.abs(region - want).mean() <= 3, f"box {column + 1}: {np.abs(region - want).mean()}"
