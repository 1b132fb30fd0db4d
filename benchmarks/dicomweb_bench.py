#!/usr/bin/env python3
"""DICOMweb benchmark: dicomhub against Orthanc + its DICOMweb plugin, in the same run.

Both servers are loaded over DIMSE (storescu, TCP_NODELAY=1) with the 300-slice CT series
and set A of the DIMSE benchmark (10,000 small instances, 2,000 studies), then measured:

  * QIDO-RS median latency: /studies?PatientID=..., /studies?limit=100, /studies?PatientName=A*
  * QIDO-RS requests/s with 4 connections (wrk -c4 -t2 -d5s): PatientID and limit=100
  * series /metadata median latency (the CT series)
  * WADO-RS whole-series retrieval (the CT series), MB/s
  * STOW-RS of 100 instances in one request (instances of set B, new to both), instances/s

and prints each figure, the ratio dicomhub/Orthanc and the issue's target. A figure a
server cannot produce (route missing, error) is reported as n/a. See benchmarks/README.md.

    /work/venv/bin/python benchmarks/dicomweb_bench.py [--json FILE] [--keep]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import http.client
import io
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
from _common import (  # noqa: E402
    DICOMWEB_PLUGIN,
    HOST,
    SCU_AET,
    DicomhubServer,
    OrthancServer,
    Server,
    dcmtk_env,
    find_dicomhub,
    free_port,
    log,
    wait_until_quiet,
)
from datasets import ensure_datasets  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

WRK = "/usr/bin/wrk"
DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class OrthancWeb(OrthancServer):
    """Orthanc with the DICOMweb plugin under ``/dicom-web/``."""

    product = "Orthanc+DICOMweb"

    def config(self, gen: Path) -> dict[str, Any]:
        return {
            **super().config(gen),
            "Name": f"dicomweb-bench-{self.key}",
            "DicomModalities": {SCU_AET: [SCU_AET, HOST, 104]},  # no move destination here
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }


def dicomweb_root(server: Server) -> str:
    http_port = getattr(server, "http_port", 0)
    path = "/dicom-web" if isinstance(server, OrthancServer) else "/dicomweb"
    return f"http://{HOST}:{http_port}{path}"


# --------------------------------------------------------------------------- measurements


@dataclass
class Row:
    name: str
    unit: str
    higher_is_better: bool
    target: float  # ratio dicomhub/Orthanc
    values: dict[str, float | None]
    note: str = ""

    def ratio(self) -> float | None:
        a, b = self.values.get("dicomhub"), self.values.get("orthanc")
        if a is None or b is None or b == 0:
            return None
        return a / b

    def verdict(self) -> str:
        r = self.ratio()
        if r is None:
            return "n/a"
        ok = r >= self.target if self.higher_is_better else r <= self.target
        return "PASS" if ok else "MISS"


def median_ms(fn: Callable[[], None], repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def attempt(label: str, fn: Callable[[], float]) -> float | None:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a missing route is reported as n/a
        log(f"{label}: n/a ({type(exc).__name__}: {str(exc)[:300]})")
        return None


def qido(client: httpx.Client, root: str, query: str) -> Callable[[], None]:
    def run() -> None:
        r = client.get(f"{root}/studies?{query}", headers={"Accept": DICOM_JSON})
        if r.status_code == 204:  # no match (allowed by PS3.18 10.6.3)
            return
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        r.json()

    return run


def qido_count(client: httpx.Client, root: str, query: str) -> int:
    r = client.get(f"{root}/studies?{query}", headers={"Accept": DICOM_JSON})
    r.raise_for_status()
    return 0 if r.status_code == 204 else len(r.json())


def wrk_rps(url: str, seconds: int) -> float:
    out = subprocess.run(
        [WRK, "-c4", "-t2", f"-d{seconds}s", "-H", f"Accept: {DICOM_JSON}", url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    m = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return float(m.group(1))


def wado_series_mbps(client: httpx.Client, url: str, repeat: int) -> float:
    rates = []
    for n in range(repeat + 1):
        t0 = time.perf_counter()
        size = 0
        with client.stream("GET", url, headers={"Accept": MULTIPART_DICOM}) as r:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.read()[:200]!r}")
            for chunk in r.iter_raw(1 << 20):
                size += len(chunk)
        if n:  # the first run only warms the caches
            rates.append(size / 1e6 / (time.perf_counter() - t0))
    return statistics.median(rates)


def renamed_copies(files: list[Path]) -> list[bytes]:
    """The files with new Study/Series/SOP Instance UIDs (new to every server)."""
    renamed: dict[str, str] = {}  # old Study/Series UID -> new, so studies stay whole
    out = []
    for path in files:
        ds = dcmread(path)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
            old = str(ds.get(keyword))
            setattr(ds, keyword, renamed.setdefault(old, generate_uid()))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def plain_write_rate(folder: Path, parts: list[bytes]) -> float:
    """Instances per second of writing ``parts`` as files into ``folder`` and flushing them
    (``syncfs``), with nothing else: the ceiling durable STOW-RS meets on this disk.

    On a virtual disk with a write budget (``dd`` on this machine: 1-1.6 GB/s for a
    burst of several hundred MB, then about 350 MB/s), large objects stored faster
    than the disk allows at that moment wait for it, whatever the server does; this
    tells whether that was the case.
    """
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for n, part in enumerate(parts):
        with open(folder / f"{n}.dcm", "wb") as fh:
            fh.write(part)
    fd = os.open(folder, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)
    rate = len(parts) / (time.perf_counter() - t0)
    shutil.rmtree(folder)
    return rate


def stow_rate(root: str, parts: list[bytes]) -> float:
    """Instances per second of one STOW-RS request holding ``parts``.

    The request goes out through http.client with the body built beforehand, so
    it is one ``sendall`` of the whole body and the client takes as little of the
    two cores as it can. Both servers get the same client. (Changing from httpx to
    this moved both servers' figures by under 10 %: the client was not the limit.)
    """
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for part in parts:
        chunks.append(f"\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        chunks.append(part)
    chunks.append(f"\r\n--{boundary}--\r\n".encode())
    body = b"".join(chunks)
    url = urlsplit(f"{root}/studies")
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=300)
    try:
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        conn.request(
            "POST",
            url.path,
            body=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": DICOM_JSON,
            },
        )
        response = conn.getresponse()
        answer = response.read()
        elapsed = time.perf_counter() - t0
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {answer[:300]!r}")
    stored = len(json.loads(answer).get("00081199", {}).get("Value", []))
    if stored != len(parts):
        raise RuntimeError(f"{stored} of {len(parts)} stored")
    return len(parts) / elapsed


# --------------------------------------------------------------------------- the run


def load(server: Server, dirs: list[Path], logdir: Path) -> None:
    """storescu every file of ``dirs`` into ``server``, one association per directory."""
    t0 = time.monotonic()
    procs = []
    for n, d in enumerate(dirs):
        cmd = [
            "storescu",
            "+sd",
            "+r",
            "-nh",
            "-aet",
            SCU_AET,
            "-aec",
            server.aet,
            HOST,
            str(server.port),
            str(d),
        ]
        fh = open(logdir / f"load-{server.key}-{n}.log", "wb")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=dcmtk_env()), fh))
    for proc, fh in procs:
        rc = proc.wait()
        fh.close()
        if rc != 0:
            raise RuntimeError(f"storescu into {server.label} failed ({rc}); see {logdir}")
    log(f"loaded {server.label} in {time.monotonic() - t0:.1f} s")


PHASES = ("qido", "wrk", "metadata", "wado", "stow")


def measure(
    server: Server,
    cache: Path,
    manifest: dict[str, Any],
    a: argparse.Namespace,
    quiet: Callable[[], float],
) -> dict[str, Any]:
    """Every figure of one server; ``quiet()`` waits until the machine is quiet (before the
    read phases and before each STOW-RS set) and returns how long that took."""
    root = dicomweb_root(server)
    q = manifest["query"]
    ct = manifest["ct"]
    out: dict[str, Any] = {}
    phases = a.phases
    settled = out.setdefault("quiet_after_s", {})

    def wait_quiet(phase: str) -> None:
        settled[phase] = round(quiet(), 1)
        log(f"{server.label}: machine quiet after {settled[phase]} s, measuring {phase}")

    wait_quiet("reads")

    def check(phase: str) -> None:
        status = server.died(f"during {phase}")
        if status is not None:
            out.setdefault("died", f"during {phase}: {status}")

    with httpx.Client(timeout=300) as client:
        queries = {
            "pid": f"PatientID={q['patient_id']}",
            "limit": "limit=100",
            "name": "PatientName=A*",
        }
        for key, query in queries.items() if "qido" in phases else ():
            out[f"qido_{key}_ms"] = attempt(
                f"{server.label} QIDO {query}",
                lambda query=query: median_ms(qido(client, root, query), a.repeat),
            )
            out[f"qido_{key}_count"] = attempt(
                f"{server.label} count {query}", lambda query=query: qido_count(client, root, query)
            )
        check("qido")
        for key in ("pid", "limit") if "wrk" in phases else ():
            url = f"{root}/studies?{queries[key]}"
            out[f"qido_{key}_rps"] = attempt(
                f"{server.label} wrk {url}", lambda url=url: wrk_rps(url, a.wrk_seconds)
            )
            check(f"wrk {queries[key]}")
        series = f"{root}/studies/{ct['study_uid']}/series/{ct['series_uid']}"

        def metadata() -> None:
            r = client.get(series + "/metadata", headers={"Accept": DICOM_JSON})
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
            if len(r.json()) != ct["count"]:
                raise RuntimeError("wrong number of instances in the series metadata")

        if "metadata" in phases:
            out["metadata_ms"] = attempt(
                f"{server.label} metadata", lambda: median_ms(metadata, a.metadata_repeat)
            )
            check("metadata")
        if "wado" in phases:
            out["wado_mbps"] = attempt(
                f"{server.label} WADO-RS", lambda: wado_series_mbps(client, series, a.wado_repeat)
            )
            check("WADO-RS")
        ct_files = sorted((cache / ct["dir"]).rglob("*.dcm"))[:100]
        small_files = sorted((cache / manifest["small"]["B"]["dir"]).rglob("*.dcm"))
        stow_sets = (("stow_ct_ips", ct_files), ("stow_small_ips", small_files[:100]))
        for key, files in stow_sets if "stow" in phases else ():
            wait_quiet(key)
            rates = []
            for _ in range(a.stow_repeat):
                batch = renamed_copies(files)
                rate = attempt(f"{server.label} STOW-RS", lambda batch=batch: stow_rate(root, batch))
                if rate is not None:
                    rates.append(rate)
                elif server.died("during STOW-RS") is not None:
                    break
            out[key] = statistics.median(rates) if rates else None
            out[key.replace("_ips", "_all")] = rates
            check("STOW-RS")
            if key == "stow_ct_ips" and server.workdir is not None:
                # The disk's state at this moment: the same bytes as plain files, at once.
                plain = [
                    plain_write_rate(server.workdir / "plain-writes", renamed_copies(files)) for _ in range(3)
                ]
                out["plain_write_after_ct_all"] = plain
                shown = [round(r) for r in plain]
                log(f"{server.label}: plain file writes right after its CT requests: {shown}/s")
    return out


def rows(results: dict[str, dict[str, Any]]) -> list[Row]:
    def vals(key: str) -> dict[str, float | None]:
        return {name: r.get(key) for name, r in results.items() if name != "machine"}

    return [
        Row("QIDO /studies?PatientID=", "ms", False, 0.5, vals("qido_pid_ms")),
        Row("QIDO /studies?limit=100", "ms", False, 0.5, vals("qido_limit_ms")),
        Row("QIDO /studies?PatientName=A*", "ms", False, 0.5, vals("qido_name_ms")),
        Row("QIDO PatientID, 4 connections", "req/s", True, 2.0, vals("qido_pid_rps")),
        Row("QIDO limit=100, 4 connections", "req/s", True, 2.0, vals("qido_limit_rps")),
        Row("series /metadata (CT series)", "ms", False, 0.25, vals("metadata_ms")),
        Row("WADO-RS series (CT)", "MB/s", True, 1.0, vals("wado_mbps")),
        Row("STOW-RS 100 CT slices / request", "inst/s", True, 3.0, vals("stow_ct_ips")),
        Row("STOW-RS 100 small / request", "inst/s", True, 3.0, vals("stow_small_ips")),
    ]


def fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def report(table: list[Row], results: dict[str, dict[str, Any]]) -> None:
    print()
    print(f"{'figure':34} {'unit':7} {'dicomhub':>10} {'Orthanc':>10} {'ratio':>7} {'target':>8}  verdict")
    for row in table:
        r = row.ratio()
        target = ("≥ " if row.higher_is_better else "≤ ") + f"{row.target:g}"
        print(
            f"{row.name:34} {row.unit:7} {fmt(row.values.get('dicomhub')):>10} "
            f"{fmt(row.values.get('orthanc')):>10} {fmt(r):>7} {target:>8}  {row.verdict()}"
        )
    after = {
        name: statistics.median(res["plain_write_after_ct_all"])
        for name, res in results.items()
        if res.get("plain_write_after_ct_all")
    }
    if after:
        print(
            f"{'plain file writes of the 100 CT':34} {'inst/s':7} "
            f"{fmt(after.get('dicomhub')):>10} {fmt(after.get('orthanc')):>10}"
            "   (the disk right after each server's CT requests: what durable CT stores could reach)"
        )
    ceiling = results.get("machine", {}).get("plain_write_ct_ips")
    if ceiling:
        print(
            f"{'plain file writes, after both':34} {'inst/s':7} {fmt(ceiling):>10}"
            "   (the disk after a pause)"
        )
    for name, res in results.items():
        if name == "machine":
            continue
        counts = {k: res.get(f"qido_{k}_count") for k in ("pid", "limit", "name")}
        print(f"{name}: QIDO match counts {counts}; machine quiet after (s) {res.get('quiet_after_s')}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct-count", type=int, default=300)
    ap.add_argument("--small-count", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--repeat", type=int, default=20, help="timed QIDO requests per query (default 20)")
    ap.add_argument("--metadata-repeat", type=int, default=10)
    ap.add_argument("--wado-repeat", type=int, default=3)
    ap.add_argument("--stow-repeat", type=int, default=3, help="STOW-RS requests of 100 (median)")
    ap.add_argument("--wrk-seconds", type=int, default=5)
    ap.add_argument("--no-orthanc", action="store_true")
    ap.add_argument("--no-dicomhub", action="store_true")
    ap.add_argument("--dicomhub-cmd", help="command that runs the dicomhub CLI")
    ap.add_argument("--dicomhub-arg", action="append", help="extra argument to dicomhub serve")
    ap.add_argument("--json", metavar="FILE", help="write all figures to FILE")
    ap.add_argument("--workdir", help="parent directory for the temporary work dir")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, storage)")
    ap.add_argument(
        "--only",
        metavar="PHASES",
        help=f"comma-separated phases to measure, of {','.join(PHASES)} (default: all); "
        "with only stow the servers are not loaded",
    )
    a = ap.parse_args(argv)
    a.phases = set(PHASES) if not a.only else {p.strip() for p in a.only.split(",") if p.strip()}
    unknown = a.phases - set(PHASES)
    if unknown:
        ap.error(f"unknown phase(s) {', '.join(sorted(unknown))}; choose from {', '.join(PHASES)}")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    cache, manifest = ensure_datasets(a.ct_count, a.small_count, a.seed, log=log)
    workdir = Path(tempfile.mkdtemp(prefix="dicomweb-bench-", dir=a.workdir))
    logdir = workdir / "logs"
    logdir.mkdir()
    servers: list[Server] = []
    if not a.no_dicomhub:
        servers.append(
            DicomhubServer(
                key="dicomhub",
                label="dicomhub",
                aet="DICOMHUB",
                managed=True,
                command=find_dicomhub(a.dicomhub_cmd),
                extra_args=list(a.dicomhub_arg or []),
                move_port=free_port(),
            )
        )
    if not a.no_orthanc:
        servers.append(OrthancWeb(key="orthanc", label="Orthanc", aet="ORTHANC", managed=True))
    results: dict[str, dict[str, Any]] = {}
    try:
        small = cache / manifest["small"]["A"]["dir"]
        for s in servers:
            s.workdir = workdir
            s.start()
        if a.phases - {"stow"}:  # STOW-RS needs nothing stored beforehand
            for s in servers:
                load(
                    s,
                    [cache / manifest["ct"]["dir"], *sorted(p for p in small.iterdir() if p.is_dir())],
                    logdir,
                )
                for other in servers:
                    other.died(f"while loading {s.label}")
        for s in servers:
            for other in servers:
                other.died(f"before measuring {s.label}")
            log(f"measuring {s.label}")
            results[s.key] = measure(s, cache, manifest, a, lambda: wait_until_quiet(servers))
            for other in servers:
                other.died(f"while measuring {s.label}")
        if "stow" in a.phases:
            # The same bytes as the CT requests, as plain files: what the disk allows.
            wait_until_quiet(servers)
            ct_files = sorted((cache / manifest["ct"]["dir"]).rglob("*.dcm"))[:100]
            rates = [
                plain_write_rate(workdir / "plain-writes", renamed_copies(ct_files))
                for _ in range(a.stow_repeat)
            ]
            results["machine"] = {
                "plain_write_ct_ips": statistics.median(rates),
                "plain_write_ct_all": rates,
            }
            log(f"plain file writes of the 100 CT slices: {[round(r) for r in rates]} instances/s")
    finally:
        for s in servers:
            s.stop()
            if s.exit_status is not None:
                results.setdefault(s.key, {})["died"] = s.exit_status
        if a.keep:
            log(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    table = rows(results)
    report(table, results)
    dead = [f"{s.label}: {s.exit_status}" for s in servers if s.exit_status is not None]
    if dead:
        print("SERVER DIED DURING THE RUN: " + "; ".join(dead))
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "results": results,
                    "rows": [
                        {
                            "name": r.name,
                            "unit": r.unit,
                            "values": r.values,
                            "ratio": r.ratio(),
                            "target": r.target,
                            "verdict": r.verdict(),
                        }
                        for r in table
                    ],
                },
                indent=1,
            )
        )
    return 1 if dead else 0


if __name__ == "__main__":
    sys.exit(main())
