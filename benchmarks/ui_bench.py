"""The web UI in a browser: time to first image, and the study list at 100,000 studies.

Not a test: run ``python benchmarks/ui_bench.py`` and read the figures (docs in
benchmarks/README.md). Chromium (Debian's, as in the UI tests) drives the real pages
of a ``dicomhub serve`` process on SQLite:

1. **Time to first image**: a 300-slice CT series (512 x 512, 16 bits, synthetic,
   stored over STOW-RS) opened in the series viewer; the time from the start of the
   navigation to the viewer's ``dicomhub:first-image`` performance mark (set right
   after the first frame is drawn on the canvas), in a fresh browser context (cold
   HTTP cache) each run. The study viewer is timed the same way.
2. **Study list at 100,000 studies**: an index of 1,000,000 instances (100,000
   studies; the generator of index_scale_bench.py, rows written directly) behind the
   find page; the time from navigation (or the click) until the status line shows the
   page of results: the first page, a wildcard patient name search and the first page
   sorted by date (newest first), each with its total count. The same three QIDO-RS
   requests are also timed from Python (server time plus loopback).

Run: ``python benchmarks/ui_bench.py [--studies 100000] [--slices 300] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "src"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from playwright.sync_api import Browser, sync_playwright  # noqa: E402

from benchmarks._common import HOST, find_dicomhub, free_port, http_ok, log  # noqa: E402
from benchmarks.index_scale_bench import synthesise_sqlite  # noqa: E402
from dicomhub.bootstrap import open_archive  # noqa: E402
from dicomhub.config import Settings  # noqa: E402
from tests import datagen  # noqa: E402

CHROMIUM = os.environ.get("DICOMHUB_TEST_CHROMIUM", "/usr/bin/chromium")
MARK = "dicomhub:first-image"


class Serve:
    """``dicomhub serve`` on a data folder, loopback only, no access control."""

    def __init__(self, data: Path) -> None:
        self.http_port, dimse = free_port(), free_port()
        cmd = [*find_dicomhub(None), "serve", "--data-dir", str(data), "--host", HOST,
               "--http-port", str(self.http_port), "--dimse-port", str(dimse)]  # fmt: skip
        self.log = open(data.parent / f"{data.name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not http_ok(f"{self.url}/healthz"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dicomhub serve did not start (see {self.log.name})")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def ct_series(slices: int) -> list[bytes]:
    study, series = datagen.uid(), datagen.uid()
    yy, xx = np.mgrid[0:512, 0:512]
    body = ((yy - 256) / 220) ** 2 + ((xx - 256) / 240) ** 2 <= 1
    out = []
    with datagen.no_validation():
        for z in range(1, slices + 1):
            ds = datagen.make_dataset(
                study_uid=study, series_uid=series, instance_number=z, rows=512, cols=512,
                extra={"WindowCenter": "40", "WindowWidth": "400"},
            )  # fmt: skip
            hu = np.where(body, 40 + (xx + z) % 50, -1000) + 1024
            ds.PixelData = hu.astype(np.uint16).tobytes()
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            out.append(buf.getvalue())
    return out


def stow(url: str, payloads: list[bytes], batch: int = 30) -> None:
    boundary = "ui-bench"
    with httpx.Client(timeout=300) as client:
        for start in range(0, len(payloads), batch):
            body = (
                b"".join(
                    f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
                    for p in payloads[start : start + batch]
                )
                + f"--{boundary}--\r\n".encode()
            )
            r = client.post(f"{url}/dicomweb/studies", content=body, headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json"})  # fmt: skip
            r.raise_for_status()


def first_image_ms(browser: Browser, url: str, canvas: str) -> float:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector(f"{canvas}[data-draws]", timeout=120_000)
        return float(page.evaluate(f"performance.getEntriesByName('{MARK}')[0].startTime"))
    finally:
        context.close()


def summary(values: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(values), "min_ms": min(values), "max_ms": max(values)}


def time_to_first_image(browser: Browser, work: Path, slices: int, repeat: int) -> dict[str, Any]:
    data = work / "viewer"
    data.mkdir()
    server = Serve(data)
    try:
        payloads = ct_series(slices)
        t0 = time.monotonic()
        stow(server.url, payloads)
        log(f"viewer: {slices} slices stored in {time.monotonic() - t0:.1f} s")
        studies = httpx.get(
            f"{server.url}/dicomweb/series", params={"includefield": "StudyInstanceUID"}
        ).json()
        study = studies[0]["0020000D"]["Value"][0]
        series = studies[0]["0020000E"]["Value"][0]
        time.sleep(3)  # the background header and check workers settle first
        viewer = [first_image_ms(browser, f"{server.url}/ui/studies/{study}/series/{series}/viewer", "#image")
                  for _ in range(repeat)]  # fmt: skip
        study_viewer = [first_image_ms(browser, f"{server.url}/ui/studies/{study}/viewer", "#grid canvas")
                        for _ in range(repeat)]  # fmt: skip
    finally:
        server.stop()
    out = {"slices": slices, "series_viewer": summary(viewer), "study_viewer": summary(study_viewer)}
    log(f"viewer: first image {out['series_viewer']}, study viewer {out['study_viewer']}")
    return out


def wait_status(page: Any, pattern: str) -> None:
    # Polled from here: the pages' CSP (script-src 'self') forbids wait_for_function's eval.
    deadline = time.monotonic() + 120
    while not re.search(pattern, page.locator("#status").text_content() or ""):
        if time.monotonic() > deadline:
            raise TimeoutError(f"status never matched {pattern!r}")
        time.sleep(0.005)


def study_list(browser: Browser, work: Path, studies: int, repeat: int) -> dict[str, Any]:
    data = work / "list" / "data"
    data.mkdir(parents=True)
    open_archive(Settings(data_dir=data)).close()  # the schema
    t0 = time.monotonic()
    synthesise_sqlite(data / "index.sqlite", studies * 10)
    log(f"list: {studies} studies ({studies * 10} instances) written in {time.monotonic() - t0:.1f} s")
    server = Serve(data)
    pages = {
        "first page": "/",
        "wildcard name (KAL*)": "/?PatientName=KAL*",
        "sorted by date, newest first": "/?orderby=-StudyDate",
    }
    qido = {
        "first page": {},
        "wildcard name (KAL*)": {"PatientName": "KAL*"},
        "sorted by date, newest first": {"orderby": "-StudyDate"},
    }
    out: dict[str, Any] = {"studies": studies, "browser": {}, "qido": {}}
    try:
        for name, path in pages.items():
            times = []
            for i in range(repeat + 1):
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                page = context.new_page()
                t = time.perf_counter()
                page.goto(server.url + path)
                wait_status(page, r"Studies 1–25 of \d+|No study")
                elapsed = (time.perf_counter() - t) * 1000
                status = page.locator("#status").text_content()
                context.close()
                if i:  # the first warms the server's caches
                    times.append(elapsed)
            out["browser"][name] = {**summary(times), "status": status}
            params = {**qido[name], "limit": "25", "count": "true", "includefield": "StudyDescription"}
            calls = []
            for i in range(repeat + 1):
                t = time.perf_counter()
                r = httpx.get(f"{server.url}/dicomweb/studies", params=params, timeout=120)
                r.raise_for_status()
                if i:
                    calls.append((time.perf_counter() - t) * 1000)
            out["qido"][name] = {**summary(calls), "total": r.headers.get("X-Total-Count")}
            log(f"list: {name}: browser {out['browser'][name]}, QIDO-RS {out['qido'][name]}")
    finally:
        server.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=100_000)
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ui-bench-") as tmp, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            results = {
                "time_to_first_image": time_to_first_image(browser, Path(tmp), args.slices, args.repeat),
                "study_list": study_list(browser, Path(tmp), args.studies, args.repeat),
            }
        finally:
            browser.close()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
