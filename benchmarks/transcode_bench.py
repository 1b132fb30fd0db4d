"""Transcode throughput of dicomhub.codec on the benchmark CT series (300 x 512x512 16-bit).

Two directions are timed, one file after another in this process (no server):

* JPEG 2000 lossless -> Explicit VR Little Endian (decode),
* Explicit VR Little Endian -> JPEG-LS lossless (encode).

The CT series comes from ``datasets.py`` (cached in ``benchmarks/.cache``); its JPEG 2000
lossless copy is made once, untimed, with dicomhub.codec itself and cached beside it.
Figures: frames/s, and MB/s of decoded pixel data (512*512*2 bytes a frame, 10^6 bytes a MB).

    /work/venv/bin/python benchmarks/transcode_bench.py --json benchmarks/results/transcode.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import log  # noqa: E402
from datasets import ensure_datasets  # noqa: E402

from dicomhub.codec import transcode_file, transfer_syntax  # noqa: E402

FRAME_BYTES = 512 * 512 * 2


def _j2k_copy(ct_dir: Path, out_dir: Path) -> list[Path]:
    """The J2K lossless copy of the series (made once; a .done marker says it is complete)."""
    files = sorted(ct_dir.glob("*.dcm"))
    if (out_dir / ".done").exists():
        return sorted(out_dir.glob("*.dcm"))
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"making the JPEG 2000 lossless copy of {len(files)} slices (untimed, cached) ...")
    for path in files:
        with open(out_dir / path.name, "wb") as out:
            transcode_file(path, "j2k-lossless", out)
    (out_dir / ".done").write_text("ok\n")
    return sorted(out_dir.glob("*.dcm"))


def _run(files: list[Path], target: str, repeat: int) -> dict[str, Any]:
    uid = transfer_syntax(target).uid
    walls = []
    out_bytes = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        out_bytes = 0
        for path in files:
            buf = io.BytesIO()
            transcode_file(path, uid, buf)
            out_bytes += buf.tell()
        walls.append(time.perf_counter() - t0)
    wall = statistics.median(walls)
    frames = len(files)
    return {
        "frames": frames,
        "wall_s": round(wall, 3),
        "runs_s": [round(w, 3) for w in walls],
        "frames_per_s": round(frames / wall, 1),
        "mb_per_s": round(frames * FRAME_BYTES / 1e6 / wall, 1),
        "input_mb": round(sum(p.stat().st_size for p in files) / 1e6, 1),
        "output_mb": round(out_bytes / 1e6, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ct-count", type=int, default=300)
    ap.add_argument(
        "--small-count",
        type=int,
        default=10000,
        help="only selects the datasets.py cache entry (default shared)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs per direction; the median is reported")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args()

    base, manifest = ensure_datasets(a.ct_count, a.small_count, log=log)
    ct_dir = base / manifest["ct"]["dir"]
    native = sorted(ct_dir.glob("*.dcm"))
    j2k = _j2k_copy(ct_dir, base / "ct-j2k-lossless")

    results = {
        "j2k-lossless -> explicit-le": _run(j2k, "explicit-le", a.repeat),
        "explicit-le -> jpeg-ls-lossless": _run(native, "jpeg-ls-lossless", a.repeat),
    }
    print(
        f"\n{'transcode (' + str(len(native)) + ' x 512x512x16)':36} {'frames/s':>9} {'MB/s':>7} "
        f"{'in MB':>7} {'out MB':>7}"
    )
    for label, r in results.items():
        print(
            f"{label:36} {r['frames_per_s']:9.1f} {r['mb_per_s']:7.1f} "
            f"{r['input_mb']:7.1f} {r['output_mb']:7.1f}"
        )
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "results": results,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "ct_count": len(native),
            "repeat": a.repeat,
        }
        a.json.write_text(json.dumps(payload, indent=1) + "\n")
        log(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
