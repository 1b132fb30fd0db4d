"""`dicomhub check` (index vs storage, --repair) and `dicomhub migrate-storage` on real servers.

Backend-neutral: the archive's store is whatever DICOMHUB_TEST_BACKEND gives
(file:// or s3:// on the local moto server); the migration moves it to the
other kind and back while a reader keeps fetching instances over WADO-RS
and C-GET.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from dicomhub.bootstrap import open_archive, open_blob_store
from dicomhub.config import load_settings
from dicomhub.storage.base import BlobStore, new_blob_key
from tests import s3backend
from tests.backends import backend_env
from tests.datagen import write_ct_series
from tests.e2e.helpers import DicomhubServer, ServerPool, get, run_cli, store, store_ok

pytestmark = pytest.mark.e2e


def _storage_url(data_dir: Path) -> str:
    return backend_env(data_dir).get("DICOMHUB_STORAGE_URL") or (data_dir / "blobs").resolve().as_uri()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The local S3 server's variables, in this process too (the test opens stores itself)."""
    env = s3backend.s3_env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env


def _archive_store(data_dir: Path, url: str) -> BlobStore:
    settings = load_settings({"data_dir": str(data_dir), "storage_url": url}, environ={})
    return open_blob_store(settings)


def _instance_row(data_dir: Path, sop_instance_uid: str, storage_args: list[str] | None = None) -> Any:
    env = {"DICOMHUB_DATA_DIR": str(data_dir), **backend_env(data_dir)}
    overrides = {}
    if storage_args:  # --storage-url A --storage-fallback-url B
        overrides = {"storage_url": storage_args[1], "storage_fallback_url": storage_args[3]}
    archive = open_archive(load_settings(overrides, environ=env))
    try:
        return archive.index.get_instance(sop_instance_uid)
    finally:
        archive.close()


def _blob_key(data_dir: Path, sop_instance_uid: str, storage_args: list[str] | None = None) -> str:
    row = _instance_row(data_dir, sop_instance_uid, storage_args)
    assert row is not None
    return str(row.blob_key)


def _check(data_dir: Path, *args: str) -> tuple[int, dict[str, object]]:
    rc, out = run_cli("check", "--data-dir", str(data_dir), "--json", *args)
    assert rc in (0, 1), out
    return rc, json.loads(out[out.index("{") :])


def test_check_reports_and_repairs(servers: ServerPool, tmp_path: Path, aws_env: dict[str, str]) -> None:
    server = servers.start()
    series = write_ct_series(tmp_path / "in", 4)
    store_ok(server, tmp_path / "in", expect=4)
    server.stop()
    data_dir = server.data_dir
    rc, report = _check(data_dir)
    assert rc == 0 and report["storage"]["problems"] == [], report  # type: ignore[index]

    blobs = _archive_store(data_dir, _storage_url(data_dir))
    missing = _blob_key(data_dir, series[0].SOPInstanceUID)
    blobs.delete(missing)
    damaged = _blob_key(data_dir, series[1].SOPInstanceUID)
    good = blobs.read(damaged)
    blobs.delete(damaged)
    blobs.put(damaged, good[:-1] + bytes([good[-1] ^ 0xFF]))  # same size, other bytes
    junk = new_blob_key()
    blobs.put(junk, b"not a DICOM object")
    # An object whose index row was lost: the blob of a stored instance under a new key, its row gone.
    lost_ds = write_ct_series(tmp_path / "lost", 1)[0]
    lost = new_blob_key()
    blobs.put(lost, (tmp_path / "lost").joinpath(os.listdir(tmp_path / "lost")[0]).read_bytes())

    rc, report = _check(data_dir)
    problems = {(p["kind"], p["blob_key"]) for p in report["storage"]["problems"]}  # type: ignore[index]
    assert rc == 1
    assert problems == {
        ("missing", missing),
        ("digest-mismatch", damaged),
        ("orphan", junk),
        ("orphan", lost),
    }
    # Within the grace period nothing is touched: they may be stores in flight.
    rc, report = _check(data_dir, "--repair")
    assert rc == 1 and report["storage"]["skipped_young"] == 2 and blobs.exists(junk)  # type: ignore[index]

    rc, report = _check(data_dir, "--repair", "--grace", "0")
    storage = report["storage"]
    assert rc == 1  # the missing and the damaged blob remain: only a copy from elsewhere mends them
    assert storage["removed"] == [junk] and storage["reindexed"] == [lost]  # type: ignore[index]
    assert {p["kind"] for p in storage["problems"]} == {"missing", "digest-mismatch"}  # type: ignore[index]
    assert not blobs.exists(junk) and blobs.exists(lost)
    assert _blob_key(data_dir, lost_ds.SOPInstanceUID) == lost


class _Reader(threading.Thread):
    """Fetches every instance over WADO-RS and C-GET, again and again, counting what fails."""

    def __init__(self, server: DicomhubServer, series: list[Dataset], expected: dict[str, str], out: Path):
        super().__init__(daemon=True)
        self.server, self.series, self.expected, self.out = server, series, expected, out
        self.stop = threading.Event()
        self.reads = 0
        self.gets = 0
        self.failures: list[str] = []

    def run(self) -> None:
        study = self.series[0].StudyInstanceUID
        round_ = 0
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                for ds in self.series:
                    r = client.get(_instance_url(self.server, ds), headers={"Accept": _DICOM})
                    if r.status_code != 200 or _digest(r) != self.expected[ds.SOPInstanceUID]:
                        self.failures.append(f"WADO {ds.SOPInstanceUID}: {r.status_code}")
                    self.reads += 1
                round_ += 1
                got = get(self.server, "STUDY", {"StudyInstanceUID": study}, self.out / f"get{round_}")
                counts = got.final_counts()
                if got.returncode != 0 or counts.get("completed") != len(self.series):
                    self.failures.append(f"C-GET round {round_}: {counts} rc={got.returncode}")
                self.gets += 1


