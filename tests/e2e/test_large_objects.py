"""LARGE OBJECT test (issue 4): a ~500 MB multi-frame object through DIMSE and WADO-RS.

Identify it by this module (``tests/e2e/test_large_objects.py``) or by the
``large_object`` name of its test. It runs in the default test run and takes
well under 90 s (about 1.6 GB of temporary disk: the original, the stored copy
and the retrieved copy).

The object is written to disk in chunks (never held by the test process), sent
with storescu to ``dicomhub serve --workers 1`` and fetched back with getscu and
WADO-RS. The peak resident set size (VmHWM) of the one DIMSE worker and of the
HTTP process must stay well below the object's size: the data set is spooled
to disk while it arrives and sent from the file.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pydicom
import pytest

from . import codec_data as cd
from .helpers import (
    HOST,
    DicomhubServer,
    RetrieveResult,
    ServerPool,
    descendant_pids,
    listening_pids,
    peak_rss_kib,
    run_cli_split,
    run_dcmtk,
    store_ok,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc"),
]

FRAMES, ROWS, COLS = 500, 512, 1024  # 524 MB of pixel data
RSS_FRACTION = 0.40


def _dimse_worker(srv: DicomhubServer) -> int:
    """The one DIMSE worker: the child of ``dicomhub serve`` that holds the DIMSE
    listening socket."""
    assert srv.proc is not None
    kids = descendant_pids(srv.proc.pid)
    holders = listening_pids(srv.dimse_port, kids)
    assert len(holders) == 1, (
        f"expected one DIMSE worker among the children {kids} of {srv.proc.pid}, "
        f"found listeners {holders} on port {srv.dimse_port}"
    )
    return holders[0]


def _http_process(srv: DicomhubServer) -> int:
    """The process serving HTTP: the ``dicomhub serve`` main process (or the one
    of its children listening on the HTTP port, should that ever change)."""
    assert srv.proc is not None
    candidates = [srv.proc.pid, *descendant_pids(srv.proc.pid)]
    holders = listening_pids(srv.http_port, candidates)
    return holders[0] if holders else srv.proc.pid


def _serve_args() -> list[str]:
    args = ["--workers", "1"]
    rc, out, _ = run_cli_split("serve", "--help")
    if "--decode-check" in out:
        # the decode check of the first object of a new syntax would load the
        # whole object in its own process; not what this test measures
        args += ["--decode-check", "off"]
    return args


class _PixelHasher:
    """Hash the Pixel Data value of a Part 10 stream as it goes by."""

    MARKER = b"\xe0\x7f\x10\x00OW\x00\x00"

    def __init__(self, length: int) -> None:
        self.length = length
        self.head = b""
        self.found = False
        self.remaining = length
        self.sha = hashlib.sha256()

    def feed(self, chunk: bytes) -> None:
        if not self.found:
            self.head += chunk
            idx = self.head.find(self.MARKER)
            if idx < 0 or len(self.head) < idx + 12:
                assert len(self.head) < 1 << 20, "no Pixel Data element in the first MiB"
                return
            declared = int.from_bytes(self.head[idx + 8 : idx + 12], "little")
            assert declared == self.length, f"Pixel Data length {declared}, expected {self.length}"
            self.found = True
            chunk, self.head = self.head[idx + 12 :], b""
        take = chunk[: self.remaining]
        self.sha.update(take)
        self.remaining -= len(take)


def test_large_object_store_get_wado(servers: ServerPool, tmp_path: Path) -> None:
    t0 = time.monotonic()
    big = cd.write_large_multiframe(tmp_path / "orig" / "big.dcm", FRAMES, ROWS, COLS)
    size = big.file_size
    bound_kib = int(size * RSS_FRACTION / 1024)
    t_gen = time.monotonic() - t0

    srv = servers.start("large", args=_serve_args())
    worker = _dimse_worker(srv)
    assert srv.proc is not None
    http_pid = _http_process(srv)
    rss_start = peak_rss_kib(worker)

    t1 = time.monotonic()
    store_ok(srv, big.path, expect=1, timeout=120)
    t_store = time.monotonic() - t1
    rss_after_store = peak_rss_kib(worker)
    assert _dimse_worker(srv) == worker, "the DIMSE worker was replaced during the store"

    t2 = time.monotonic()
    out = tmp_path / "got"
    out.mkdir()
    rc, output = run_dcmtk(
        "getscu", "-S", "-v", "+B", "-od", out, "-aet", "BIGGET", "-aec", srv.aet,
        "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={big.dataset.StudyInstanceUID}",
        "-k", f"SeriesInstanceUID={big.dataset.SeriesInstanceUID}",
        "-k", f"SOPInstanceUID={big.dataset.SOPInstanceUID}",
        HOST, str(srv.dimse_port), timeout=120,
    )  # fmt: skip
    t_get = time.monotonic() - t2
    res = RetrieveResult(rc, output)
    assert rc == 0, output[-3000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 1, f"getscu wrote {files}\n{output[-3000:]}"
    rss_after_get = peak_rss_kib(worker)
    assert res.final_counts()["failed"] in (0, None), output[-3000:]

    # the received object: same pixel data, by SHA-256, read in chunks
    hasher = _PixelHasher(big.pixel_bytes)
    with open(files[0], "rb") as fh:
        while chunk := fh.read(8 << 20):
            hasher.feed(chunk)
    assert hasher.found and hasher.remaining == 0
    assert hasher.sha.hexdigest() == big.pixel_sha256, "retrieved Pixel Data differs from the original"
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert header.SOPInstanceUID == big.dataset.SOPInstanceUID
    assert int(header.NumberOfFrames) == FRAMES
    files[0].unlink()  # free the disk before the WADO-RS download

    # WADO-RS, streamed; the stored syntax is explicit VR LE, so no transcoding
    http_before = peak_rss_kib(http_pid)
    t3 = time.monotonic()
    wado = _PixelHasher(big.pixel_bytes)
    received = 0
    url = (
        f"{srv.base_url}/dicomweb/studies/{big.dataset.StudyInstanceUID}/series/"
        f"{big.dataset.SeriesInstanceUID}/instances/{big.dataset.SOPInstanceUID}"
    )
    headers = {"Accept": 'multipart/related; type="application/dicom"', "Accept-Encoding": "identity"}
    with httpx.stream("GET", url, headers=headers, timeout=120) as r:
        assert r.status_code == 200, r.read()[:500]
        for chunk in r.iter_raw(1 << 20):
            received += len(chunk)
            wado.feed(chunk)
        announced = r.headers.get("content-length")
    t_wado = time.monotonic() - t3
    http_after = peak_rss_kib(http_pid)

    print(
        f"\nlarge object: {size / 2**20:.0f} MiB file ({big.pixel_bytes / 2**20:.0f} MiB pixel data), "
        f"bound {RSS_FRACTION:.0%} = {bound_kib / 1024:.0f} MiB\n"
        f"  DIMSE worker pid {worker} VmHWM: start {rss_start / 1024:.0f} MiB, after C-STORE "
        f"{rss_after_store / 1024:.0f} MiB, after C-GET {rss_after_get / 1024:.0f} MiB\n"
        f"  HTTP process pid {http_pid} VmHWM: before WADO-RS {http_before / 1024:.0f} MiB, "
        f"after {http_after / 1024:.0f} MiB\n"
        f"  times: generate {t_gen:.1f}s, storescu {t_store:.1f}s, getscu {t_get:.1f}s, WADO-RS {t_wado:.1f}s"
    )

    assert rss_after_store < bound_kib, (
        f"worker peak RSS {rss_after_store} KiB after C-STORE (bound {bound_kib})"
    )
    assert rss_after_get < bound_kib, f"worker peak RSS {rss_after_get} KiB after C-GET (bound {bound_kib})"
    assert wado.found and wado.remaining == 0, f"WADO-RS body ended early ({received} bytes)"
    assert wado.sha.hexdigest() == big.pixel_sha256, "WADO-RS Pixel Data differs from the original"
    assert big.pixel_bytes < received < size + 64 * 1024, (
        f"WADO-RS sent {received} bytes for a {size}-byte object"
    )
    if announced is not None:
        assert int(announced) == received
    assert http_after < bound_kib, f"HTTP process peak RSS {http_after} KiB after WADO-RS (bound {bound_kib})"
    assert srv.is_running()
