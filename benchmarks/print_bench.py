"""Print SCP throughput: films per second for a 4x5 layout of 512x512 images.

Starts ``dicomhub serve`` on an empty data directory and prints ``--films`` films on
one association with pynetdicom as the print SCU (grayscale meta SOP class): per
film, N-CREATE of a ``STANDARD\\4,5`` film box (14INX17IN), 20 N-SETs of 512x512
8-bit images, and N-ACTION Print (the answer comes once the film is rendered to
PNG, stored and indexed). Reports films/s and the time split:

- DIMSE: N-CREATE and the 20 N-SETs (request to response, 5.2 MB of pixels);
- print: the N-ACTION round trip (render + PNG + PDF page + blobs + index);
- of which render and PNG, and the PDF page: the same film rendered in this
  process with the server's renderer (``dicomhub.services.printrender``) and
  added to a job PDF (``dicomhub.services.printpdf``), at the same resolution.

    .venv/bin/python benchmarks/print_bench.py [--films 10] [--dpi 150] [--json out.json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom import AE  # noqa: E402

from benchmarks._common import (  # noqa: E402
    HOST,
    find_dicomhub,
    running_dicomhub,
    work_dir,
)

META = "1.2.840.10008.5.1.1.9"
FILM_SESSION = "1.2.840.10008.5.1.1.1"
FILM_BOX = "1.2.840.10008.5.1.1.2"
IMAGE_BOX = "1.2.840.10008.5.1.1.4"
LAYOUT = "STANDARD\\4,5"


def image(seed: int) -> Dataset:
    y, x = np.mgrid[0:512, 0:512]
    values = ((x + 2 * y + seed * 13) % 256).astype(np.uint8)
    ds = Dataset()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 512
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = values.tobytes()
    return ds


def modification(item: Dataset, position: int) -> Dataset:
    ds = Dataset()
    ds.ImageBoxPosition = position
    ds.Polarity = "NORMAL"
    ds.BasicGrayscaleImageSequence = Sequence([item])
    return ds


def film_box() -> Dataset:
    ds = Dataset()
    ds.ImageDisplayFormat = LAYOUT
    ds.FilmSizeID = "14INX17IN"
    ds.FilmOrientation = "PORTRAIT"
    return ds


def render_in_process(images: list[Dataset], dpi: int, repeat: int) -> tuple[list[float], list[float]]:
    """Seconds to render and PNG-encode the same film with the server's code, and to
    make it a page of a job's PDF."""
    from dicomhub.model.printing import PrintSession
    from dicomhub.services.printpdf import FilmPdf
    from dicomhub.services.printrender import render_film, to_png

    session = PrintSession(dpi)
    session.create_film_session(None, Dataset())
    box = session.create_film_box(None, film_box(), False)
    for position, (item, image_box) in enumerate(zip(images, box.image_boxes, strict=True), start=1):
        session.set_image_box(IMAGE_BOX, image_box.sop_instance_uid, modification(item, position))
    out, pdf = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        film = render_film(box, False, dpi)
        to_png(film)
        out.append(time.perf_counter() - started)
        started = time.perf_counter()
        document = FilmPdf()
        document.add_film(film, box.film_size_id, box.film_orientation)
        document.finish()
        pdf.append(time.perf_counter() - started)
    return out, pdf


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--films", type=int, default=10)
    parser.add_argument("--dpi", type=int, default=150)
    parser.add_argument("--dicomhub-cmd", help="how to run dicomhub (default: next to this Python)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    command = find_dicomhub(args.dicomhub_cmd)
    images = [image(n) for n in range(20)]
    with (
        work_dir("print-bench-", args.keep) as work,
        running_dicomhub(command, work, work / "data", ["--print-dpi", str(args.dpi)]) as hub,
    ):
        dimse_port = hub.dimse_port
        ae = AE(ae_title="PRINTBENCH")
        ae.dimse_timeout = 120
        ae.add_requested_context(META, [ExplicitVRLittleEndian])
        assoc = ae.associate(HOST, dimse_port, ae_title="DICOMHUB", max_pdu=262144)
        if not assoc.is_established:
            raise SystemExit("association not established")
        # pynetdicom's requestor reactor can steal a response that comes back within
        # microseconds (pynetdicom issue #875); only send_*() may read messages here.
        get_msg = assoc.dimse.get_msg
        assoc.dimse.get_msg = lambda block=False: get_msg(block=True) if block else (None, None)
        dimse: list[float] = []
        printing: list[float] = []
        try:
            session = Dataset()
            session.NumberOfCopies = 1
            status, _ = assoc.send_n_create(session, FILM_SESSION, generate_uid(), meta_uid=META)
            if int(status.Status) != 0:
                raise SystemExit(f"film session refused: 0x{int(status.Status):04X}")
            started_all = time.perf_counter()
            for _film in range(args.films):
                started = time.perf_counter()
                box_uid = generate_uid()
                status, reply = assoc.send_n_create(film_box(), FILM_BOX, box_uid, meta_uid=META)
                if int(status.Status) != 0 or reply is None:
                    raise SystemExit(f"film box refused: 0x{int(status.Status):04X}")
                boxes = [item.ReferencedSOPInstanceUID for item in reply.ReferencedImageBoxSequence]
                for position, (item, uid) in enumerate(zip(images, boxes, strict=True), start=1):
                    status, _ = assoc.send_n_set(modification(item, position), IMAGE_BOX, uid, meta_uid=META)
                    if int(status.Status) not in (0, 0xB604):
                        raise SystemExit(f"image box refused: 0x{int(status.Status):04X}")
                set_done = time.perf_counter()
                status, _ = assoc.send_n_action(None, 1, FILM_BOX, box_uid, meta_uid=META)
                if int(status.Status) != 0:
                    raise SystemExit(f"print refused: 0x{int(status.Status):04X}")
                printed = time.perf_counter()
                status = assoc.send_n_delete(FILM_BOX, box_uid, meta_uid=META)
                dimse.append(set_done - started)
                printing.append(printed - set_done)
            elapsed = time.perf_counter() - started_all
        finally:
            assoc.release()
            ae.shutdown()
        render, pdf = render_in_process(images, args.dpi, min(args.films, 5))
        figures = {
            "films": args.films,
            "layout": LAYOUT,
            "image": "512x512 8-bit",
            "dpi": args.dpi,
            "films_per_second": round(args.films / elapsed, 2),
            "per_film_s": round(elapsed / args.films, 3),
            "dimse_create_and_sets_s_median": round(statistics.median(dimse), 3),
            "print_action_s_median": round(statistics.median(printing), 3),
            "render_and_png_in_process_s_median": round(statistics.median(render), 3),
            "pdf_page_in_process_s_median": round(statistics.median(pdf), 3),
        }
        print(
            f"{args.films} films {LAYOUT} of 512x512 at {args.dpi} dpi: "
            f"{figures['films_per_second']} films/s "
            f"({figures['per_film_s']} s per film); per film, median: N-CREATE + 20 N-SET "
            f"{figures['dimse_create_and_sets_s_median']} s, N-ACTION print "
            f"{figures['print_action_s_median']} s, of which render + PNG (in process) "
            f"{figures['render_and_png_in_process_s_median']} s and the PDF page "
            f"{figures['pdf_page_in_process_s_median']} s"
        )
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
