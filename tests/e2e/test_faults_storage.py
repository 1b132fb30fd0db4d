"""The archive keeps working when its disk, its index database or its object store fails.

Each test starts ``dicomhub serve`` as a process, breaks one back end under
it, drives it with real clients (DCMTK storescu/findscu/echoscu, httpx for
STOW-RS and QIDO-RS) and checks the same promises:

- a store is acknowledged only when its blob and its index row are durable:
  every acknowledged instance is in the index afterwards, with its blob
  (``lost`` is 0);
- a store that cannot be made durable gets a clear failure (C-STORE 0xA7xx,
  STOW-RS 507/503 with a reason), and leaves nothing half-written behind (no
  partial blob, no temporary or spool file, no index row without its blob);
- the server stays up, and serves again by itself once the fault is gone (no
  restart), within the measured time.

The figures each test measures are printed (run with ``-s``) and quoted in
docs/reliability.md. Back ends: the disk and SQLite faults run on the
sqlite-file back end, the PostgreSQL and object store faults on postgres-s3
(DICOMHUB_TEST_BACKEND); each test builds the faulty piece itself (a small
tmpfs, a dedicated PostgreSQL cluster, a fault-injecting proxy in front of
the shared S3 server).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import io
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datagen
import httpx
import pytest
from pydicom.dataset import Dataset

from tests.backends import BACKEND, POSTGRES_S3, SQLITE_FILE, backend_env
from tests.pgcluster import PostgresCluster

from .helpers import (
    HOST,
    DicomhubServer,
    ServerPool,
    assert_alive,
    pyn_store,
    run_dcmtk,
    store,
    wait_until,
)

pytestmark = pytest.mark.e2e

on_sqlite_file = pytest.mark.skipif(
    BACKEND != SQLITE_FILE, reason="a local disk and SQLite fault: run on the sqlite-file back end"
)
on_postgres_s3 = pytest.mark.skipif(
    BACKEND != POSTGRES_S3, reason="a PostgreSQL / S3 fault: run on the postgres-s3 back end"
)

OUT_OF_RESOURCES = range(0xA700, 0xA800)
BOUNDARY = "dicomhub-faults-" + uuid.uuid4().hex
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
RECOVERY_DEADLINE = 60.0


# --------------------------------------------------------------------------- figures


@dataclass
class Tally:
    """What a fault test did and saw: the figures docs/reliability.md quotes."""

    scenario: str
    attempted: int = 0
    acknowledged: list[str] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    recovery_seconds: float | None = None

    def store_results(self, statuses: dict[str, int], sent: Sequence[str]) -> None:
        """Count a storescu run: every UID sent, its status (no response = a failure too)."""
        self.attempted += len(sent)
        for uid in sent:
            status = statuses.get(uid)
            if status == 0:
                self.acknowledged.append(uid)
            else:
                self.failed["no response" if status is None else f"0x{status:04X}"] += 1

    def http(self, status: int, count: int, acknowledged: Sequence[str] = ()) -> None:
        self.attempted += count
        self.acknowledged += acknowledged
        if len(acknowledged) < count:
            self.failed[f"HTTP {status}"] += count - len(acknowledged)

    def report(self) -> str:
        failed = ", ".join(f"{n} x {k}" for k, n in sorted(self.failed.items())) or "none"
        recovery = "-" if self.recovery_seconds is None else f"{self.recovery_seconds:.1f} s"
        line = (
            f"[faults] {self.scenario}: attempted {self.attempted}, acknowledged "
            f"{len(self.acknowledged)}, lost {self.lost}, failed {failed}, recovered in {recovery}"
        )
        print(line)
        return line


# --------------------------------------------------------------------------- clients


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


def stow(server: DicomhubServer, datasets: Sequence[Dataset], timeout: float = 120.0) -> httpx.Response:
    body = b""
    for ds in datasets:
        body += f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + encode(ds)
    body += f"\r\n--{BOUNDARY}--\r\n".encode()
    return httpx.post(
        f"{server.base_url}/dicomweb/studies",
        content=body,
        headers={"Content-Type": MULTIPART, "Accept": "application/dicom+json"},
        timeout=timeout,
    )


def stow_stored(response: httpx.Response) -> list[str]:
    """SOP Instance UIDs of the Referenced SOP Sequence of a STOW-RS response."""
    if not response.content or "json" not in response.headers.get("content-type", ""):
        return []
    body = response.json()
    if not isinstance(body, dict):
        return []
    return [
        item["00081155"]["Value"][0]
        for item in body.get("00081199", {}).get("Value", [])
        if item.get("00081155", {}).get("Value")
    ]


def stow_failure_reasons(response: httpx.Response) -> list[int]:
    body = response.json()
    failed = body.get("00081198", {}).get("Value", [])
    return [item["00081197"]["Value"][0] for item in failed if "00081197" in item]


def storescu(server: DicomhubServer, files: Sequence[Path], calling: str = "FAULTSCU") -> dict[str, int]:
    """storescu the files; (SOP Instance UID -> status) of the responses it got."""
    return store(server, *files, calling=calling, timeout=180).statuses


def series(directory: Path, n: int, **kwargs: object) -> tuple[list[Dataset], list[Path], list[str]]:
    datasets = datagen.write_ct_series(directory, n, rows=32, cols=32, **kwargs)  # type: ignore[arg-type]
    return datasets, [Path(d.filename) for d in datasets], [str(d.SOPInstanceUID) for d in datasets]


# --------------------------------------------------------------------------- consistency


@dataclass
class ArchiveView:
    """The index and blobs of a server's archive, read behind its back."""

    index_url: str
    blob_size: Callable[[str], int | None]  # None: no such blob
    blob_dir: Path | None = None  # a file store: its folder, to look for stray files
    spool_dir: Path | None = None

    @classmethod
    def of(cls, srv: DicomhubServer) -> ArchiveView:
        env = {**backend_env(srv.data_dir), **srv.env}
        url = env.get("DICOMHUB_DATABASE_URL") or f"sqlite:///{srv.data_dir / 'index.sqlite'}"
        if env.get("DICOMHUB_STORAGE_URL", "").startswith("s3://"):
            return cls(url, s3_blob_size(env), None, srv.data_dir / "tmp")
        blobs = srv.data_dir / "blobs"

        def size(key: str) -> int | None:
            path = blobs / key[:2] / key[2] / key
            return path.stat().st_size if path.is_file() else None

        return cls(url, size, blobs, srv.data_dir / "tmp")

    def rows(self, sql: str, **params: object) -> list[tuple[object, ...]]:
        from sqlalchemy import text

        from dicomhub.index.engine import connect_engine

        engine = connect_engine(self.index_url, pool_size=1, max_overflow=0)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(text(sql), params).all()]
        finally:
            engine.dispose()

    def indexed(self, uids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """SOP Instance UID -> (blob key, size) of those of ``uids`` the index holds."""
        if not uids:
            return {}
        marks = ", ".join(f":u{i}" for i in range(len(uids)))
        rows = self.rows(
            f"SELECT sop_instance_uid, blob_key, size FROM instance WHERE sop_instance_uid IN ({marks})",
            **{f"u{i}": u for i, u in enumerate(uids)},
        )
        return {str(r[0]): (str(r[1]), int(r[2])) for r in rows}  # type: ignore[call-overload]

    def lost(self, acknowledged: Sequence[str]) -> int:
        """Acknowledged instances that are not in the index, or whose blob is not whole (asserted 0)."""
        rows = self.indexed(acknowledged)
        missing = [u for u in acknowledged if u not in rows]
        broken = [u for u, (key, size) in rows.items() if self.blob_size(key) != size]
        assert not missing and not broken, f"acknowledged but lost: {missing[:5]}, blob broken: {broken[:5]}"
        return len(missing) + len(broken)

    def assert_clean(self) -> None:
        """Every indexed blob is whole; no non-empty blob file without a row (an empty one is
        an unused pooled key); no temporary or spool file left."""
        rows = {
            str(k): int(s)  # type: ignore[call-overload]
            for k, s in self.rows("SELECT blob_key, size FROM instance")
            + self.rows("SELECT blob_key, size FROM conflict")
        }
        without_blob = [k for k, size in rows.items() if self.blob_size(k) != size]
        assert not without_blob, f"index rows whose blob is missing or partial: {without_blob[:5]}"
        if self.blob_dir is not None:
            on_disk = {p.name: p.stat().st_size for p in self.blob_dir.rglob("*") if p.is_file()}
            temporary = [name for name in on_disk if not name.isalnum()]
            assert not temporary, f"temporary files left among the blobs: {temporary[:5]}"
            without_row = [k for k, size in on_disk.items() if size and k not in rows]
            assert not without_row, f"blob files no row names (half-written stores): {without_row[:5]}"
        if self.spool_dir is not None and self.spool_dir.is_dir():
            leftovers = [p.name for p in self.spool_dir.rglob("*") if p.is_file()]
            assert not leftovers, f"spool files left behind: {leftovers}"


def s3_blob_size(env: dict[str, str]) -> Callable[[str], int | None]:
    """Blob key -> size of the object in the archive's bucket (None when absent), asked of
    the S3 server directly (not through any fault proxy)."""
    import boto3

    from tests import s3backend

    bucket, _, prefix = env["DICOMHUB_STORAGE_URL"][len("s3://") :].partition("/")
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    direct = s3backend.s3_env()
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=direct["AWS_ENDPOINT_URL"],
        region_name=direct["AWS_REGION"],
        aws_access_key_id=direct["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=direct["AWS_SECRET_ACCESS_KEY"],
    )

    def size(key: str) -> int | None:
        try:
            return int(client.head_object(Bucket=bucket, Key=prefix + key)["ContentLength"])
        except Exception:  # noqa: BLE001 - 404 and friends: absent
            return None

    return size


def store_until_recovered(
    srv: DicomhubServer, tally: Tally, files: Sequence[Path], uids: Sequence[str], since: float
) -> None:
    """Send ``files`` again and again until every one is acknowledged; record the time."""
    deadline = since + RECOVERY_DEADLINE
    while True:
        statuses = storescu(srv, files)
        tally.store_results(statuses, uids)
        if all(statuses.get(u) == 0 for u in uids):
            break
        assert time.monotonic() < deadline, f"stores still fail after the fault ended: {statuses}"
        time.sleep(0.5)
    tally.recovery_seconds = time.monotonic() - since


def qido_studies(server: DicomhubServer, timeout: float = 30.0) -> httpx.Response:
    return httpx.get(
        f"{server.base_url}/dicomweb/studies", headers={"Accept": "application/dicom+json"}, timeout=timeout
    )


# --------------------------------------------------------------------------- 1. disk full


@contextlib.contextmanager
def small_filesystem(where: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` MiB mounted at ``where`` (root only), unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield where
    finally:
        # Lazy: a server that is still being reaped must not leave the mount behind.
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(filesystem: Path) -> Path:
    """Fill ``filesystem`` to the last block with a ballast file; return its path."""
    ballast = filesystem / "ballast"
    with open(ballast, "wb", buffering=0) as fh:
        for block in (1 << 20, 4096, 512):
            chunk = b"\0" * block
            while True:
                try:
                    fh.write(chunk)
                except OSError:
                    break
    assert os.statvfs(filesystem).f_bavail == 0, "the ballast did not fill the file system"
    return ballast


@on_sqlite_file
def test_disk_full_refuses_stores_cleanly_and_recovers(servers: ServerPool, tmp_path: Path) -> None:
    """A full data dir: C-STORE 0xA7xx, STOW-RS 507, nothing half-written, back when space is."""
    tally = Tally("disk full (blobs, spool and SQLite index on one full tmpfs)")
    with small_filesystem(tmp_path / "small", 48) as mnt:
        srv = servers.start(data_dir=mnt / "data")
        archive = ArchiveView.of(srv)
        _, before_files, before = series(tmp_path / "before", 5)
        tally.store_results(storescu(srv, before_files), before)
        assert len(tally.acknowledged) == 5, tally.failed

        ballast = fill(mnt)
        small, small_files, small_uids = series(tmp_path / "full", 10)
        statuses = storescu(srv, small_files)
        tally.store_results(statuses, small_uids)
        assert set(statuses) == set(small_uids), "every C-STORE must be answered"
        assert all(s in OUT_OF_RESOURCES for s in statuses.values()), statuses

        # A data set above the spool threshold (16 MiB) is spooled while it arrives.
        large = datagen.write_instance(tmp_path / "large.dcm", rows=2900, cols=2900)
        statuses = storescu(srv, [Path(large.filename)])
        tally.store_results(statuses, [str(large.SOPInstanceUID)])
        assert statuses.get(str(large.SOPInstanceUID)) in OUT_OF_RESOURCES, statuses

        web, _, web_uids = series(tmp_path / "web", 3)
        response = stow(srv, web)
        tally.http(response.status_code, 3, stow_stored(response))
        assert response.status_code == 507, (response.status_code, response.text[:500])
        assert set(stow_failure_reasons(response)) <= set(OUT_OF_RESOURCES)
        assert "space" in response.headers.get("warning", "").lower(), response.headers

        assert_alive(srv)
        assert srv.healthz() == 200
        assert not archive.indexed([*small_uids, *web_uids, str(large.SOPInstanceUID)])
        archive.assert_clean()

        ballast.unlink()
        freed = time.monotonic()
        retry = [*small_files, Path(large.filename)]
        uids = [*small_uids, str(large.SOPInstanceUID)]
        store_until_recovered(srv, tally, retry, uids, freed)
        response = stow(srv, web)
        assert response.status_code == 200, response.text[:500]
        tally.http(200, 3, stow_stored(response))

        tally.lost = archive.lost(tally.acknowledged)
        archive.assert_clean()
        srv.stop()
    tally.report()



@on_sqlite_file
def test_sqlite_index_on_a_full_disk_acknowledges_only_commits(servers: ServerPool, tmp_path: Path) -> None:
    """The SQLite index alone on a full file system (blobs elsewhere): the blob is written,
    the commit fails, and the store gets 0xA7xx, never Success; no row, no blob stays."""
    tally = Tally("disk full under the SQLite index only (blobs on another disk)")
    with small_filesystem(tmp_path / "indexfs", 8) as mnt:
        srv = servers.start(env={"DICOMHUB_DATABASE_URL": f"sqlite:///{mnt / 'index.sqlite'}"})
        archive = ArchiveView.of(srv)
        ballast = fill(mnt)
        files_of: dict[str, Path] = {}
        failures: list[str] = []
        statuses: dict[str, int] = {}
        # The WAL has room left from start-up: commits succeed until it must grow.
        for batch in range(60):
            _, files, uids = series(tmp_path / f"b{batch}", 10)
            files_of.update(zip(uids, files, strict=True))
            statuses = storescu(srv, files)
            tally.store_results(statuses, uids)
            failures += [u for u in uids if statuses.get(u) != 0]
            if failures:
                break
        assert failures, "the index never ran out of space"
        assert {statuses.get(u) for u in failures} <= set(OUT_OF_RESOURCES), statuses
        assert_alive(srv)
        assert not archive.indexed(failures), "a failed commit left rows behind"
        tally.lost = archive.lost(tally.acknowledged)
        archive.assert_clean()

        ballast.unlink()
        store_until_recovered(srv, tally, [files_of[u] for u in failures], failures, time.monotonic())
        tally.lost = archive.lost(tally.acknowledged)
        archive.assert_clean()
        srv.stop()
    tally.report()


# --------------------------------------------------------------------------- 2. index unavailable


@contextlib.contextmanager
def sqlite_write_lock(index_file: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``BEGIN EXCLUSIVE`` on the SQLite index until the block ends."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            f"db = sqlite3.connect({str(index_file)!r}, isolation_level=None, timeout=30)\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n"
            "db.execute('COMMIT')\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        if holder.poll() is None:
            assert holder.stdin is not None
            holder.stdin.write("\n")
            holder.stdin.close()
            holder.wait(30)


@on_sqlite_file
def test_sqlite_locked_by_another_process_fails_stores_then_recovers(
    servers: ServerPool, tmp_path: Path
) -> None:
    """A writer lock held past the busy timeout: C-STORE 0xA701, STOW-RS 503, queries still
    answer (WAL readers), and stores succeed again as soon as the lock is released."""
    tally = Tally("SQLite index locked by another process (busy timeout 2 s)")
    srv = servers.start(env={"DICOMHUB_DATABASE_BUSY_TIMEOUT": "2"})
    archive = ArchiveView.of(srv)
    _, files, uids = series(tmp_path / "before", 3)
    tally.store_results(storescu(srv, files), uids)
    assert len(tally.acknowledged) == 3
    blocked, blocked_files, blocked_uids = series(tmp_path / "blocked", 4)
    with sqlite_write_lock(srv.data_dir / "index.sqlite"):
        statuses = storescu(srv, blocked_files)
        tally.store_results(statuses, blocked_uids)
        assert set(statuses) == set(blocked_uids), "every C-STORE must be answered"
        assert set(statuses.values()) == {0xA701}, statuses
        response = stow(srv, blocked[:2])
        tally.http(response.status_code, 2, stow_stored(response))
        assert response.status_code == 503, (response.status_code, response.text[:300])
        assert "index" in response.headers.get("warning", ""), response.headers
        qido = qido_studies(srv)
        assert qido.status_code == 200, qido.text[:300]
        assert_alive(srv)
        released = time.monotonic()
    assert not archive.indexed(blocked_uids)
    archive.assert_clean()
    store_until_recovered(srv, tally, blocked_files, blocked_uids, released)
    tally.lost = archive.lost(tally.acknowledged)
    archive.assert_clean()
    tally.report()


def findscu_status(server: DicomhubServer) -> int | None:
    """The status of the final C-FIND response of a study-level query (None: no answer)."""
    rc, out = run_dcmtk(
        "findscu", "-S", "-d", "-aet", "FAULTFIND", "-aec", server.aet,
        "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", HOST, str(server.dimse_port),
        timeout=60,
    )  # fmt: skip
    statuses = re.findall(r"Message Type\s*:\s*C-FIND RSP.*?DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", out, re.S)
    final = [int(s, 16) for s in statuses if int(s, 16) not in (0xFF00, 0xFF01)]
    if not final:
        print(f"[faults] findscu (rc {rc}) without a final response:\n{out[-3000:]}")
    return final[-1] if final else None


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of this test alone, so that it can be stopped without harm to others.

    Durable (fsync and synchronous commit on, unlike the shared test cluster): an
    immediate stop loses commits that were only in memory with ``synchronous_commit=off``,
    which would be a fault of the test set-up, not of dicomhub."""
    cluster = PostgresCluster(durable=True).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@on_postgres_s3
def test_postgresql_outage_during_ingest_and_queries(
    servers: ServerPool, tmp_path: Path, own_postgres: PostgresCluster
) -> None:
    """PostgreSQL stopped under load: stores in flight fail (0xA701), nothing acknowledged is
    lost, queries fail with C-FIND 0xA700 / QIDO-RS 503, and dicomhub serves again by itself
    once PostgreSQL is back (the pool tests idle connections and renews itself on a disconnect)."""
    tally = Tally("PostgreSQL stopped during ingest (-m immediate) and queries (-m fast)")
    srv = servers.start(env={"DICOMHUB_DATABASE_URL": own_postgres.create_database()})
    archive = ArchiveView.of(srv)
    assert_alive(srv, grace=60)  # the DIMSE workers are up (slow on a loaded machine)
    _, files, uids = series(tmp_path / "load", 80)
    results: dict[str, int | None] = {}
    progress = threading.Event()

    def on_result(uid: str | None, status: int | None) -> None:
        if uid is not None:
            results[uid] = status
        if progress.is_set():
            time.sleep(0.05)  # a modality's pace: the outage surely comes mid-series
        elif sum(1 for s in results.values() if s == 0) >= 15:
            progress.set()

    sender = threading.Thread(
        target=lambda: pyn_store(srv, files, calling="LOADSCU", on_result=on_result), daemon=True
    )
    sender.start()
    assert progress.wait(120), f"the load did not get going: {results}"
    own_postgres.stop_server("immediate")
    down = time.monotonic()
    sender.join(300)
    assert not sender.is_alive(), "the sender did not finish"
    tally.store_results({u: s for u, s in results.items() if s is not None}, list(results))
    refused = [u for u, s in results.items() if s != 0]
    assert refused, "PostgreSQL went down, yet every store succeeded"
    assert {results[u] for u in refused} <= {0xA701}, {results[u] for u in refused}

    # While it is down: queries fail clearly, the server is up and says so.
    assert findscu_status(srv) in OUT_OF_RESOURCES
    assert qido_studies(srv).status_code == 503
    health = httpx.get(f"{srv.base_url}/healthz", timeout=10)
    assert health.status_code == 503 and health.json()["index"] is False, health.text
    assert_alive(srv)

    own_postgres.start_server()
    back = time.monotonic()
    missing = [u for u in uids if u not in results or results[u] != 0]
    by_uid = dict(zip(uids, files, strict=True))
    store_until_recovered(srv, tally, [by_uid[u] for u in missing], missing, back)
    assert findscu_status(srv) == 0
    assert qido_studies(srv).status_code == 200
    print(f"[faults] PostgreSQL was down {back - down:.1f} s")

    # A second outage, during queries only (a clean shutdown this time).
    own_postgres.stop_server("fast")
    assert findscu_status(srv) in OUT_OF_RESOURCES
    assert qido_studies(srv).status_code == 503
    own_postgres.start_server()
    back = time.monotonic()
    wait_until(lambda: qido_studies(srv).status_code == 200, timeout=RECOVERY_DEADLINE, what="QIDO-RS")
    assert findscu_status(srv) == 0
    print(f"[faults] queries answer again {time.monotonic() - back:.1f} s after PostgreSQL restarted")

    tally.lost = archive.lost(tally.acknowledged)
    assert len(archive.indexed(uids)) == len(uids)
    archive.assert_clean()
    tally.report()


# --------------------------------------------------------------------------- 3. object store faults


# Set by the proxy itself (the body is re-sent whole, with its own length).
_HOP_HEADERS = frozenset({"transfer-encoding", "connection", "content-length", "date", "server"})


class FaultProxy:
    """An HTTP proxy in front of the S3 server whose ``mode`` injects faults.

    ``pass`` forwards; ``flaky`` answers the first try of every request 503
    SlowDown (its retry gets through); ``error`` answers every request 500 InternalError;
    ``stall`` reads the request and answers nothing until the mode changes
    (the client's read timeout fires); ``slow`` forwards after a delay.
    """

    ERRORS = {
        "flaky": (503, "SlowDown", "Please reduce your request rate."),
        "error": (500, "InternalError", "We encountered an internal error. Please try again."),
    }

    def __init__(self, upstream_port: int, delay: float = 1.0) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.mode = "pass"
        self.requests = 0
        self.seen: set[tuple[str, str]] = set()  # (method, path) tried before, for flaky
        self.injected: Counter[str] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests += 1
                    mode, request = proxy.mode, (self.command, self.path)
                    retried = request in proxy.seen
                    proxy.seen.add(request)
                if mode == "flaky" and not retried or mode == "error":
                    proxy._count(mode)
                    self._error(*proxy.ERRORS[mode])
                    return
                if mode == "stall":
                    proxy._count(mode)
                    deadline = time.monotonic() + 60
                    while proxy.mode == "stall" and time.monotonic() < deadline:
                        time.sleep(0.05)
                    self.close_connection = True  # the client gave up on this one long ago
                    return
                if mode == "slow":
                    proxy._count(mode)
                    time.sleep(proxy.delay)
                self._forward(body)

            def _error(self, status: int, code: str, message: str) -> None:
                payload = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                    f"<Message>{message}</Message><RequestId>fault</RequestId></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(HOST, proxy.upstream_port, timeout=60)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in ("expect", "connection")
                    }
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    upstream = conn.getresponse()
                    payload = upstream.read()
                finally:
                    conn.close()
                self.send_response(upstream.status)
                for key, value in upstream.getheaders():
                    if key.lower() not in _HOP_HEADERS:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _count(self, mode: str) -> None:
        with self._lock:
            self.injected[mode] += 1

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.mode = "pass"
        self.server.shutdown()
        self.server.server_close()


@on_postgres_s3
def test_object_store_faults_retry_fail_cleanly_and_recover(servers: ServerPool, tmp_path: Path) -> None:
    """S3 behind a fault proxy: 503 SlowDown on every other request is absorbed by retries;
    a 500 outage and a silent (stalled) server fail stores with 0xA700 / STOW-RS 503 after
    the configured attempts; slow answers only slow stores down; nothing acknowledged is
    lost, no row lacks its blob, and stores succeed again as soon as the proxy heals."""
    from tests import s3backend

    upstream = s3backend.start_s3_server()
    storage_url, _ = s3backend.fresh_storage("faults")
    with FaultProxy(upstream.port) as proxy:
        srv = servers.start(
            env={
                "DICOMHUB_STORAGE_URL": storage_url,
                "AWS_ENDPOINT_URL": proxy.url,
                "DICOMHUB_S3_READ_TIMEOUT": "2",
                "DICOMHUB_S3_MAX_ATTEMPTS": "3",
            }
        )
        archive = ArchiveView.of(srv)
        assert_alive(srv, grace=60)
        files_of: dict[str, Path] = {}

        def phase(name: str, n: int) -> tuple[dict[str, int], list[str], float]:
            _, files, uids = series(tmp_path / name, n)
            files_of.update(zip(uids, files, strict=True))
            started = time.monotonic()
            statuses = storescu(srv, files)
            tally = tallies[name]
            tally.store_results(statuses, uids)
            return statuses, uids, time.monotonic() - started

        tallies = {name: Tally(f"object store: {name}") for name in ("flaky", "error", "stall", "slow")}

        proxy.mode = "flaky"
        statuses, uids, took = phase("flaky", 10)
        assert all(statuses.get(u) == 0 for u in uids), statuses
        assert proxy.injected["flaky"] >= 10, proxy.injected  # every PUT failed once
        absorbed = proxy.injected["flaky"]
        print(f"[faults] flaky S3: {absorbed} x 503 SlowDown absorbed by retries, {took:.1f} s")

        proxy.mode = "error"
        statuses, uids, took = phase("error", 4)
        assert {statuses.get(u) for u in uids} <= set(OUT_OF_RESOURCES), statuses
        web, _, web_uids = series(tmp_path / "web", 2)
        response = stow(srv, web)
        tallies["error"].http(response.status_code, 2, stow_stored(response))
        assert response.status_code == 503, (response.status_code, response.text[:300])
        assert "object store" in response.headers.get("warning", ""), response.headers
        assert qido_studies(srv).status_code == 200  # the index is fine: queries go on
        assert_alive(srv)
        assert not archive.indexed([*uids, *web_uids])
        # Each PUT was tried s3_max_attempts times before the store was refused.
        assert proxy.injected["error"] >= 3 * len(uids), proxy.injected
        print(
            f"[faults] S3 500 outage: {len(uids)} C-STOREs refused in {took:.1f} s, "
            f"{proxy.injected['error']} requests answered 500"
        )

        proxy.mode = "stall"
        statuses, uids, took = phase("stall", 2)
        assert {statuses.get(u) for u in uids} <= set(OUT_OF_RESOURCES), statuses
        assert not archive.indexed(uids)
        print(f"[faults] S3 silent: {len(uids)} C-STOREs refused in {took:.1f} s (read timeout 2 s x 3)")

        proxy.mode = "slow"
        statuses, uids, took = phase("slow", 3)
        assert all(statuses.get(u) == 0 for u in uids), statuses
        print(f"[faults] slow S3 ({proxy.delay} s per request): 3 C-STOREs in {took:.1f} s")

        proxy.mode = "pass"
        healed = time.monotonic()
        failed = [u for u in files_of if not any(u in t.acknowledged for t in tallies.values())]
        recovery = Tally("object store: recovery after the proxy healed")
        store_until_recovered(srv, recovery, [files_of[u] for u in failed], failed, healed)
        response = stow(srv, web)
        assert response.status_code == 200, response.text[:300]

        acknowledged = [u for t in (*tallies.values(), recovery) for u in t.acknowledged]
        recovery.lost = archive.lost(acknowledged)
        archive.assert_clean()
        srv.stop()
    for tally in (*tallies.values(), recovery):
        tally.report()
