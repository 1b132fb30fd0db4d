#!/usr/bin/env python3
"""C-FIND latency as DCMTK's own client sees it: ``findscu --repeat`` on one association.

dimse_bench.py times C-FIND with its own blocking client (minidimse.py).  Real
clients frame, flush and acknowledge differently, so this script times DCMTK's
``findscu`` against dicomhub and Orthanc holding the same 2,000 studies (set A
of datasets.py, loaded untimed into each) for the four queries of
dimse_bench.py.  ``findscu --repeat N`` sends the same C-FIND N times on one
association, so

    per query = (T(N) - T(1)) / (N - 1)

removes the process start, the association set-up and the release.  Each run
times T(1) and T(N) back to back per server; runs alternate the order of the
servers and the median of the runs is reported.  Two client modes are timed:
findscu as a user runs it (every response printed; the output goes to
/dev/null) and with ``--hide-responses`` (``-sr``), which leaves mostly the
servers' own time.  ``--baseline-cmd`` adds a second dicomhub (e.g. the main
branch) to the same run.  See benchmarks/README.md.

    .venv/bin/python benchmarks/cfind_bench.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SCU_AET, DicomhubServer, Server, StoreSCP, dcmtk_env, find_dicomhub, log  # noqa: E402
from datasets import CACHE_ROOT  # noqa: E402
from dimse_bench import Bench  # noqa: E402
from dimse_bench import parse_args as dimse_parse_args  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402


def _tree_ticks(root: int) -> int:
    """CPU clock ticks used so far by process `root` and its descendants (from /proc)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += [child for child, parent in parents.items() if parent == pid]
    return total


def wait_for_idle_servers(servers: list[Server], quiet_seconds: float = 3.0, timeout: float = 600.0) -> float:
    """Wait until no server's process tree uses more than 5% of a CPU for `quiet_seconds`.

    After a load dicomhub's background process still prepares header JSON,
    validation and digests; queries are timed after that, as on a settled
    archive. The machine as a whole is not waited for: other work on it is
    reported as the load average instead. Returns the seconds waited.
    """
    start = time.monotonic()
    pids = [s.proc.pid for s in servers if s.proc is not None]
    hz = os.sysconf("SC_CLK_TCK")
    last = [_tree_ticks(p) for p in pids]
    quiet_since = time.monotonic()
    while time.monotonic() - start < timeout:
        time.sleep(0.5)
        now = [_tree_ticks(p) for p in pids]
        busy = max((b - a) / hz / 0.5 for a, b in zip(last, now, strict=True)) if pids else 0.0
        last = now
        if busy > 0.05:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_seconds:
            break
    return time.monotonic() - start


def findscu_keys(ident: Dataset) -> list[str]:
    """The identifier as findscu ``-k`` arguments (QueryRetrieveLevel first)."""
    args = ["-k", f"QueryRetrieveLevel={ident.QueryRetrieveLevel}"]
    for elem in ident:
        if elem.keyword == "QueryRetrieveLevel":
            continue
        value = "" if elem.value is None else str(elem.value)
        args += ["-k", f"{elem.keyword}={value}" if value else elem.keyword]
    return args


#: Client modes: name -> extra findscu options.
MODES = {"shown": [], "hidden": ["-sr"]}


def findscu(
    s: Server, keys: list[str], repeat: int, options: list[str] | None = None, verbose: bool = False
) -> tuple[float, str]:
    """Run one findscu process; returns (wall seconds, its output).

    Timed runs (not ``verbose``) write their output to /dev/null, as a terminal
    would take it, without a reader process competing for the CPUs."""
    cmd = [
        "findscu",
        "-S",
        "-aet",
        SCU_AET,
        "-aec",
        s.aet,
        "-to",
        "20",
        "-ta",
        "30",
        "-td",
        "60",
        "--repeat",
        str(repeat),
        *(options or []),
        *(["-v"] if verbose else []),
        *keys,
        s.host,
        str(s.port),
    ]
    sink = subprocess.PIPE if verbose else subprocess.DEVNULL
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=sink, stderr=sink, env=dcmtk_env(), timeout=300, check=False)
    elapsed = time.perf_counter() - t0
    out = ((proc.stdout or b"") + (proc.stderr or b"")).decode(errors="replace")
    if proc.returncode != 0 or "E: " in out:
        raise RuntimeError(f"findscu exit {proc.returncode}: {out.strip().splitlines()[-3:]}")
    return elapsed, out


def matches(s: Server, keys: list[str]) -> int:
    """Pending responses of one query, counted from findscu -v (untimed)."""
    _, out = findscu(s, keys, 1, verbose=True)
    return sum(1 for line in out.splitlines() if "Find Response:" in line and "(Pending)" in line)


