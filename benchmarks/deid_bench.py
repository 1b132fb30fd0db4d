"""De-identification throughput of dicomhub.deid (instances/s), no server.

Two data sets from ``datasets.py`` (the same cache entry as the DIMSE benchmark):
the 300-slice 512x512 16-bit CT series and the 10,000 small (64x64) instances of set A.
For each, two figures, one process, one file after another:

* engine: ``deidentify`` alone on data sets already read into memory,
* file to file: read the Part 10 file, de-identify, encode the result (to memory), as
  ``dicomhub deid`` does per file.

    /work/venv/bin/python benchmarks/deid_bench.py --json benchmarks/results/deid.json
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
from datasets import CACHE_ROOT, ensure_datasets  # noqa: E402
from pydicom import dcmread  # noqa: E402

from dicomhub.deid import Options, Profile, ProjectKey, deidentify  # noqa: E402

KEY = ProjectKey.derive(b"benchmark-secret-not-for-real-use", "bench")
PROFILES = {
    "basic": Profile(),
    "modified-dates+clean-descriptors": Profile(
        options=Options(retain_long_modified_dates=True, clean_descriptors=True)
    ),
}


def _engine(files: list[Path], profile: Profile, repeat: int) -> float:
    datasets = [dcmread(p) for p in files]
    for ds in datasets:  # parse every element once, untimed, as a reader would have
        for _ in ds:
            pass
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for ds in datasets:
            deidentify(ds, profile, KEY)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def _file_to_file(files: list[Path], profile: Profile, repeat: int) -> float:
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for path in files:
            out = deidentify(dcmread(path), profile, KEY).dataset
            out.save_as(io.BytesIO(), enforce_file_format=True)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ct-count", type=int, default=300)
    ap.add_argument("--small-count", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is reported")
    ap.add_argument("--cache-root", type=Path, default=CACHE_ROOT, help="where datasets.py caches its data")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args()

    base, manifest = ensure_datasets(a.ct_count, a.small_count, root=a.cache_root, log=log)
    sets = {
        f"CT {a.ct_count} x 512x512": sorted((base / manifest["ct"]["dir"]).glob("*.dcm")),
        f"small {a.small_count} x 64x64": sorted((base / "small-A").rglob("*.dcm")),
    }
    results: dict[str, Any] = {}
    print(f"\n{'data set':24} {'profile':34} {'engine inst/s':>14} {'file->file inst/s':>18}")
    for label, files in sets.items():
        for name, profile in PROFILES.items():
            engine = _engine(files, profile, a.repeat)
            whole = _file_to_file(files, profile, a.repeat)
            row = {
                "instances": len(files),
                "engine_s": round(engine, 3),
                "engine_per_s": round(len(files) / engine, 1),
                "file_to_file_s": round(whole, 3),
                "file_to_file_per_s": round(len(files) / whole, 1),
            }
            results[f"{label} / {name}"] = row
            print(f"{label:24} {name:34} {row['engine_per_s']:14.1f} {row['file_to_file_per_s']:18.1f}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "results": results,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "repeat": a.repeat,
        }  # fmt: skip
        a.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
