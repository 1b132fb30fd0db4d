#!/usr/bin/env python3
"""C-GET of a JPEG 2000 lossless CT series: instances/s when the receiver takes the
stored syntax versus when dicomhub must transcode for it.

The 300-slice 512x512 CT series of the other benchmarks is encoded once as JPEG
2000 lossless (cached), stored into a fresh ``dicomhub serve`` with storescu,
then retrieved with DCMTK getscu, alternating:

- ``+xv``: getscu offers JPEG 2000 lossless first; dicomhub sends as stored;
- ``+xi``: getscu accepts implicit VR little endian only; dicomhub decodes every
  frame and re-encodes (the codec layer, frame by frame, into a spool file).

Usage: ``python benchmarks/cget_transcode_bench.py [--ct-count 300] [--repeat 3]``.
Results go to ``benchmarks/results/cget-transcode-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HOST, SCU_AET, DicomhubServer, dcmtk_env, find_dicomhub, free_port, log  # noqa: E402
from datasets import CACHE_ROOT, ensure_datasets  # noqa: E402

J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


def j2k_series(ct_dir: Path, out: Path) -> list[Path]:
    """The CT series encoded as JPEG 2000 lossless, cached beside the original."""
    from dicomhub.codec import transcode_bytes

    done = out / "complete"
    if not done.exists():
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        sources = sorted(ct_dir.glob("*.dcm"))
        log(f"encoding {len(sources)} CT slices as JPEG 2000 lossless ...")
        for src in sources:
            (out / src.name).write_bytes(transcode_bytes(src.read_bytes(), J2K_LOSSLESS))
        done.write_text("ok")
    return sorted(out.glob("*.dcm"))


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, capture_output=True, env=dcmtk_env(), timeout=timeout, check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ct-count", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dicomhub-cmd", help="command that runs dicomhub (default: next to python)")
    args = ap.parse_args()

    base, manifest = ensure_datasets(args.ct_count, 20, log=log)
    files = j2k_series(base / manifest["ct"]["dir"], CACHE_ROOT / f"j2k-{base.name}")
    work = Path(tempfile.mkdtemp(prefix="dicomhub-cget-tx-"))
    server = DicomhubServer(
        key="dicomhub",
        label="dicomhub",
        aet="DICOMHUB",
        managed=True,
        move_port=free_port(),  # no C-MOVE here; the flag wants a valid port
        workdir=work,
        command=find_dicomhub(args.dicomhub_cmd),
    )
    results: dict[str, list[float]] = {"as stored (+xv)": [], "transcoded to implicit LE (+xi)": []}
    try:
        server.start()
        log(f"storing {len(files)} JPEG 2000 lossless slices ...")
        stored = run(
            [
                "storescu",
                "-xv",
                "-aet",
                SCU_AET,
                "-aec",
                server.aet,
                HOST,
                str(server.port),
                *map(str, files),
            ],
            600,
        )
        if stored.returncode != 0:
            raise RuntimeError(
                f"storescu failed: {(stored.stdout + stored.stderr).decode(errors='replace')[-2000:]}"
            )
        ct = manifest["ct"]
        keys = [
            "-S",
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={ct['study_uid']}",
            "-k",
            f"SeriesInstanceUID={ct['series_uid']}",
        ]
        for rep in range(args.repeat):
            for label, flag in (("as stored (+xv)", "+xv"), ("transcoded to implicit LE (+xi)", "+xi")):
                out = work / f"get-{rep}-{flag.strip('+')}"
                out.mkdir()
                t0 = time.perf_counter()
                got = run(
                    [
                        "getscu",
                        flag,
                        "-aet",
                        SCU_AET,
                        "-aec",
                        server.aet,
                        *keys,
                        "-od",
                        str(out),
                        HOST,
                        str(server.port),
                    ],
                    900,
                )
                elapsed = time.perf_counter() - t0
                received = sum(1 for p in out.iterdir() if p.is_file())
                shutil.rmtree(out, ignore_errors=True)
                if got.returncode != 0 or received != len(files):
                    raise RuntimeError(
                        f"getscu {flag}: rc {got.returncode}, {received}/{len(files)} received:\n"
                        + got.stdout.decode(errors="replace")[-2000:]
                    )
                results[label].append(received / elapsed)
                log(f"{label}: {received / elapsed:.1f} inst/s")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary = {label: round(statistics.median(v), 1) for label, v in results.items()}
    print(f"C-GET of {len(files)} JPEG 2000 lossless CT slices (512x512x16), median of {args.repeat}:")
    for label, value in summary.items():
        print(f"  {label:35s} {value:8.1f} inst/s")
    ratio = summary["transcoded to implicit LE (+xi)"] / summary["as stored (+xv)"]
    print(f"  transcoding costs {1 / ratio:.1f}x")
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out_dir / f"cget-transcode-{stamp}.json").write_text(
        json.dumps({"instances": len(files), "inst_per_s": summary, "runs": results}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
