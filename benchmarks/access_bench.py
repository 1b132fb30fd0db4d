"""What access control and the audit log cost a QIDO-RS and a WADO-RS request.

Starts ``dicomhub serve`` from one or more source trees (``--src NAME=DIR``, e.g. the
main checkout before access control and this branch), loads the same studies over
STOW-RS, then times sequential requests on one keep-alive connection:

* ``qido``: ``GET /dicomweb/studies?PatientID=P7&limit=10``;
* ``metadata``: ``GET /dicomweb/studies/{uid}/metadata`` of one study.

Each tree runs without authentication; with ``--auth`` the trees that support it also
run with ``serve --auth`` and an admin token (unrestricted, authenticated) and a
reader token limited to one label (the filtered SQL). Prints the median and 90th
percentile per case, in milliseconds.

    /work/venv/bin/python benchmarks/access_bench.py \\
        --src before=/work/main/src --src after=src --auth
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import free_port, http_ok, log, stop_process  # noqa: E402
from tests import datagen  # noqa: E402


def _part10(ds: object) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)  # type: ignore[attr-defined]
    return buf.getvalue()


def _stow(base: str, headers: dict[str, str], items: list[bytes]) -> None:
    boundary = "bench-boundary"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + item + b"\r\n"
            for item in items
        )
        + f"--{boundary}--\r\n".encode()
    )
    r = httpx.post(
        f"{base}/dicomweb/studies",
        content=body,
        headers={
            **headers,
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
        timeout=120,
    )
    r.raise_for_status()


def _time(client: httpx.Client, url: str, headers: dict[str, str], count: int) -> list[float]:
    for _ in range(10):  # warm-up
        client.get(url, headers=headers).raise_for_status()
    out = []
    for _ in range(count):
        start = time.perf_counter()
        client.get(url, headers=headers).raise_for_status()
        out.append((time.perf_counter() - start) * 1000)
    return out


def _cli(src: str, data_dir: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": f"{src}:{Path(src).parent}"}
    proc = subprocess.run(
        [sys.executable, "-m", "dicomhub.cli", *args, "--data-dir", str(data_dir)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return proc.stdout.strip().splitlines()[-1]


def run(
    name: str, src: str, auth: bool, studies: int, count: int, work: Path
) -> list[tuple[str, list[float]]]:
    data_dir = work / f"{name}-{'auth' if auth else 'open'}"
    http_port, dimse_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": f"{src}:{Path(src).parent}"}
    cmd = [
        sys.executable, "-m", "dicomhub.cli", "serve", "--data-dir", str(data_dir),
        "--http-port", str(http_port), "--dimse-port", str(dimse_port), "--host", "127.0.0.1",
    ]  # fmt: skip
    if auth:
        cmd.append("--auth")
    log(f"{name}: starting ({'--auth' if auth else 'no auth'})")
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while not http_ok(base + "/healthz"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"{name}: the server did not start")
            time.sleep(0.2)
        admin: dict[str, str] = {}
        reader: dict[str, str] = {}
        if auth:
            token = _cli(src, data_dir, "user", "add", "bench-admin", "--role", "admin", "--scope", "archive")
            admin = {"Authorization": "Bearer " + token}
            token = _cli(
                src, data_dir, "user", "add", "bench-reader", "--role", "reader", "--scope", "label:seven"
            )
            reader = {"Authorization": "Bearer " + token}
        batch: list[bytes] = []
        target = ""
        for n in range(studies):
            ds = datagen.make_dataset(patient_id=f"P{n % 20}", rows=8, cols=8)
            if n == 7:
                target = str(ds.StudyInstanceUID)
            batch.append(_part10(ds))
            if len(batch) == 50:
                _stow(base, admin, batch)
                batch = []
        if batch:
            _stow(base, admin, batch)
        if auth:
            httpx.put(f"{base}/dicomweb/studies/{target}/labels/seven", headers=admin).raise_for_status()
        cases = [("", admin)] + ([(" reader@label", reader)] if auth else [])
        results = []
        with httpx.Client(base_url=base, timeout=30) as client:
            for suffix, headers in cases:
                label = f"{name}{' --auth' if auth else ''}{suffix}"
                results.append(
                    (
                        f"{label}: qido",
                        _time(client, "/dicomweb/studies?PatientID=P7&limit=10", headers, count),
                    )
                )
                results.append(
                    (
                        f"{label}: metadata",
                        _time(client, f"/dicomweb/studies/{target}/metadata", headers, count),
                    )
                )
        return results
    finally:
        stop_process(proc, name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--src", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--auth", action="store_true", help="also run the last --src with serve --auth")
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--count", type=int, default=300, help="timed requests per case")
    args = parser.parse_args()
    rows: list[tuple[str, list[float]]] = []
    with tempfile.TemporaryDirectory(prefix="access-bench-") as work:
        for i, spec in enumerate(args.src):
            name, _, src = spec.partition("=")
            src = str(Path(src).resolve())
            rows += run(name, src, False, args.studies, args.count, Path(work))
            if args.auth and i == len(args.src) - 1:
                rows += run(name, src, True, args.studies, args.count, Path(work))
    print(f"{'case':45} {'median ms':>10} {'p90 ms':>8}")
    for label, times in rows:
        p90 = statistics.quantiles(times, n=10)[-1]
        print(f"{label:45} {statistics.median(times):10.2f} {p90:8.2f}")


if __name__ == "__main__":
    main()
