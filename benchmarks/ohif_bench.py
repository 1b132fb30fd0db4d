"""Time to the first image in the OHIF viewer served by dicomhub, for a 300-slice CT series.

Starts ``dicomhub serve --auth`` on free localhost ports with a fresh data directory,
stores a 300-slice CT series (512 x 512, 16 bits, explicit VR little endian) over
STOW-RS, installs OHIF (``dicomhub ohif install --from-tarball``, the tarball that
scripts/install-test-deps.sh fetched), then opens
``/ohif/viewer?StudyInstanceUIDs=...`` in chromium (Playwright, Debian's chromium) with
an admin token and measures, in the browser's wall clock, from the navigation until the
viewport canvas shows the image (the middle of the canvas is no longer uniform; polled
by screenshots every ~100 ms, so the figure is within about 0.1 s). Twice: in a new
browser context (nothing cached: OHIF's 30 MB of scripts and codecs are fetched) and
again in the same context (OHIF's files from the HTTP cache). Run once per call.

    .venv/bin/python benchmarks/ohif_bench.py [--slices 300] [--runs 1]

Orthanc's OHIF plugin is not packaged for Debian/Ubuntu (``apt-cache search orthanc``
lists no ohif plugin), so there is no Orthanc column.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import HOST, free_port, http_ok, log, stop_process  # noqa: E402
from tests import datagen  # noqa: E402

TARBALL = (
    Path(os.environ.get("DICOMHUB_TEST_OHIF_DIR", str(Path.home() / ".cache" / "dicomhub-test" / "ohif")))
    / "ohif-app-3.13.2.tgz"
)
CHROMIUM = os.environ.get("DICOMHUB_TEST_CHROMIUM", "/usr/bin/chromium")


def _cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dicomhub.cli", *args], capture_output=True, text=True, check=True
    )
    return done.stdout


def _slice(z: int, n: int, size: int = 512) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c = size / 2
    hu = np.full((size, size), -1000.0)
    hu[((yy - c) / (size * 0.42)) ** 2 + ((xx - c) / (size * 0.47)) ** 2 <= 1] = 40.0
    for side in (-1, 1):
        hu[
            ((yy - c) / (size * 0.25)) ** 2 + ((xx - c - side * size * 0.2) / (size * 0.14)) ** 2 <= 1
        ] = -850.0
    hu[(yy - c - size * 0.25) ** 2 + (xx - c - (z - n / 2) * size / n) ** 2 <= (size * 0.07) ** 2] = 900.0
    hu += np.random.default_rng(z).normal(0, 15, size=(size, size))
    return np.clip(np.rint(hu + 1024), 0, 4095).astype(np.uint16)


def _store(url: str, token: str, slices: int) -> str:
    study, series = datagen.uid(), datagen.uid()
    boundary = "ohif-bench"
    for start in range(1, slices + 1, 50):
        body = b""
        for i in range(start, min(start + 50, slices + 1)):
            ds = datagen.make_dataset(
                modality="CT",
                study_uid=study,
                series_uid=series,
                instance_number=i,
                rows=512,
                cols=512,
                extra={"WindowCenter": "40", "WindowWidth": "400"},
            )
            ds.PixelData = _slice(i, slices).tobytes()
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            body += (
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buf.getvalue() + b"\r\n"
            )
        body += f"--{boundary}--\r\n".encode()
        r = httpx.post(
            f"{url}/dicomweb/studies",
            content=body,
            timeout=300,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
        )
        r.raise_for_status()
    return study


def _first_image(page: object, url: str, timeout: float = 120.0) -> float:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    t0 = time.monotonic()
    page.goto(url)
    canvas = page.locator("canvas.cornerstone-canvas").first
    canvas.wait_for(state="visible", timeout=timeout * 1000)
    while time.monotonic() - t0 < timeout:
        grey = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("L"), dtype=np.float64)
        h, w = grey.shape
        if grey[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].std() > 10:
            return time.monotonic() - t0
        time.sleep(0.05)
    page.screenshot(path="ohif-bench-timeout.png")
    raise SystemExit(f"no image in OHIF after {timeout} s (see ohif-bench-timeout.png)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--runs", type=int, default=1, help="cold + warm pairs (default 1)")
    args = parser.parse_args()
    if not TARBALL.is_file():
        raise SystemExit(f"{TARBALL} is missing: run scripts/install-test-deps.sh")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="ohif-bench-") as tmp:
        data = Path(tmp) / "data"
        http_port = free_port()
        url = f"http://{HOST}:{http_port}"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dicomhub.cli",
                "serve",
                "--auth",
                "--data-dir",
                str(data),
                "--http-port",
                str(http_port),
                "--dimse-port",
                str(free_port()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not http_ok(f"{url}/healthz"):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            token = _cli(
                "user", "add", "bench", "--role", "admin", "--scope", "archive", "--data-dir", str(data)
            )
            token = token.strip().splitlines()[-1]
            log(f"storing {args.slices} slices")
            study = _store(url, token, args.slices)
            _cli("ohif", "install", "--from-tarball", str(TARBALL), "--data-dir", str(data))
            cold: list[float] = []
            warm: list[float] = []
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                for _ in range(args.runs):
                    context = browser.new_context(viewport={"width": 1280, "height": 800})
                    page = context.new_page()
                    page.goto(f"{url}/")
                    page.evaluate("t => sessionStorage.setItem('dicomhub.token', t)", token)
                    viewer = f"{url}/ohif/viewer?StudyInstanceUIDs={study}"
                    cold.append(_first_image(page, viewer))
                    page.goto(f"{url}/")
                    warm.append(_first_image(page, viewer))
                    context.close()
                browser.close()
        finally:
            stop_process(proc, "dicomhub")
    print(f"OHIF time to first image, {args.slices}-slice CT (512x512), dicomhub serve --auth, loopback:")
    print(f"  cold (new browser context): median {statistics.median(cold):.2f} s  {cold}")
    print(f"  warm (OHIF files cached):   median {statistics.median(warm):.2f} s  {warm}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
