"""LARGE OBJECT test (issue 4): a 500 MB multi-frame object through DIMSE and WADO-RS
(160 MiB on the PostgreSQL + S3 run, see FRAMES).

Identify it by this module (``tests/e2e/test_large_objects.py``) or by the
``large_object`` name of its test. It runs in the default test run, on both
back ends (about 1.6 GB of temporary disk on file storage: the original, the
stored copy and the retrieved copy).

The object is written to disk in chunks (never held by the test process), sent
with storescu to ``dicomhub serve --workers 1`` and fetched back with getscu and
WADO-RS. What it proves is that the data set is spooled to disk while it
arrives and sent from the stored blob, never held whole: the peak resident set
size (VmHWM) of the one DIMSE worker and of the HTTP process may grow by less
than 40 % of the object's size while they handle it.

The growth is counted from the peaks after a warm-up: a small object of the
same kind taken through the same three paths first, so that the imports, the
connection pools and the fixed-size buffers (an S3 multipart part, a ranged
read block) are in the baseline, and what is left is what depends on the
object's size. Holding the object (or 40 % of it) would show up as growth of
that much, whatever its size; so the object only has to be clearly larger than
those fixed costs, not 500 MB. (It was 500 MB with the bound on the absolute
peak; on the PostgreSQL + S3 run the local S3 server, moto, reads a whole
object from its spool file for every ranged GET, so the reads cost the square
of the size: 100 s there, most of it moto's.)
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.backends import BACKEND, SQLITE_FILE

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

# On file storage: the 500 MB object the issue names (524 MB of pixel data), whose peak
# RSS must also stay well under its size. On S3 a 160 MiB object: the local S3 server
# (moto) reads a whole object for every ranged GET, so there the reads cost the square
# of the size; the growth bound proves the same streaming at that size.
FRAMES = 500 if BACKEND == SQLITE_FILE else 160
ROWS, COLS = 512, 1024
# The warm-up object: over one S3 multipart part (5 MiB) and long enough for the
# ranged reads to reach their largest block (8 MiB), so every buffer is sized.
WARMUP_FRAMES = 24
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


def _cget_and_check(srv: DicomhubServer, obj: cd.LargeObject, out: Path) -> None:
    """C-GET ``obj`` with getscu (bit preserving) and compare its Pixel Data by SHA-256,
    read in chunks; the received file is deleted afterwards to free the disk."""
    out.mkdir()
    rc, output = run_dcmtk(
        "getscu", "-S", "-v", "+B", "-od", out, "-aet", "BIGGET", "-aec", srv.aet,
        "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={obj.dataset.StudyInstanceUID}",
        "-k", f"SeriesInstanceUID={obj.dataset.SeriesInstanceUID}",
        "-k", f"SOPInstanceUID={obj.dataset.SOPInstanceUID}",
        HOST, str(srv.dimse_port), timeout=120,
    )  # fmt: skip
    res = RetrieveResult(rc, output)
    assert rc == 0, output[-3000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 1, f"getscu wrote {files}\n{output[-3000:]}"
    assert res.final_counts()["failed"] in (0, None), output[-3000:]
    hasher = _PixelHasher(obj.pixel_bytes)
    with open(files[0], "rb") as fh:
        while chunk := fh.read(8 << 20):
            hasher.feed(chunk)
    assert hasher.found and hasher.remaining == 0
    assert hasher.sha.hexdigest() == obj.pixel_sha256, "retrieved Pixel Data differs from the original"
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert header.SOPInstanceUID == obj.dataset.SOPInstanceUID
    assert int(header.NumberOfFrames) == obj.frames
    files[0].unlink()


def _wado_and_check(srv: DicomhubServer, obj: cd.LargeObject) -> None:
    """WADO-RS ``obj``, streamed and hashed as it arrives; the stored syntax is
    explicit VR LE, so no transcoding."""
    wado = _PixelHasher(obj.pixel_bytes)
    received = 0
    url = (
        f"{srv.base_url}/dicomweb/studies/{obj.dataset.StudyInstanceUID}/series/"
        f"{obj.dataset.SeriesInstanceUID}/instances/{obj.dataset.SOPInstanceUID}"
    )
    headers = {"Accept": 'multipart/related; type="application/dicom"', "Accept-Encoding": "identity"}
    with httpx.stream("GET", url, headers=headers, timeout=120) as r:
        assert r.status_code == 200, r.read()[:500]
        for chunk in r.iter_raw(1 << 20):
            received += len(chunk)
            wado.feed(chunk)
        announced = r.headers.get("content-length")
    assert wado.found and wado.remaining == 0, f"WADO-RS body ended early ({received} bytes)"
    assert wado.sha.hexdigest() == obj.pixel_sha256, "WADO-RS Pixel Data differs from the original"
    assert obj.pixel_bytes < received < obj.file_size + 64 * 1024, (
        f"WADO-RS sent {received} bytes for a {obj.file_size}-byte object"
    )
    if announced is not None:
        assert int(announced) == received


def test_large_object_store_get_wado(servers: ServerPool, tmp_path: Path) -> None:
    t0 = time.monotonic()
    warm = cd.write_large_multiframe(tmp_path / "orig" / "warm.dcm", WARMUP_FRAMES, ROWS, COLS)
    big = cd.write_large_multiframe(tmp_path / "orig" / "big.dcm", FRAMES, ROWS, COLS)
    size = big.file_size
    bound_kib = int(size * RSS_FRACTION / 1024)
    t_gen = time.monotonic() - t0

    srv = servers.start("large", args=_serve_args())
    worker = _dimse_worker(srv)
    assert srv.proc is not None
    http_pid = _http_process(srv)
    rss_start, http_start = peak_rss_kib(worker), peak_rss_kib(http_pid)

    # the warm-up: the small object through the same three paths
    t1 = time.monotonic()
    store_ok(srv, warm.path, expect=1, timeout=120)
    _cget_and_check(srv, warm, tmp_path / "got-warm")
    _wado_and_check(srv, warm)
    worker_base, http_base = peak_rss_kib(worker), peak_rss_kib(http_pid)
    t_warm = time.monotonic() - t1

    t2 = time.monotonic()
    store_ok(srv, big.path, expect=1, timeout=120)
    t_store = time.monotonic() - t2
    rss_after_store = peak_rss_kib(worker)
    assert _dimse_worker(srv) == worker, "the DIMSE worker was replaced during the store"

    t3 = time.monotonic()
    _cget_and_check(srv, big, tmp_path / "got")
    t_get = time.monotonic() - t3
    rss_after_get = peak_rss_kib(worker)

    t4 = time.monotonic()
    _wado_and_check(srv, big)
    t_wado = time.monotonic() - t4
    http_after = peak_rss_kib(http_pid)

    print(
        f"\nlarge object: {size / 2**20:.0f} MiB file ({big.pixel_bytes / 2**20:.0f} MiB pixel data), "
        f"growth bound {RSS_FRACTION:.0%} = {bound_kib / 1024:.0f} MiB; "
        f"warm-up object {warm.file_size / 2**20:.0f} MiB\n"
        f"  DIMSE worker pid {worker} VmHWM: start {rss_start / 1024:.0f} MiB, after the warm-up "
        f"{worker_base / 1024:.0f} MiB, after C-STORE {rss_after_store / 1024:.0f} MiB, "
        f"after C-GET {rss_after_get / 1024:.0f} MiB\n"
        f"  HTTP process pid {http_pid} VmHWM: start {http_start / 1024:.0f} MiB, after the warm-up "
        f"{http_base / 1024:.0f} MiB, after WADO-RS {http_after / 1024:.0f} MiB\n"
        f"  times: generate {t_gen:.1f}s, warm-up {t_warm:.1f}s, storescu {t_store:.1f}s, "
        f"getscu {t_get:.1f}s, WADO-RS {t_wado:.1f}s"
    )

    assert rss_after_store - worker_base < bound_kib, (
        f"worker peak RSS grew by {rss_after_store - worker_base} KiB in the C-STORE (bound {bound_kib})"
    )
    assert rss_after_get - worker_base < bound_kib, (
        f"worker peak RSS grew by {rss_after_get - worker_base} KiB by the C-GET (bound {bound_kib})"
    )
    assert http_after - http_base < bound_kib, (
        f"HTTP process peak RSS grew by {http_after - http_base} KiB in the WADO-RS (bound {bound_kib})"
    )
    if FRAMES >= 500:  # and the peaks themselves stay well under the 500 MB object's size
        assert max(rss_after_store, rss_after_get) < bound_kib, f"worker peak RSS above {bound_kib} KiB"
        assert http_after < bound_kib, f"HTTP process peak RSS above {bound_kib} KiB"
    assert srv.is_running()
