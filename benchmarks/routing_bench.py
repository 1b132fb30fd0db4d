#!/usr/bin/env python3
"""Forwarding throughput: a routing rule sends everything stored to DCMTK ``storescp``
while modalities keep sending.

Starts ``dicomhub serve`` with one ``[[route]]`` (``on = "stored"``, no conditions) to a
``storescp`` peer, sends the small set (64x64 instances, 5 per study) with DCMTK
``storescu`` on ``--associations`` associations, and samples every ``--interval``
seconds: instances stored (the index), sent and waiting (``GET /admin/routes/queue``)
and files received by ``storescp``. Reports the rates in and out (instances/s), how
long the queue took to drain after the last store, the deepest queue seen, and the
queue depth over time (``--json`` keeps every sample).

    .venv/bin/python benchmarks/routing_bench.py [--small-count 2000] [--associations 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    HOST,
    MOVE_AET,
    StoreSCP,
    dcmtk_env,
    find_dicomhub,
    http_json,
    log,
    running_dicomhub,
    work_dir,
)
from datasets import ensure_datasets  # noqa: E402


def _config(path: Path, scp_port: int) -> Path:
    path.write_text(
        f"""[[peer]]
name = "dest"
ae_title = "{MOVE_AET}"
host = "{HOST}"
port = {scp_port}

[[route]]
name = "all"
on = "stored"
to = ["dest"]
"""
    )
    return path


def _send(folders: list[Path], port: int, log_dir: Path) -> tuple[float, list[int]]:
    """storescu, one association per folder, side by side; (seconds, exit codes)."""
    started = time.monotonic()
    procs = []
    for i, folder in enumerate(folders):
        out = open(log_dir / f"storescu-{i}.log", "wb")  # noqa: SIM115 - closed below
        cmd = ["storescu", "+sd", "+r", "-aet", f"MOD{i}", "-aec", "DICOMHUB", HOST, str(port), str(folder)]
        procs.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=dcmtk_env()), out))
    codes = []
    for proc, out in procs:
        codes.append(proc.wait())
        out.close()
    return time.monotonic() - started, codes


def _queue(http_port: int) -> dict[str, int]:
    counts = {"queued": 0, "sent": 0, "dead": 0}
    for row in http_json(f"http://{HOST}:{http_port}/admin/routes/queue"):
        state = str(row.get("state"))
        counts[state] = counts.get(state, 0) + int(row.get("count", 0))
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small-count", type=int, default=2000, help="instances sent (default 2000)")
    ap.add_argument("--associations", type=int, choices=(1, 4), default=4, help="storescu associations")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    ap.add_argument("--timeout", type=float, default=600, help="give up draining after this many seconds")
    ap.add_argument("--dicomhub-cmd", help="command that starts dicomhub")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)

    base, _manifest = ensure_datasets(ct_count=300, small_count=args.small_count, log=log)
    quarters = sorted(p for p in (base / "small-A").iterdir() if p.is_dir())
    # The set is written in four quarters: one association each, or one for all.
    folders = [base / "small-A"] if args.associations == 1 else quarters[:4]
    total = sum(1 for f in folders for p in f.rglob("*") if p.is_file())
    command = find_dicomhub(args.dicomhub_cmd)

    with work_dir("dicomhub-routing-bench-", args.keep) as work:
        scp = StoreSCP("dest", work / "received", work / "storescp.log")
        scp.start()
        try:
            config = _config(work / "dicomhub.toml", scp.port)
            with running_dicomhub(command, work, work / "data", ["--config", str(config)]) as hub:
                samples: list[dict[str, Any]] = []
                result: dict[str, Any] = {}
                t0 = time.monotonic()

                def sender() -> None:
                    result["seconds"], result["codes"] = _send(folders, hub.dimse_port, work)

                thread = threading.Thread(target=sender)
                thread.start()
                sending_done_at: float | None = None
                deadline = t0 + args.timeout
                while time.monotonic() < deadline:
                    time.sleep(args.interval)
                    q = _queue(hub.http_port)
                    now = time.monotonic() - t0
                    samples.append({"t": round(now, 2), **q, "received": scp.count()})
                    if sending_done_at is None and not thread.is_alive():
                        sending_done_at = now
                    if sending_done_at is not None and samples[-1]["received"] >= total:
                        break
                thread.join()
                drained_at = samples[-1]["t"]
        finally:
            scp.stop()

    if any(result.get("codes", [1])):
        raise SystemExit(f"storescu failed: exit codes {result.get('codes')}")
    received = samples[-1]["received"]
    rate_in = total / result["seconds"]
    rate_out = received / drained_at
    during = [s for s in samples if sending_done_at is None or s["t"] <= sending_done_at]
    out_while_ingesting = (during[-1]["received"] / during[-1]["t"]) if during else 0.0
    deepest = max(s["queued"] for s in samples)
    print(f"instances sent by storescu ({len(folders)} associations): {total}")
    print(f"in:  {rate_in:8.1f} inst/s  ({result['seconds']:.1f} s)")
    print(f"out: {out_while_ingesting:8.1f} inst/s while ingesting; {rate_out:.1f} inst/s overall "
          f"(all {received} received after {drained_at:.1f} s, {drained_at - result['seconds']:.1f} s "
          "after the last store)")  # fmt: skip
    print(f"deepest queue: {deepest} items; dead: {samples[-1]['dead']}")
    step = max(1, len(samples) // 12)
    print("queue depth over time (s: queued / received):")
    print("  " + "  ".join(f"{s['t']:.1f}: {s['queued']}/{s['received']}" for s in samples[::step]))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "instances": total,
                    "associations": len(folders),
                    "in_inst_s": rate_in,
                    "out_inst_s_while_ingesting": out_while_ingesting,
                    "out_inst_s_overall": rate_out,
                    "drained_after_s": drained_at,
                    "deepest_queue": deepest,
                    "samples": samples,
                },
                indent=1,
            )
        )
    return 0 if received >= total else 1


if __name__ == "__main__":
    sys.exit(main())