_DICOM = 'multipart/related; type="application/dicom"'


def _instance_url(server: DicomhubServer, ds: Dataset) -> str:
    return (
        f"{server.base_url}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def _digest(r: httpx.Response) -> str:
    """SHA-256 of the one part of a multipart WADO-RS answer (its boundary differs every time)."""
    boundary = r.headers["content-type"].split("boundary=", 1)[1].split(";")[0].strip('"')
    body = r.content
    start = body.index(b"\r\n\r\n") + 4
    return hashlib.sha256(body[start : body.rindex(b"\r\n--" + boundary.encode())]).hexdigest()


def _wado_digests(server: DicomhubServer, series: list[Dataset]) -> dict[str, str]:
    out = {}
    for ds in series:
        r = httpx.get(_instance_url(server, ds), headers={"Accept": _DICOM})
        assert r.status_code == 200
        out[ds.SOPInstanceUID] = _digest(r)
    return out


def _migrate_while_reading(
    server: DicomhubServer, series: list[Dataset], source: str, target: str, out: Path
) -> dict[str, object]:
    """Restart the node on target + fallback source, migrate while a reader runs, return the report."""
    server.stop()
    server.args = ["--storage-url", target, "--storage-fallback-url", source]
    server.start()
    expected = _wado_digests(server, series)
    reader = _Reader(server, series, expected, out)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while reader.gets < 1 and not reader.failures and time.monotonic() < deadline:
            time.sleep(0.05)
        before = (reader.reads, reader.gets)
        rc, text = run_cli(
            "migrate-storage", "--data-dir", str(server.data_dir), *server.args, "--to", target,
            "--jobs", "2", "--json",
        )  # fmt: skip
        assert rc == 0, text
        deadline = time.monotonic() + 30
        while reader.gets < before[1] + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        reader.stop.set()
        reader.join(60)
    assert reader.failures == []
    assert reader.gets >= before[1] + 2 and reader.reads > before[0]
    return json.loads(text[text.index("{") :])  # type: ignore[no-any-return]


def test_migrate_storage_there_and_back_while_serving(
    servers: ServerPool, tmp_path: Path, aws_env: dict[str, str]
) -> None:
    server = servers.create()
    server.env.update(aws_env)
    server.start()
    series = write_ct_series(tmp_path / "in", 6)
    store_ok(server, tmp_path / "in", expect=6)
    data_dir = server.data_dir
    original = _storage_url(data_dir)
    other = (
        s3backend.fresh_storage("migrated")[0]
        if original.startswith("file:")
        else (tmp_path / "migrated-blobs").resolve().as_uri()
    )
    report = _migrate_while_reading(server, series, original, other, tmp_path / "there")
    assert report["copied"] == 6 and report["removed_from_source"] == 6 and report["problems"] == []
    old, new = _archive_store(data_dir, original), _archive_store(data_dir, other)
    assert [k for k, s in old.iter_blobs() if s.size] == []
    assert len([k for k, s in new.iter_blobs() if s.size]) == 6
    # A store during the migration lands in the new store.
    more = write_ct_series(tmp_path / "more", 1, study_uid=series[0].StudyInstanceUID)
    store_ok(server, tmp_path / "more", expect=1)
    assert new.exists(_blob_key(data_dir, more[0].SOPInstanceUID, server.args))

    # Resumable: a second run finds everything in place.
    rc, text = run_cli(
        "migrate-storage", "--data-dir", str(data_dir), *server.args, "--to", other, "--json"
    )
    again = json.loads(text[text.index("{") :])
    assert rc == 0 and again["copied"] == 0 and again["already_there"] == 7

    # And back, the same way.
    report = _migrate_while_reading(server, series + more, other, original, tmp_path / "back")
    assert report["copied"] == 7 and report["problems"] == []
    assert [k for k, s in new.iter_blobs() if s.size] == []
    rc, text = run_cli("check", "--data-dir", str(data_dir), "--storage-url", original, "--json")
    assert rc == 0, text



def test_unreachable_object_store_fails_clearly(servers: ServerPool, tmp_path: Path) -> None:
    from tests.e2e.test_stow import failed, multipart, post

    moto = s3backend.launch_s3_server()
    try:
        url, env = s3backend.fresh_storage("doomed", moto)
        server = servers.create(args=["--storage-url", url], env=env)
        server.start()
        first = write_ct_series(tmp_path / "first", 1)
        store_ok(server, tmp_path / "first", expect=1)
    finally:
        moto.stop()  # the object store goes away under a running node
    later = write_ct_series(tmp_path / "later", 2)
    files = sorted((tmp_path / "later").iterdir())
    result = store(server, files[0])
    statuses = list(result.statuses.values())
    assert len(statuses) == 1 and 0xA700 <= statuses[0] <= 0xA7FF, result.output[-3000:]
    r = post(server, multipart([files[1].read_bytes()]))
    assert r.status_code in (409, 503), r.text
    if r.status_code == 409:  # STOW answers per part: the part failed with Out of Resources
        assert [code for _uid, code in failed(r.json())] == [0xA700]
    health = httpx.get(f"{server.base_url}/healthz", timeout=10)
    assert health.status_code == 503 and health.json()["storage"] is False
    # The refused objects were not indexed; the one stored before still is.
    assert _instance_row(server.data_dir, first[0].SOPInstanceUID) is not None
    assert [_instance_row(server.data_dir, ds.SOPInstanceUID) for ds in later] == [None, None]
