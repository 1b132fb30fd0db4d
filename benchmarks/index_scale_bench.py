"""Index scale: C-FIND latency and ingest rate at 1,000,000 instances, SQLite and PostgreSQL,
and two nodes on one PostgreSQL.

For each backend the script

1. synthesises an index of ``--instances`` instances (``--instances / 10`` studies, 2 series
   of 5 instances each, 2 studies per patient) directly in the database: ``COPY`` on
   PostgreSQL, ``executemany`` in large transactions on SQLite; plus one change log row
   per instance;
2. times study-level queries through the real query service (``SearchService.search``,
   the code C-FIND and QIDO-RS call), each with a different value: exact PatientID,
   PatientName prefix wildcard (``ABCDE*``), a one-week StudyDate range, exact
   AccessionNumber; reports the median and the 95th percentile;
3. times ingest (``IngestService.store_part10`` from 4 threads, real file blob store) of
   ``--ingest`` small instances into a fresh empty index and into the big one, alternately,
   ``--ingest-repeat`` times each; reports the medians.

Then two ``dicomhub serve`` processes on one PostgreSQL database (and one shared file://
blob folder) receive ``--node-files`` instances from 4 ``storescu`` processes, against
one node receiving the same from 4 ``storescu`` processes (``--node-repeat`` runs of each,
alternately; the medians are reported). The cores are shared out: one node runs a DIMSE
worker per core, each of two nodes half as many.

The PostgreSQL server is a throw-away cluster (tests/pgcluster.py) with its durability
defaults (fsync on). Run: ``python benchmarks/index_scale_bench.py [--instances N]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "src"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from pydicom.dataset import Dataset  # noqa: E402

from benchmarks._common import HOST, dcmtk_env, find_dicomhub, free_port, http_ok, log  # noqa: E402
from dicomhub.bootstrap import open_archive  # noqa: E402
from dicomhub.config import Settings  # noqa: E402
from dicomhub.model.caller import Caller  # noqa: E402
from dicomhub.model.query import query_from_identifier  # noqa: E402
from tests import datagen  # noqa: E402
from tests.pgcluster import PostgresCluster  # noqa: E402

_UID = "1.2.826.0.1.3680043.10.543"
_CT = "1.2.840.10008.5.1.4.1.1.2"
_EXPLICIT = "1.2.840.10008.1.2.1"
_SYLLABLES = ["AN", "BER", "CO", "DRA", "EL", "FOR", "GAN", "HEL", "IS", "JOR",
              "KAL", "LEN", "MOR", "NIS", "OT", "PER", "QUI", "ROS", "SAN", "TOR"]  # fmt: skip
_GIVEN = ["ANNA", "BEN", "CARL", "DORA", "EVA", "FINN", "GRETA", "HANS", "IDA", "JAN",
          "KARL", "LINA", "MAX", "NORA", "OLE", "PIA", "ROLF", "SARA", "TOM", "UTE"]  # fmt: skip
_RETURN_KEYS = ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "AccessionNumber",
                "ModalitiesInStudy", "NumberOfStudyRelatedInstances")  # fmt: skip
_FIRST_DAY = dt.date(2000, 1, 1)
_DAYS = 9000


# --------------------------------------------------------------------------- synthesis


def _surname(n: int) -> str:
    a, b, c = n % 20, (n // 20) % 20, (n // 400) % 20
    return _SYLLABLES[c] + _SYLLABLES[b] + _SYLLABLES[a]


def _patient(p: int) -> tuple[str, str]:
    name = f"{_surname((p * 7919) % 8000)}^{_GIVEN[p % len(_GIVEN)]}"
    return f"PID{p:08d}", name


def _study_date(s: int) -> str:
    return (_FIRST_DAY + dt.timedelta(days=(s * 104729) % _DAYS)).strftime("%Y%m%d")


def _rows(instances: int) -> dict[str, Iterator[tuple[Any, ...]]]:
    """Row generators per table; pks from 1, 10 instances per study, 2 studies per patient."""
    studies = instances // 10
    patients = max(1, studies // 2)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    digest = "ab" * 32

    def patient_rows() -> Iterator[tuple[Any, ...]]:
        for p in range(1, patients + 1):
            pid, name = _patient(p)
            yield (p, pid, name, name.upper(), "19700101", "O", now)

    def study_rows() -> Iterator[tuple[Any, ...]]:
        for s in range(1, studies + 1):
            yield (s, (s - 1) % patients + 1, f"{_UID}.1.{s}", _study_date(s), "120000", f"ACC{s:09d}",
                   str(s % 1000), "SYNTHETIC", "CT", 2, 10, now, now)  # fmt: skip

    def series_rows() -> Iterator[tuple[Any, ...]]:
        for se in range(1, studies * 2 + 1):
            yield (se, (se - 1) // 2 + 1, f"{_UID}.2.{se}", "CT", se % 2 + 1, 5, now)

    def instance_rows() -> Iterator[tuple[Any, ...]]:
        for i in range(1, studies * 10 + 1):
            yield (i, (i - 1) // 5 + 1, f"{_UID}.3.{i}", _CT, (i - 1) % 5 + 1, _EXPLICIT,
                   f"{i:032x}", 1000, digest, digest, "SYNTH", now, "{}")  # fmt: skip

    def change_rows() -> Iterator[tuple[Any, ...]]:
        for i in range(1, studies * 10 + 1):
            yield (i, "created", "IMAGE", f"{_UID}.3.{i}", now)

    return {
        "patient": patient_rows(),
        "study": study_rows(),
        "series": series_rows(),
        "instance": instance_rows(),
        "change": change_rows(),
    }


_COLUMNS = {
    "patient": "pk, patient_id, patient_name, patient_name_key, patient_birth_date, patient_sex, created_at",
    "study": "pk, patient_pk, study_instance_uid, study_date, study_time, accession_number, study_id, "
    "study_description, modalities_in_study, number_of_series, number_of_instances, created_at, updated_at",
    "series": "pk, study_pk, series_instance_uid, modality, series_number, number_of_instances, created_at",
    "instance": "pk, series_pk, sop_instance_uid, sop_class_uid, instance_number, transfer_syntax_uid, "
    "blob_key, size, sha256, content_sha256, source_ae_title, received_at, header_json",
    "change": "seq, change_type, level, uid, at",
}


def synthesise_postgresql(url: str, instances: int) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        for table, rows in _rows(instances).items():
            t0 = time.monotonic()
            with conn.cursor() as cur, cur.copy(f'COPY "{table}" ({_COLUMNS[table]}) FROM STDIN') as copy:
                for row in rows:
                    copy.write_row(row)
            pk = "seq" if table == "change" else "pk"
            # Explicit keys were loaded: move the sequence past them.
            sequence = f"pg_get_serial_sequence('\"{table}\"', '{pk}')"
            conn.execute(f'SELECT setval({sequence}, max({pk})) FROM "{table}"')
            conn.commit()
            log(f"  postgresql: {table} loaded in {time.monotonic() - t0:.1f} s")
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        # The load's dirty pages are written now, not during the timed ingest that follows.
        conn.execute("CHECKPOINT")


def synthesise_sqlite(path: Path, instances: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")  # a bulk load; the timed parts use dicomhub's settings
    for table, rows in _rows(instances).items():
        t0 = time.monotonic()
        cols = _COLUMNS[table]
        marks = ",".join("?" * len(cols.split(",")))
        sql = f'INSERT INTO "{table}" ({cols}) VALUES ({marks})'
        batch: list[tuple[Any, ...]] = []
        conn.execute("BEGIN")
        for row in rows:
            batch.append(tuple(v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v for v in row))
            if len(batch) >= 50_000:
                conn.executemany(sql, batch)
                batch.clear()
        conn.executemany(sql, batch)
        conn.execute("COMMIT")
        log(f"  sqlite: {table} loaded in {time.monotonic() - t0:.1f} s")
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


# --------------------------------------------------------------------------- queries


def _identifier(**conditions: str) -> Dataset:
    ds = Dataset()
    for key in _RETURN_KEYS:
        setattr(ds, key, "")
    for key, value in conditions.items():
        setattr(ds, key, value)
    return ds


def query_kinds(instances: int, rng: random.Random) -> dict[str, Callable[[], Dataset]]:
    studies = instances // 10
    patients = max(1, studies // 2)

    def by_patient_id() -> Dataset:
        return _identifier(PatientID=_patient(rng.randint(1, patients))[0])

    def by_name_prefix() -> Dataset:
        return _identifier(PatientName=_patient(rng.randint(1, patients))[1][:5] + "*")

    def by_date_range() -> Dataset:
        start = _FIRST_DAY + dt.timedelta(days=rng.randint(0, _DAYS - 8))
        end = start + dt.timedelta(days=6)
        return _identifier(StudyDate=f"{start:%Y%m%d}-{end:%Y%m%d}")

    def by_accession() -> Dataset:
        return _identifier(AccessionNumber=f"ACC{rng.randint(1, studies):09d}")

    return {
        "PatientID exact": by_patient_id,
        "PatientName prefix (ABCDE*)": by_name_prefix,
        "StudyDate range (one week)": by_date_range,
        "AccessionNumber exact": by_accession,
    }


def explain(engine: Any, run: Callable[[], object]) -> str:
    """The plan of the SELECTs that ``run`` sends (captured as sent, then EXPLAINed)."""
    from sqlalchemy import event

    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append((statement, params))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    plans = []
    postgresql = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        for statement, params in sent:
            prefix = "EXPLAIN (ANALYZE, BUFFERS) " if postgresql else "EXPLAIN QUERY PLAN "
            rows = conn.exec_driver_sql(prefix + statement, params).all()
            plans.append("\n".join(" | ".join(str(c) for c in r) for r in rows))
    return "\n---\n".join(plans)


def time_queries(
    settings: Settings, instances: int, repeat: int, plans: dict[str, str] | None = None
) -> dict[str, dict[str, float]]:
    archive = open_archive(settings)
    caller = Caller.cli()
    rng = random.Random(7)
    out: dict[str, dict[str, float]] = {}
    try:
        for name, make in query_kinds(instances, rng).items():
            if plans is not None:
                query = query_from_identifier(make(), "STUDY")
                plans[name] = explain(
                    archive.index.engine, lambda q=query: list(archive.search.search(q, caller))
                )
            times, matches = [], []
            for i in range(repeat + 3):
                query = query_from_identifier(make(), "STUDY")
                t0 = time.perf_counter()
                found = [m.to_dataset() for m in archive.search.search(query, caller)]
                elapsed = time.perf_counter() - t0
                if i >= 3:  # the first ones warm the caches
                    times.append(elapsed * 1000)
                    matches.append(len(found))
            times.sort()
            out[name] = {
                "median_ms": statistics.median(times),
                "p95_ms": times[int(len(times) * 0.95) - 1],
                "mean_matches": statistics.mean(matches),
            }
            log(f"  {name}: median {out[name]['median_ms']:.1f} ms, p95 {out[name]['p95_ms']:.1f} ms, "
                f"{out[name]['mean_matches']:.0f} matches")  # fmt: skip
    finally:
        archive.close()
    return out


# --------------------------------------------------------------------------- ingest


def small_instances(count: int, seed: int) -> list[bytes]:
    """``count`` small CT instances (16x16), 10 per series, encoded as Part 10 files."""
    out: list[bytes] = []
    with datagen.no_validation():
        for s in range(0, count, 10):
            study, series = datagen.uid(), datagen.uid()
            for n in range(min(10, count - s)):
                ds = datagen.make_dataset(
                    study_uid=study, series_uid=series, patient_id=f"ING{seed}-{s}",
                    rows=16, cols=16, seed=s + n, instance_number=n + 1,
                )  # fmt: skip
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                out.append(buf.getvalue())
    return out


def time_ingest(
    settings: Settings, payloads: list[bytes], threads: int = 4, counted: dict[str, int] | None = None
) -> float:
    """Instances per second stored through the ingest service from ``threads`` threads.

    ``counted`` receives the statements sent (each a round trip; BEGIN included) and the
    commits made during the run.
    """
    archive = open_archive(settings)
    caller = Caller.cli()
    if counted is not None:
        _count_statements(archive.index.engine, counted)
    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda data: archive.ingest.store_part10(data, caller), payloads))
        return len(payloads) / (time.perf_counter() - t0)
    finally:
        archive.close()


def _count_statements(engine: Any, counted: dict[str, int]) -> None:
    """Count the round trips and commits ``engine`` makes from now on into ``counted``.

    Statements include SAVEPOINT and RELEASE (they go through the cursor), COMMIT and
    ROLLBACK; on PostgreSQL also psycopg's own BEGIN and the test of a pooled connection
    that sat idle (index/engine.py).
    """
    from sqlalchemy import event

    counted.update(statements=0, commits=0)
    lock = threading.Lock()
    postgresql = engine.dialect.name == "postgresql"

    def add(commits: int = 0) -> None:
        with lock:
            counted["statements"] += 1
            counted["commits"] += commits

    event.listen(engine, "before_cursor_execute", lambda *_a: add())
    event.listen(engine, "commit", lambda *_a: add(1))
    event.listen(engine, "rollback", lambda *_a: add())

    def begin(conn: Any) -> None:
        # psycopg sends no BEGIN on an autocommit connection (index/engine.py read_statements)
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            add()

    if postgresql:  # SQLite's BEGIN goes through the cursor (index/engine.py)
        event.listen(engine, "begin", begin)
        tested = engine.dialect.do_ping

        def do_ping(dbapi_conn: Any) -> bool:
            add()
            return bool(tested(dbapi_conn))

        engine.dialect.do_ping = do_ping


# --------------------------------------------------------------------------- two nodes


def _write_files(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True)
    for s in range(0, count, 10):
        datagen.write_ct_series(folder / f"s{s}", min(10, count - s), rows=16, cols=16, patient_id=f"N{s}")
    return sorted(p for p in folder.rglob("*") if p.is_file())


def nodes_ingest(cluster: PostgresCluster, work: Path, node_count: int, files: list[Path]) -> float:
    """Instances per second received by ``node_count`` serve processes from 4 storescu processes."""
    work.mkdir(parents=True, exist_ok=True)
    url = cluster.create_database()
    blobs = work / f"blobs-{node_count}"
    command = find_dicomhub(os.environ.get("E2E_DICOMHUB_CMD"))
    env = {**dcmtk_env(), "DICOMHUB_DATABASE_URL": url, "DICOMHUB_STORAGE_URL": blobs.resolve().as_uri()}
    procs, ports = [], []
    for n in range(node_count):
        dimse, http = free_port(), free_port()
        data = work / f"node{node_count}-{n}"
        data.mkdir()
        # The machine's cores are shared out: one node gets a DIMSE worker per core, two
        # nodes get half as many each, so the comparison is of coordination, not of CPUs.
        workers = max(1, (os.cpu_count() or 1) // node_count)
        cmd = [*command, "serve", "--data-dir", str(data), "--aet", "BENCH", "--dimse-port", str(dimse),
               "--http-port", str(http), "--host", HOST, "--workers", str(workers)]  # fmt: skip
        log_fh = open(data / "serve.log", "wb")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, env=env), log_fh))
        ports.append((dimse, http))
    try:
        for _dimse, http in ports:
            deadline = time.monotonic() + 90
            while not http_ok(f"http://{HOST}:{http}/healthz"):
                if time.monotonic() > deadline:
                    raise RuntimeError("serve did not start")
                time.sleep(0.2)
        parts = 4
        lists = []
        for k in range(parts):
            lst = work / f"files-{node_count}-{k}.txt"
            lst.write_text("\n".join(str(p) for p in files[k::parts]))
            lists.append(lst)
        t0 = time.perf_counter()
        scus = []
        for k, lst in enumerate(lists):
            dimse, _http = ports[k % node_count]
            args = ["storescu", "-aec", "BENCH", HOST, str(dimse), *lst.read_text().split("\n")]
            scus.append(
                subprocess.Popen(args, env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            )
        for scu in scus:
            _out, err = scu.communicate(timeout=1800)
            if scu.returncode != 0:
                raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-2000:]}")
        return len(files) / (time.perf_counter() - t0)
    finally:
        for proc, fh in procs:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            fh.close()


# --------------------------------------------------------------------------- main


def run_backend(
    name: str, work: Path, args: argparse.Namespace, cluster: PostgresCluster | None
) -> dict[str, Any]:
    big = _settings(name, work / f"{name}-big", cluster)
    open_archive(big).close()  # migrate
    log(f"{name}: synthesising {args.instances} instances")
    t0 = time.monotonic()
    if name == "postgresql":
        synthesise_postgresql(big.database_url, args.instances)
    else:
        synthesise_sqlite(big.data_dir / "index.sqlite", args.instances)
    load_s = time.monotonic() - t0
    log(f"{name}: queries at {args.instances} instances")
    plans: dict[str, str] = {}
    queries = time_queries(big, args.instances, args.repeat, plans)
    for kind, plan in plans.items():
        log(f"{name} plan, {kind}:\n{plan}")
    # Empty and big index runs alternate, each into a fresh empty index or with new
    # instances into the big one, so that drift in the machine's load hits both alike.
    empties, bigs = [], []
    for r in range(args.ingest_repeat):
        empty = _settings(name, work / f"{name}-empty{r}", cluster)
        empties.append(time_ingest(empty, small_instances(args.ingest, seed=2 * r + 1)))
        bigs.append(time_ingest(big, small_instances(args.ingest, seed=2 * r + 2)))
        log(f"{name}: ingest run {r + 1}: {empties[-1]:.0f}/s empty, {bigs[-1]:.0f}/s big")
    rate_empty, rate_big = statistics.median(empties), statistics.median(bigs)
    result = {
        "instances": args.instances,
        "load_seconds": load_s,
        "queries": queries,
        "plans": plans,
        "ingest_empty_runs": empties,
        "ingest_big_runs": bigs,
        "ingest_empty_per_s": rate_empty,
        "ingest_big_per_s": rate_big,
        "ingest_ratio": rate_big / rate_empty,
    }
    log(f"{name}: ingest {rate_empty:.0f}/s empty, {rate_big:.0f}/s at {args.instances} "
        f"({rate_big / rate_empty:.0%})")  # fmt: skip
    return result


def ingest_only(
    work: Path, args: argparse.Namespace, names: list[str], cluster: PostgresCluster | None
) -> dict[str, Any]:
    """Ingest into fresh empty indexes only, the back ends alternating run by run."""
    runs: dict[str, list[float]] = {name: [] for name in names}
    counts: dict[str, dict[str, float]] = {}
    for r in range(args.ingest_repeat):
        for name in names:
            settings = _settings(name, work / f"{name}-only{r}", cluster)
            payloads = small_instances(args.ingest, seed=2 * r + 1)
            counted: dict[str, int] = {}
            runs[name].append(time_ingest(settings, payloads, counted=counted))
            counts[name] = {k: v / len(payloads) for k, v in counted.items()}
            log(f"{name}: ingest run {r + 1}: {runs[name][-1]:.0f}/s "
                f"(per instance: {counts[name]['statements']:.2f} statements, "
                f"{counts[name]['commits']:.3f} commits)")  # fmt: skip
    out: dict[str, Any] = {}
    for name in names:
        out[name] = {"ingest_empty_runs": runs[name], "ingest_empty_per_s": statistics.median(runs[name]),
                     "per_instance": counts[name]}  # fmt: skip
        log(f"{name}: ingest median {out[name]['ingest_empty_per_s']:.0f}/s {runs[name]}")
    if len(names) == 2:
        ratio = out["postgresql"]["ingest_empty_per_s"] / out["sqlite"]["ingest_empty_per_s"]
        out["postgresql_to_sqlite"] = ratio
        log(f"PostgreSQL / SQLite ingest: {ratio:.2f}x")
    return out


def _settings(name: str, data: Path, cluster: PostgresCluster | None) -> Settings:
    data.mkdir(parents=True)
    url = cluster.create_database() if name == "postgresql" and cluster is not None else ""
    return Settings(data_dir=data, database_url=url)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--instances", type=int, default=1_000_000)
    p.add_argument("--ingest", type=int, default=2000, help="instances per timed ingest (default 2000)")
    p.add_argument("--repeat", type=int, default=30, help="timed queries per kind (default 30)")
    p.add_argument("--ingest-repeat", type=int, default=3, help="timed ingests of each kind (default 3)")
    p.add_argument("--node-files", type=int, default=2000, help="instances per node run (default 2000)")
    p.add_argument("--node-repeat", type=int, default=3, help="one-node and two-node runs (default 3)")
    p.add_argument("--only", default="sqlite,postgresql,nodes")
    p.add_argument(
        "--ingest-only",
        action="store_true",
        help="only the ingest part, into fresh empty indexes: SQLite and PostgreSQL runs alternate "
        "(--ingest-repeat each), with statements and commits per instance counted",
    )
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="dicomhub-index-bench-"))
    results: dict[str, Any] = {}
    # fsync stays on; memory and planner costs as on a small production server with an SSD.
    tuning = ["shared_buffers=1GB", "effective_cache_size=4GB", "random_page_cost=1.1", "max_wal_size=4GB"]
    cluster = None
    if args.ingest_only:
        only -= {"nodes"}
    if only & {"postgresql", "nodes"}:
        cluster = PostgresCluster(durable=True, settings=tuning).start()
    try:
        if args.ingest_only:
            results = ingest_only(work, args, [n for n in ("sqlite", "postgresql") if n in only], cluster)
        for name in ("sqlite", "postgresql"):
            if name in only and not args.ingest_only:
                results[name] = run_backend(name, work, args, cluster)
        if "nodes" in only and cluster is not None:
            files = _write_files(work / "node-files", args.node_files)
            ones, twos = [], []
            for r in range(args.node_repeat):
                ones.append(nodes_ingest(cluster, work / f"r{r}", 1, files))
                twos.append(nodes_ingest(cluster, work / f"r{r}", 2, files))
                log(f"run {r + 1}: one node {ones[-1]:.0f} instances/s, two nodes {twos[-1]:.0f}")
            one, two = statistics.median(ones), statistics.median(twos)
            log(f"median: one node {one:.0f} instances/s, two nodes {two:.0f} ({two / one:.2f}x)")
            results["nodes"] = {
                "one_node_runs": ones, "two_nodes_runs": twos,
                "one_node_per_s": one, "two_nodes_per_s": two, "ratio": two / one,
            }  # fmt: skip
        print(json.dumps(results, indent=2), flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        if cluster is not None:
            cluster.stop()
        if not args.keep:
            log(f"removing {work}")
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
