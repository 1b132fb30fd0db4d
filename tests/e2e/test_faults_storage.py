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
import io
import os
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datagen
import httpx
import pytest
from pydicom.dataset import Dataset

from tests.backends import BACKEND, POSTGRES_S3, SQLITE_FILE

from .helpers import (
    DicomhubServer,
    ServerPool,
    assert_alive,
    index_rows,
    store,
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


def indexed(data_dir: Path, uids: Sequence[str]) -> dict[str, tuple[str, int]]:
    """SOP Instance UID -> (blob key, size) of the given UIDs that the index holds."""
    if not uids:
        return {}
    marks = ", ".join(f":u{i}" for i in range(len(uids)))
    rows = index_rows(
        data_dir,
        f"SELECT sop_instance_uid, blob_key, size FROM instance WHERE sop_instance_uid IN ({marks})",
        **{f"u{i}": u for i, u in enumerate(uids)},
    )
    return {str(r[0]): (str(r[1]), int(r[2])) for r in rows}  # type: ignore[call-overload]


def lost(data_dir: Path, acknowledged: Sequence[str], blob_size: object) -> int:
    """Acknowledged instances that are not in the index, or whose blob is not whole."""
    rows = indexed(data_dir, acknowledged)
    missing = [u for u in acknowledged if u not in rows]
    broken = [u for u, (key, size) in rows.items() if blob_size(key) != size]  # type: ignore[operator]
    assert not missing and not broken, f"acknowledged but lost: {missing[:5]}, blob broken: {broken[:5]}"
    return len(missing) + len(broken)


def assert_no_half_written_files(data_dir: Path) -> None:
    """Every non-empty blob file is indexed (an empty one is an unused pooled key), every
    indexed blob is whole, and no temporary or spool file is left."""
    blobs = data_dir / "blobs"
    on_disk = {p.name: p.stat().st_size for p in blobs.rglob("*") if p.is_file()}
    temporary = [name for name in on_disk if not name.isalnum()]
    assert not temporary, f"temporary files left among the blobs: {temporary[:5]}"
    rows = {
        str(k): int(s)  # type: ignore[call-overload]
        for k, s in index_rows(data_dir, "SELECT blob_key, size FROM instance")
        + index_rows(data_dir, "SELECT blob_key, size FROM conflict")
    }
    without_row = [k for k, size in on_disk.items() if size and k not in rows]
    assert not without_row, f"blob files that no row names (half-written stores): {without_row[:5]}"
    without_blob = [k for k, size in rows.items() if on_disk.get(k) != size]
    assert not without_blob, f"index rows whose blob is missing or partial: {without_blob[:5]}"
    spool = data_dir / "tmp"
    leftovers = [p.name for p in spool.rglob("*") if p.is_file()] if spool.is_dir() else []
    assert not leftovers, f"spool files left behind: {leftovers}"


def file_blob_size(data_dir: Path) -> object:
    def size(key: str) -> int | None:
        path = data_dir / "blobs" / key[:2] / key[2] / key
        return path.stat().st_size if path.is_file() else None

    return size


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
        data_dir = srv.data_dir
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
        assert not indexed(data_dir, [*small_uids, *web_uids, str(large.SOPInstanceUID)])
        assert_no_half_written_files(data_dir)

        ballast.unlink()
        freed = time.monotonic()
        retry = [*small_files, Path(large.filename)]
        uids = [*small_uids, str(large.SOPInstanceUID)]
        deadline = freed + RECOVERY_DEADLINE
        while True:
            statuses = storescu(srv, retry)
            tally.store_results(statuses, uids)
            if all(statuses.get(u) == 0 for u in uids):
                break
            assert time.monotonic() < deadline, f"stores still fail after space came back: {statuses}"
            time.sleep(0.5)
        tally.recovery_seconds = time.monotonic() - freed
        response = stow(srv, web)
        assert response.status_code == 200, response.text[:500]
        tally.http(200, 3, stow_stored(response))

        tally.lost = lost(data_dir, tally.acknowledged, file_blob_size(data_dir))
        assert_no_half_written_files(data_dir)
        srv.stop()
    tally.report()