def add_baseline(bench: Bench, command: str, extra: list[str]) -> None:
    """A second dicomhub, started by `command`, measured in the same run as the first."""
    s = DicomhubServer(
        key="baseline",
        label="baseline",
        aet="DICOMHUB",
        managed=True,
        command=find_dicomhub(command),
        extra_args=extra,
    )
    s.workdir = bench.workdir
    scp = StoreSCP(
        name=s.key,
        outdir=bench.workdir / "move-baseline",
        logpath=bench.logdir / "storescp-baseline.log",
        port=0,
    )
    scp.start()
    bench.scps[s.key] = scp
    s.move_port = scp.port
    s.start()
    bench.contents[s.key] = set()
    bench.servers.insert(1, s)
    log(f"ready: {s.describe()}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(args)
    result: dict[str, Any] = {"repeat": args.find_repeat_n, "runs": args.runs, "queries": {}}
    try:
        bench.setup()
        if args.baseline_cmd:
            add_baseline(bench, args.baseline_cmd, list(args.dicomhub_arg or []))
        for s in bench.servers:
            bench.load(s, "A")
        waited = wait_for_idle_servers(bench.servers)
        log(f"servers idle after {waited:.0f} s")
        result["idle_wait_s"] = round(waited, 1)
        result["servers"] = {s.key: s.label for s in bench.servers}
        result["load_before"] = os.getloadavg()
        n = args.find_repeat_n
        for key, label, ident in bench.find_queries("A"):
            keys = findscu_keys(ident)
            q: dict[str, Any] = {"label": label, "matches": {}, "per_query_ms": {}, "samples_ms": {}}
            for s in bench.servers:
                q["matches"][s.key] = matches(s, keys)
                findscu(s, keys, 2)  # warm the server's caches for this query
            for mode in MODES:
                q["per_query_ms"][mode] = {}
                q["samples_ms"][mode] = {s.key: [] for s in bench.servers}
            for rep in range(args.runs):
                for s in bench.order(rep):
                    for mode, options in MODES.items():
                        t1, _ = findscu(s, keys, 1, options)
                        tn, _ = findscu(s, keys, n, options)
                        q["samples_ms"][mode][s.key].append(round((tn - t1) / (n - 1) * 1000, 3))
            for mode in MODES:
                for s in bench.servers:
                    med = statistics.median(q["samples_ms"][mode][s.key])
                    q["per_query_ms"][mode][s.key] = round(med, 3)
                    log(f"{label} [{mode}]: {s.label} {med:.2f} ms/query, {q['matches'][s.key]} matches")
            if len(set(q["matches"].values())) > 1:
                log(f"WARNING: {label}: match counts differ: {q['matches']}")
            result["queries"][key] = q
        result["load_after"] = os.getloadavg()
    finally:
        bench.teardown()
    return result


def report(result: dict[str, Any]) -> None:
    servers: dict[str, str] = result.get("servers", {})
    if not result["queries"]:
        return
    ref = "orthanc" if "orthanc" in servers else None
    for mode in MODES:
        print()
        print(
            f"findscu --repeat {result['repeat']}{' -sr' if mode == 'hidden' else ''}, "
            f"per query = (T(N) - T(1)) / (N - 1), median of {result['runs']} runs (ms)"
        )
        head = f"{'query':44}" + "".join(f"{lbl:>12}" for lbl in servers.values()) + f"{'matches':>12}"
        print(head + "".join(f"{lbl + '/O':>12}" for k, lbl in servers.items() if ref and k != ref))
        for q in result["queries"].values():
            vals = q["per_query_ms"][mode]
            line = f"{q['label']:44}" + "".join(f"{vals[k]:>12.2f}" for k in servers)
            line += f"{'/'.join(str(q['matches'][k]) for k in servers):>12}"
            if ref:
                line += "".join(f"{vals[k] / vals[ref]:>12.2f}" for k in servers if k != ref and vals[ref])
            print(line)
    la, lb = result["load_before"], result["load_after"]
    print(
        f"load average before {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}, after {lb[0]:.2f} {lb[1]:.2f} {lb[2]:.2f}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="alternating runs per server; median (default 3)")
    ap.add_argument(
        "--repeat", dest="find_repeat_n", type=int, default=101, help="findscu --repeat N (default 101)"
    )
    ap.add_argument(
        "--small-count", type=int, default=10000, help="instances of set A, 5 per study (default 10000)"
    )
    ap.add_argument("--no-orthanc", action="store_true", help="measure dicomhub only")
    ap.add_argument("--dicomhub-arg", action="append", metavar="ARG", help="extra 'dicomhub serve' argument")
    ap.add_argument("--dicomhub-cmd", help="command that starts dicomhub (default: next to this interpreter)")
    ap.add_argument(
        "--baseline-cmd",
        metavar="CMD",
        help="also measure a second dicomhub started by CMD, e.g. another checkout (label 'baseline')",
    )
    ap.add_argument("--json", metavar="FILE", help="write the figures to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, storage)")
    a = ap.parse_args(argv)
    if a.find_repeat_n < 2:
        ap.error("--repeat must be at least 2")
    # The server set-up and data loading of dimse_bench.py, with its defaults.
    base = ["--only", "find", "--small-count", str(a.small_count), "--ct-count", "300"]
    base += ["--no-orthanc"] if a.no_orthanc else []
    base += [f"--dicomhub-arg={x}" for x in a.dicomhub_arg or []]
    base += ["--keep"] if a.keep else []
    base += ["--dicomhub-cmd", a.dicomhub_cmd] if a.dicomhub_cmd else []
    ns = dimse_parse_args(base)
    for k, v in vars(a).items():
        setattr(ns, k, v)
    return ns


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    result = run(args)
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        log(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
