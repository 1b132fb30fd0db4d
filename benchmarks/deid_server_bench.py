"""Server-side de-identification throughput (instances/s): stored studies into new studies.

What a de-identification run costs in the archive, per instance: read the stored blob,
de-identify (dicomhub.deid), encode, store through the ingest path (blob write, fsync,
index transaction) and record the item and its mapping rows. Measured in-process on a
fresh data dir (SQLite, file blobs), the way the server's background process runs them
(``run_now`` is the same loop), on the data sets of ``datasets.py``:

* the 300-slice 512x512 16-bit CT series (one run),
* the 10,000 small (64x64) instances of set A (one run per study: 2,000 runs of 5).

    /work/venv/bin/python benchmarks/deid_server_bench.py --json benchmarks/results/deid-server.json
    /work/venv/bin/python benchmarks/deid_server_bench.py --small-studies 200   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import log  # noqa: E402
from datasets import CACHE_ROOT, ensure_datasets  # noqa: E402
from pydicom import dcmread  # noqa: E402

from dicomhub.bootstrap import open_archive  # noqa: E402
from dicomhub.config import load_settings  # noqa: E402
from dicomhub.model.caller import Caller  # noqa: E402
from dicomhub.services.archive import Archive  # noqa: E402


def _import(archive: Archive, files: list[Path]) -> dict[str, int]:
    """Store ``files``; instances per study."""
    studies: dict[str, int] = {}
    for path in files:
        result = archive.ingest.store_part10_file(path, Caller.cli())
        studies[result.study_instance_uid] = studies.get(result.study_instance_uid, 0) + 1
    return studies


def _run_all(archive: Archive, studies: list[str], options: list[str]) -> tuple[float, int]:
    """Wall time of de-identifying ``studies`` one run after another; instances stored."""
    stored = 0
    t0 = time.perf_counter()
    for uid in studies:
        run = archive.deid.start_run(
            "bench", "benchmark", Caller.cli(), study_uid=uid, options=options, owner="bench"
        )
        done = archive.deid.run_now(int(run["id"]), "bench")
        if done["status"] != "done":
            raise SystemExit(f"run {done['id']} ended {done['status']}: {done.get('error')}")
        stored += int(done["stored"])
    return time.perf_counter() - t0, stored


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ct-count", type=int, default=300)
    ap.add_argument("--small-count", type=int, default=10000)
    ap.add_argument(
        "--small-studies", type=int, default=0, help="de-identify only this many studies of set A"
    )
    ap.add_argument("--option", action="append", default=[], help="profile option (repeatable)")
    ap.add_argument("--cache-root", type=Path, default=CACHE_ROOT, help="where datasets.py caches its data")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args()

    base, manifest = ensure_datasets(a.ct_count, a.small_count, root=a.cache_root, log=log)
    os.environ.setdefault("DICOMHUB_DEID_SECRET", "benchmark-secret-not-for-real-use")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="deid-server-bench-") as tmp:
        archive = open_archive(load_settings({"data_dir": tmp}, environ={}))
        try:
            sets = {
                f"CT {a.ct_count} x 512x512": sorted((base / manifest["ct"]["dir"]).glob("*.dcm")),
                f"small {a.small_count} x 64x64": sorted((base / "small-A").rglob("*.dcm")),
            }
            for label, files in sets.items():
                if a.small_studies and label.startswith("small"):
                    keep = {str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files}
                    chosen = set(sorted(keep)[: a.small_studies])
                    files = [
                        p
                        for p in files
                        if str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) in chosen
                    ]
                log(f"{label}: importing {len(files)} files ...")
                studies = _import(archive, files)
                log(f"{label}: de-identifying {len(studies)} studies ...")
                wall, stored = _run_all(archive, sorted(studies), a.option)
                row = {
                    "instances": stored,
                    "runs": len(studies),
                    "seconds": round(wall, 2),
                    "instances_per_s": round(stored / wall, 1),
                }
                results[label] = row
                rate = row["instances_per_s"]
                print(f"{label:28} {len(studies):6d} runs {stored:7d} instances {rate:9.1f} inst/s")
        finally:
            archive.close()
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "results": results,
            "options": a.option,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
        }  # fmt: skip
        a.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
