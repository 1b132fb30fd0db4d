#!/usr/bin/env python3
"""Requestor benchmark: dicomhub pushing over C-STORE vs dicomhub serving C-GET, same run.

* ``cget``: DCMTK ``getscu`` of the CT series (SERIES level) from a ``dicomhub serve``
  holding it, into a temporary directory (what the acceptor does per second);
* ``push``: dicomhub's requestor engine (``dimse/requestor.py``) sending the same
  series from its files (``sendfile``) to DCMTK ``storescp`` (BENCHSCP, writing
  files like getscu does), one association, the wall time of open + stores + release;
* ``cmove``: ``movescu`` asking dicomhub to C-MOVE the series to that ``storescp``
  (the sub-operations go through the same requestor engine).

Every DCMTK process runs with ``TCP_NODELAY=1``. The target is push >= 0.8 x cget.

    .venv/bin/python benchmarks/requestor_bench.py [--ct-count 300] [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HOST, MOVE_AET, SCU_AET, DicomhubServer, StoreSCP, dcmtk_env, find_dicomhub, log  # noqa: E402
from datasets import CACHE_ROOT, ensure_datasets  # noqa: E402
from pydicom import dcmread  # noqa: E402

from dicomhub.dimse.requestor import Association  # noqa: E402
from dicomhub.dimse.requests import FileRegion  # noqa: E402
from dicomhub.model.structure import dataset_offset  # noqa: E402


def _files(folder: Path) -> list[tuple[Path, str, str, str, int]]:
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = dcmread(path, stop_before_pixels=True)
        with path.open("rb") as fh:
            head = fh.read(1 << 16)
        out.append((path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID),
                    dataset_offset(head)))  # fmt: skip
    return out


def push(files: list[tuple[Path, str, str, str, int]], scp: StoreSCP) -> float:
    contexts = sorted({(c, ts) for _p, c, _s, ts, _o in files})
    t0 = time.perf_counter()
    with Association.open(HOST, scp.port, MOVE_AET, SCU_AET, [(c, [ts]) for c, ts in contexts]) as assoc:
        for n, (path, sop_class, sop, ts, offset) in enumerate(files):
            cid = assoc.accepted(sop_class, ts)
            assert cid is not None, "storescp refused the context"
            size = path.stat().st_size
            status, comment = assoc.send_c_store(
                cid, sop_class, sop, FileRegion(str(path), offset, size - offset), n + 1
            )
            if status != 0x0000:
                raise RuntimeError(f"C-STORE {sop}: 0x{status:04X} {comment}")
    return time.perf_counter() - t0


def dcmtk(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=dcmtk_env(), capture_output=True, timeout=600)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct-count", type=int, default=300)
    p.add_argument("--small-count", type=int, default=1000, help="only for the shared data set cache key")
    p.add_argument("--seed", type=int, default=20240601)
    p.add_argument("--cache-root", type=Path, default=CACHE_ROOT)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dicomhub-cmd")
    p.add_argument("--json", type=Path)
    a = p.parse_args()

    cache, manifest = ensure_datasets(a.ct_count, a.small_count, a.seed, root=a.cache_root, log=log)
    ct = manifest["ct"]
    folder = cache / ct["dir"]
    files = _files(folder)
    work = Path(tempfile.mkdtemp(prefix="requestor-bench-"))
    scp = StoreSCP("bench", work / "scp", work / "storescp.log")
    scp.start()
    hub = DicomhubServer(
        key="hub", label="dicomhub", aet="DICOMHUB", managed=True, workdir=work,
        command=find_dicomhub(a.dicomhub_cmd), move_port=scp.port,
    )  # fmt: skip
    figures: dict[str, list[float]] = {"cget": [], "push": [], "cmove": []}
    try:
        hub.start()
        dcmtk(["storescu", "+sd", "+r", "-nh", "-aec", hub.aet, HOST, str(hub.port), str(folder)])
        keys = ["-S", "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={ct['study_uid']}",
                "-k", f"SeriesInstanceUID={ct['series_uid']}"]  # fmt: skip
        for rep in range(a.repeat):
            out = work / f"get{rep}"
            out.mkdir()
            elapsed = dcmtk(
                ["getscu", "-aet", SCU_AET, "-aec", hub.aet, *keys, "-od", str(out), HOST, str(hub.port)]
            )
            got = sum(1 for f in out.iterdir() if f.is_file())
            assert got == len(files), f"getscu received {got} of {len(files)}"
            shutil.rmtree(out)
            figures["cget"].append(len(files) / elapsed)
            scp.clear()
            elapsed = push(files, scp)
            assert scp.count() == len(files), f"storescp received {scp.count()} of {len(files)}"
            figures["push"].append(len(files) / elapsed)
            scp.clear()
            elapsed = dcmtk(["movescu", "-aet", SCU_AET, "-aec", hub.aet, "-aem", MOVE_AET, *keys,
                             HOST, str(hub.port)])  # fmt: skip
            assert scp.count() == len(files), f"C-MOVE delivered {scp.count()} of {len(files)}"
            figures["cmove"].append(len(files) / elapsed)
            scp.clear()
            log(f"run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in figures.items()))
    finally:
        hub.stop()
        scp.stop()
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {k: statistics.median(v) for k, v in figures.items()}
    result["instances"] = len(files)
    result["push_over_cget"] = result["push"] / result["cget"]
    result["cmove_over_cget"] = result["cmove"] / result["cget"]
    verdict = "PASS" if result["push_over_cget"] >= 0.8 else "MISS"
    log(f"push/cget = {result['push_over_cget']:.2f} (target >= 0.8): {verdict}")
    print(json.dumps(result, indent=1))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
