"""kill -9 durability: 20 cycles of a 4-association ingest, each ended by kill -9 of the
server's whole process group, on SQLite + file store and on PostgreSQL + S3.

Each cycle starts ``dicomhub serve`` (2 DIMSE workers) on the same archive (data dir,
database, bucket), runs 4 DCMTK ``storescu`` processes at once, each with its own new
series of small CT images (64x64, new UIDs every cycle; some cycles also resend part of
the previous cycle's files first), and kills the server at a random point: once a random
10-90 % share of the expected C-STORE responses has arrived. Which instances were
acknowledged is read from each storescu's ``-d`` output (the status of each C-STORE-RSP
by its Affected SOP Instance UID, as the e2e tests do).

After the last kill the server starts once more (what it logs then is reported), and for
EVERY instance acknowledged in any cycle: it is in the index exactly once (under the
study and series it was sent with), WADO-RS returns it exactly once, and its PixelData
and identifying attributes equal those of the file sent. Instances not acknowledged may
be present; if they are, they must be whole too. ``dicomhub check`` must find no missing
or damaged blob (orphans, the blobs of stores the kill cut off before their index row
committed, are expected and counted).

PostgreSQL is a throw-away cluster with its durability defaults (fsync on); S3 is moto's
local server (tests/s3backend.py), which the kills leave running.

Run: ``.venv/bin/python benchmarks/kill_cycles_bench.py [--backend sqlite-file|postgres-s3|both]
[--cycles 20] [--per-association 100] [--json FILE]``. The exit status is 1 when an
acknowledged instance was lost or damaged.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "src"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import httpx  # noqa: E402
import pydicom  # noqa: E402

from benchmarks._common import dcmtk_env, log  # noqa: E402
from dicomhub.index.engine import connect_engine  # noqa: E402
from tests import datagen, s3backend  # noqa: E402
from tests.e2e.helpers import (  # noqa: E402
    HOST,
    DicomhubServer,
    clean_env,
    dicomhub_command,
    parse_store_statuses,
    split_multipart,
)
from tests.pgcluster import PostgresCluster  # noqa: E402

BACKENDS = ("sqlite-file", "postgres-s3")
ASSOCIATIONS = 4
# One C-STORE-RSP in ``storescu -d`` output: counted while the ingest runs.
_RSP_MARK = b"C-STORE RSP"


@dataclass(frozen=True)
class Sent:
    """One file a storescu sent: what the archive must hold for it if acknowledged."""

    path: Path
    cycle: int
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    patient_id: str


@dataclass
class Cycle:
    cycle: int
    files_sent: int = 0  # files given to the storescu processes (new + resent)
    resent: int = 0
    kill_target: int = 0  # responses seen before the kill (the random point)
    responses_at_kill: int = 0
    acknowledged: int = 0  # success statuses read from the storescu outputs afterwards
    acknowledged_resent: int = 0
    other_statuses: dict[str, int] = field(default_factory=dict)
    start_s: float = 0.0  # spawn to healthy + DIMSE port open (recovery after the previous kill)
    ingest_s: float = 0.0  # first storescu spawned to the kill
    cycle_s: float = 0.0  # start of the server to every storescu ended


@dataclass
class BackendResult:
    backend: str
    cycles: list[Cycle] = field(default_factory=list)
    sent: int = 0  # distinct instances sent
    acknowledged: int = 0  # distinct instances acknowledged at least once
    verified: int = 0
    lost: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unacknowledged_present: int = 0
    unacknowledged_damaged: list[str] = field(default_factory=list)
    unknown_in_index: int = 0
    final_start_s: float = 0.0
    final_start_log: list[str] = field(default_factory=list)
    check_exit: int | None = None
    check_problems: dict[str, int] = field(default_factory=dict)
    check_bad_for_acknowledged: list[str] = field(default_factory=list)
    conflicts: int = 0  # refused copies in quarantine (a resent identical object must not be one)
    repair: dict[str, int] = field(default_factory=dict)  # check --repair --grace 0, server stopped
    problems_after_repair: int | None = None
    unused_keys: int = 0  # empty pooled blob files (file://) left by the killed processes
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not (
            self.error
            or self.lost
            or self.damaged
            or self.duplicated
            or self.unacknowledged_damaged
            or self.check_bad_for_acknowledged
            or self.conflicts
            or self.problems_after_repair
            or any(c.other_statuses for c in self.cycles)  # e.g. a resend refused as a conflict
        )


# --------------------------------------------------------------------------- back ends


@contextlib.contextmanager
def backend_environment(backend: str, work: Path) -> Iterator[dict[str, str]]:
    """The server environment that puts the archive on ``backend``; the PostgreSQL
    cluster and the S3 server (if any) live as long as the block."""
    if backend == "sqlite-file":
        yield {}
        return
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(PostgresCluster(durable=True))
        s3 = s3backend.launch_s3_server()
        stack.callback(s3.stop)
        storage_url, s3_env = s3backend.fresh_storage(work.name, s3)
        log(f"PostgreSQL (fsync on) on port {cluster.port}, S3 (moto) on port {s3.port}")
        yield {
            "DICOMHUB_DATABASE_URL": cluster.create_database(),
            "DICOMHUB_STORAGE_URL": storage_url,
            **s3_env,
        }


def database_url(env: dict[str, str], data_dir: Path) -> str:
    return env.get("DICOMHUB_DATABASE_URL") or f"sqlite:///{data_dir / 'index.sqlite'}"


# --------------------------------------------------------------------------- one cycle


def write_sets(root: Path, cycle: int, per_association: int, sent: dict[str, Sent]) -> list[list[Path]]:
    """A new series of small CT images per association (own study, own patient)."""
    sets: list[list[Path]] = []
    for a in range(ASSOCIATIONS):
        patient_id = f"KILL{cycle:02d}A{a}"
        series = datagen.write_ct_series(
            root / f"c{cycle:02d}" / f"a{a}", per_association, rows=64, cols=64, patient_id=patient_id
        )
        paths = []
        for ds in series:
            path = Path(ds.filename)
            sent[str(ds.SOPInstanceUID)] = Sent(
                path,
                cycle,
                str(ds.StudyInstanceUID),
                str(ds.SeriesInstanceUID),
                str(ds.SOPClassUID),
                patient_id,
            )
            paths.append(path)
        sets.append(paths)
    return sets


def count_responses(logs: list[Path], offsets: list[int], counts: list[int]) -> int:
    """C-STORE responses in the storescu outputs so far (reads only what is new; a mark
    cut by the end of the file is found on the next call, as the offset stops before it)."""
    for i, path in enumerate(logs):
        with open(path, "rb") as fh:
            fh.seek(offsets[i])
            chunk = fh.read()
        cut = chunk.rfind(b"\n") + 1  # count whole lines only
        counts[i] += chunk[:cut].count(_RSP_MARK)
        offsets[i] += cut
    return sum(counts)


def run_cycle(
    server: DicomhubServer,
    cycle: int,
    sets: list[list[Path]],
    resend: list[list[Path]],
    rng: random.Random,
    logdir: Path,
) -> tuple[Cycle, list[dict[str, int]]]:
    """Start the server, ingest on 4 associations, kill -9 at a random point; the
    statuses each storescu received (SOP Instance UID -> status)."""
    result = Cycle(cycle)
    t0 = time.monotonic()
    server.start(timeout=120)
    result.start_s = time.monotonic() - t0
    files = [[*old, *new] for old, new in zip(resend, sets, strict=True)]  # resent files go first
    result.files_sent = sum(len(f) for f in files)
    result.resent = sum(len(r) for r in resend)
    result.kill_target = max(1, round(rng.uniform(0.1, 0.9) * result.files_sent))
    logs = [logdir / f"storescu-c{cycle:02d}-a{a}.log" for a in range(ASSOCIATIONS)]
    procs: list[subprocess.Popen[bytes]] = []
    t_ingest = time.monotonic()
    for a, paths in enumerate(files):
        cmd = [
            "storescu", "-d", "-nh", "-aet", f"KILLSCU{a}", "-aec", server.aet,
            "-to", "20", "-ta", "30", "-td", "60", HOST, str(server.dimse_port), *map(str, paths),
        ]  # fmt: skip
        with open(logs[a], "wb") as fh:
            procs.append(
                subprocess.Popen(
                    cmd,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=dcmtk_env(),
                    start_new_session=True,
                )
            )
    offsets, counts = [0] * ASSOCIATIONS, [0] * ASSOCIATIONS
    seen = 0
    while seen < result.kill_target and any(p.poll() is None for p in procs):
        time.sleep(0.005)
        seen = count_responses(logs, offsets, counts)
    seen = count_responses(logs, offsets, counts)
    server.kill9()  # the whole process group: the main process and its DIMSE workers
    result.ingest_s = time.monotonic() - t_ingest
    result.responses_at_kill = seen
    for p in procs:
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait(timeout=10)
    result.cycle_s = time.monotonic() - t0
    statuses = [parse_store_statuses(path.read_text(errors="replace")) for path in logs]
    return result, statuses


# --------------------------------------------------------------------------- verification


def index_rows(url: str) -> list[tuple[str, str, str, str]]:
    """(SOP Instance, Series Instance, Study Instance UID, blob key) of every indexed instance."""
    from sqlalchemy import text

    engine = connect_engine(url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT i.sop_instance_uid, se.series_instance_uid, st.study_instance_uid, i.blob_key "
                    "FROM instance i JOIN series se ON i.series_pk = se.pk "
                    "JOIN study st ON se.study_pk = st.pk"
                )
            ).all()
    finally:
        engine.dispose()
    return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]


def retrieve_study(client: httpx.Client, base_url: str, study_uid: str) -> list[pydicom.Dataset]:
    """Every instance WADO-RS returns for the study (empty when it does not know it)."""
    r = client.get(
        f"{base_url}/dicomweb/studies/{study_uid}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
        timeout=120,
    )
    if r.status_code == 404:
        return []
    r.raise_for_status()
    return [
        pydicom.dcmread(io.BytesIO(content), force=True)
        for _, content in split_multipart(r.content, r.headers["content-type"])
    ]


def differences(sent: Sent, got: pydicom.Dataset) -> list[str]:
    """What differs between the file sent and the instance retrieved (pixel data and the
    identifying attributes)."""
    original = pydicom.dcmread(sent.path)
    out = [
        keyword
        for keyword in ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID")
        if str(got.get(keyword, "")) != str(original.get(keyword, ""))
    ]
    if "PixelData" not in got or bytes(got.PixelData) != bytes(original.PixelData):
        out.append("PixelData")
    return out


def run_cli_json(env: dict[str, str], data_dir: Path, *args: str) -> tuple[int, Any]:
    """``dicomhub ARGS --data-dir DATA --json`` on the archive: (exit status, parsed output)."""
    proc = subprocess.run(
        [*dicomhub_command(), *args, "--data-dir", str(data_dir), "--json"],
        capture_output=True, env=clean_env(env), timeout=1800, check=False,
    )  # fmt: skip
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError as exc:
        raise RuntimeError(
            f"dicomhub {args[0]} exited with {proc.returncode}: {proc.stderr.decode()[-2000:]}"
        ) from exc


def start_log(server: DicomhubServer) -> list[str]:
    """The lines the server logged in its last start (its warnings and errors first)."""
    text = server.log_text()
    last = text.rsplit(f"===== start #{server.starts}:", 1)[-1].splitlines()[1:]
    return last


def verify(
    result: BackendResult,
    server: DicomhubServer,
    env: dict[str, str],
    sent: dict[str, Sent],
    acknowledged: set[str],
) -> None:
    rows = index_rows(database_url(env, server.data_dir))
    in_index = Counter(sop for sop, *_ in rows)
    placement = {sop: (series, study) for sop, series, study, _ in rows}
    result.duplicated = sorted(u for u, n in in_index.items() if n > 1)
    result.unknown_in_index = sum(1 for u in in_index if u not in sent)
    retrieved: dict[str, list[pydicom.Dataset]] = {}
    with httpx.Client() as client:
        for study in sorted({s.study_instance_uid for s in sent.values()}):
            for ds in retrieve_study(client, server.base_url, study):
                retrieved.setdefault(str(ds.SOPInstanceUID), []).append(ds)
    for uid, s in sent.items():
        copies = retrieved.get(uid, [])
        if len(copies) > 1 and uid not in result.duplicated:
            result.duplicated.append(uid)
        whole = (
            len(copies) == 1
            and in_index[uid] == 1
            and placement[uid] == (s.series_instance_uid, s.study_instance_uid)
            and not differences(s, copies[0])
        )
        if uid in acknowledged:
            if not copies and uid not in in_index:
                result.lost.append(uid)
            elif not whole:
                result.damaged.append(uid)
            else:
                result.verified += 1
        elif copies or uid in in_index:
            result.unacknowledged_present += 1
            if not whole:
                result.unacknowledged_damaged.append(uid)
    code, report = run_cli_json(env, server.data_dir, "check")
    problems: list[dict[str, Any]] = report["storage"]["problems"]
    result.check_exit = code
    result.check_problems = dict(Counter(str(p.get("kind")) for p in problems))
    result.check_bad_for_acknowledged = sorted(
        str(p.get("sop_instance_uid")) for p in problems if p.get("kind") != "orphan"
    )
    result.conflicts = len(run_cli_json(env, server.data_dir, "conflicts")[1])
    result.unused_keys = int(report["storage"].get("unused_keys", 0))


def repair(result: BackendResult, server: DicomhubServer, env: dict[str, str]) -> None:
    """With the server stopped: ``check --repair --grace 0`` mends the orphans (indexes the
    whole objects whose rows never committed, removes the rest); then nothing is left."""
    server.stop()
    _, report = run_cli_json(env, server.data_dir, "check", "--repair", "--grace", "0")
    # Each is a count or the list of the blobs concerned.
    result.repair = {
        k: len(v) if isinstance(v, list) else int(v)
        for k, v in report["storage"].items()
        if k in ("reindexed", "removed", "skipped_young")
    }
    result.problems_after_repair = len(run_cli_json(env, server.data_dir, "check")[1]["storage"]["problems"])


# --------------------------------------------------------------------------- one back end


def damage_one(env: dict[str, str], data_dir: Path, uid: str) -> None:
    """The self-test of the checks (``--damage-one``): flip the last byte (pixel data) of
    the blob of acknowledged instance ``uid``; the run must then report it damaged."""
    if env:
        raise SystemExit("--damage-one damages a file blob: use it with --backend sqlite-file")
    key = next(k for sop, _, _, k in index_rows(database_url(env, data_dir)) if sop == uid)
    path = data_dir / "blobs" / key[:2] / key[2] / key
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    log(f"damaged the blob of acknowledged instance {uid} (--damage-one)")


def run_backend(backend: str, args: argparse.Namespace, work: Path) -> BackendResult:
    result = BackendResult(backend)
    rng = random.Random(f"{args.seed}-{backend}")
    files, logdir, data_dir = work / "files", work / "logs", work / "data"
    logdir.mkdir(parents=True)
    sent: dict[str, Sent] = {}
    acknowledged: set[str] = set()
    with backend_environment(backend, work) as env:
        server = DicomhubServer(data_dir, logdir / "dicomhub.log", args=["--workers", "2"], env=env)
        previous: list[list[Path]] = [[] for _ in range(ASSOCIATIONS)]
        try:
            for c in range(args.cycles):
                sets = write_sets(files, c, args.per_association, sent)
                # Some cycles resend a part of the previous cycle's files (acknowledged or not):
                # an identical copy must stay one instance, neither a duplicate nor a conflict.
                resend: list[list[Path]] = [[] for _ in range(ASSOCIATIONS)]
                if c > 0 and rng.random() < args.resend_share:
                    a = rng.randrange(ASSOCIATIONS)
                    resend[a] = rng.sample(previous[a], k=max(1, len(previous[a]) // 4))
                resent_uids = {
                    str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for r in resend for p in r
                }
                cycle, statuses = run_cycle(server, c, sets, resend, rng, logdir)
                for st in statuses:
                    for uid, status in st.items():
                        if uid not in sent:
                            raise RuntimeError(f"cycle {c}: a response for {uid}, which was not sent")
                        if status == 0x0000:
                            cycle.acknowledged += 1
                            cycle.acknowledged_resent += uid in resent_uids
                            acknowledged.add(uid)
                        else:
                            key = f"0x{status:04X}"
                            cycle.other_statuses[key] = cycle.other_statuses.get(key, 0) + 1
                result.cycles.append(cycle)
                previous = sets
                log(
                    f"{backend} cycle {c + 1}/{args.cycles}: start {cycle.start_s:.2f} s, "
                    f"{cycle.files_sent} files ({cycle.resent} resent), kill at {cycle.responses_at_kill} "
                    f"responses (target {cycle.kill_target}) after {cycle.ingest_s:.2f} s, "
                    f"{cycle.acknowledged} acknowledged"
                    + (f", other statuses {cycle.other_statuses}" if cycle.other_statuses else "")
                )
            if args.damage_one:
                damage_one(env, data_dir, sorted(acknowledged)[0])
            t0 = time.monotonic()
            server.start(timeout=120)
            result.final_start_s = time.monotonic() - t0
            result.final_start_log = start_log(server)
            result.sent, result.acknowledged = len(sent), len(acknowledged)
            log(
                f"{backend}: final start took {result.final_start_s:.2f} s; "
                f"verifying {len(acknowledged)} instances"
            )
            verify(result, server, env, sent, acknowledged)
            repair(result, server, env)
        except Exception as exc:  # noqa: BLE001 - reported as the back end's error, the other still runs
            result.error = f"{type(exc).__name__}: {exc}"
            log(f"{backend}: ERROR {result.error}")
        finally:
            server.stop()
    return result


def summary(r: BackendResult) -> dict[str, Any]:
    starts = [c.start_s for c in r.cycles[1:]]
    return {
        "backend": r.backend,
        "ok": r.ok,
        "cycles": len(r.cycles),
        "files_sent": sum(c.files_sent for c in r.cycles),
        "instances_sent": r.sent,
        "resent_files": sum(c.resent for c in r.cycles),
        "resent_acknowledged": sum(c.acknowledged_resent for c in r.cycles),
        "acknowledged": r.acknowledged,
        "other_statuses": dict(sum((Counter(c.other_statuses) for c in r.cycles), Counter())),
        "verified": r.verified,
        "lost": len(r.lost),
        "damaged": len(r.damaged),
        "duplicated": len(r.duplicated),
        "unacknowledged_present": r.unacknowledged_present,
        "unacknowledged_absent": r.sent - r.acknowledged - r.unacknowledged_present,
        "unacknowledged_damaged": len(r.unacknowledged_damaged),
        "unknown_in_index": r.unknown_in_index,
        "cycle_s_median": round(sorted(c.cycle_s for c in r.cycles)[len(r.cycles) // 2], 2)
        if r.cycles
        else None,
        "restart_after_kill_s_median": round(sorted(starts)[len(starts) // 2], 2) if starts else None,
        "restart_after_kill_s_max": round(max(starts), 2) if starts else None,
        "final_start_s": round(r.final_start_s, 2),
        "check_exit": r.check_exit,
        "check_problems": r.check_problems,
        "conflicts": r.conflicts,
        "unused_keys": r.unused_keys,
        "repair": r.repair,
        "problems_after_repair": r.problems_after_repair,
        "error": r.error,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=[*BACKENDS, "both"], default="both")
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--per-association", type=int, default=100, help="new instances per storescu per cycle")
    ap.add_argument("--resend-share", type=float, default=0.5, help="share of cycles that resend old files")
    ap.add_argument("--seed", type=int, default=None, help="seed of the kill points (printed; replays a run)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, files, archive)")
    ap.add_argument(
        "--damage-one",
        action="store_true",
        help="self-test: damage one acknowledged blob before the final start (the run must fail)",
    )
    args = ap.parse_args()
    if args.seed is None:
        args.seed = int(time.time())
    log(f"seed {args.seed} (--seed {args.seed} replays the kill points)")
    results: list[BackendResult] = []
    for backend in BACKENDS if args.backend == "both" else (args.backend,):
        work = Path(tempfile.mkdtemp(prefix=f"kill-cycles-{backend}-"))
        try:
            results.append(run_backend(backend, args, work))
        finally:
            if args.keep:
                log(f"kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "seed": args.seed,
        "cycles": args.cycles,
        "associations": ASSOCIATIONS,
        "per_association": args.per_association,
        "results": [summary(r) for r in results],
        "detail": [asdict(r) for r in results],
    }
    for r in results:
        s = summary(r)
        log(f"== {r.backend}: {'OK' if r.ok else 'FAILED'}")
        for key, value in s.items():
            log(f"   {key}: {value}")
        notable = [ln for ln in r.final_start_log if any(w in ln for w in ("WARNING", "ERROR", "CRITICAL"))]
        log(f"   final start logged {len(r.final_start_log)} lines, {len(notable)} warnings/errors")
        for line in notable[:20]:
            log(f"     {line}")
        for what in ("lost", "damaged", "duplicated", "unacknowledged_damaged", "check_bad_for_acknowledged"):
            if getattr(r, what):
                log(f"   {what}: {getattr(r, what)[:10]}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
        log(f"wrote {args.json}")
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
