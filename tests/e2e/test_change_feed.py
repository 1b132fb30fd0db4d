"""The change feed on a real ``dicomhub serve --auth``: pages of ``GET /changes`` that
resume where the last ended, a long poll woken by a store, the Server-Sent Events form
resumed with ``Last-Event-ID``, the refusal of a reader limited to one label, and the
``stable`` announcement of a study once no instance has come for ``stable_age``, and
``dicomhub export-metadata`` writing what changed as Parquet.

Objects arrive over STOW-RS (httpx) and DCMTK storescu; the feed is read with httpx.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from pydicom.dataset import Dataset

from tests import datagen
from tests.e2e.helpers import DicomhubServer, ServerPool, run_cli, store_ok

pytestmark = pytest.mark.e2e


@dataclass
class Hub:
    server: DicomhubServer
    admin: str

    def get(self, path: str, token: str | None = None, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.admin}"}
        return httpx.get(self.server.base_url + path, params=params, headers=headers, timeout=60)

    def stow(self, ds: Dataset) -> None:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        boundary = "feed-boundary"
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + buf.getvalue()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        r = httpx.post(
            f"{self.server.base_url}/dicomweb/studies",
            content=body,
            headers={
                "Authorization": f"Bearer {self.admin}",
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
            timeout=60,
        )
        assert r.status_code == 200, r.text


def user(server: DicomhubServer, name: str, role: str, scope: str) -> str:
    rc, out = run_cli(
        "user", "add", name, "--role", role, "--scope", scope, "--data-dir", str(server.data_dir)
    )
    assert rc == 0, out
    return out.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool) -> Iterator[Hub]:
    server = module_servers.start(args=["--auth"])
    yield Hub(server, user(server, "root", "admin", "archive"))


def created(page: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["level"], c["uid"]) for c in page["changes"] if c["change_type"] == "created"}


def test_pages_resume_where_the_last_one_ended(hub: Hub) -> None:
    start = hub.get("/changes", limit="1000").json()["last"]
    datasets = [datagen.make_dataset(patient_id="FEED1", rows=8, cols=8) for _ in range(3)]
    for ds in datasets:
        hub.stow(ds)
    seen: list[dict[str, Any]] = []
    since = start
    while True:
        r = hub.get("/changes", since=str(since), limit="2")
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["changes"]) <= 2
        seen += page["changes"]
        since = page["last"]
        if page["done"]:
            break
    seqs = [c["seq"] for c in seen]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] > start
    levels = created({"changes": seen})
    for ds in datasets:
        assert ("IMAGE", str(ds.SOPInstanceUID)) in levels
        assert ("STUDY", str(ds.StudyInstanceUID)) in levels
    assert ("PATIENT", "FEED1") in levels
    # Nothing new: an empty page that says where to continue.
    assert hub.get("/changes", since=str(since)).json() == {"changes": [], "last": since, "done": True}


def test_a_long_poll_returns_when_an_object_is_stored(hub: Hub) -> None:
    since = hub.get("/changes", limit="1000").json()["last"]
    ds = datagen.make_dataset(patient_id="FEED2", rows=8, cols=8)
    answer: dict[str, Any] = {}

    def poll() -> None:
        began = time.monotonic()
        answer["page"] = hub.get("/changes", since=str(since), wait="20").json()
        answer["seconds"] = time.monotonic() - began

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(1.0)  # the poll is waiting on an unchanged log
    assert "page" not in answer
    hub.stow(ds)
    waiter.join(30)
    assert ("IMAGE", str(ds.SOPInstanceUID)) in created(answer["page"])
    assert 1.0 <= answer["seconds"] < 15, answer["seconds"]


def _events(hub: Hub, headers: dict[str, str], params: dict[str, str], want: int) -> list[tuple[int, str]]:
    """(id, data) of the first ``want`` events of one stream."""
    found: list[tuple[int, str]] = []
    event_id = None
    with httpx.stream(
        "GET",
        f"{hub.server.base_url}/changes/stream",
        params=params,
        headers={"Authorization": f"Bearer {hub.admin}", **headers},
        timeout=30,
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: ") and event_id is not None:
                found.append((event_id, line[6:]))
                if len(found) == want:
                    break
    return found


def test_the_event_stream_resumes_with_last_event_id(hub: Hub) -> None:
    since = hub.get("/changes", limit="1000").json()["last"]
    ds = datagen.make_dataset(patient_id="FEED3", rows=8, cols=8)
    hub.stow(ds)  # patient, study, series and instance created: four changes
    first = _events(hub, {}, {"since": str(since)}, 2)
    rest = _events(hub, {"Last-Event-ID": str(first[-1][0])}, {}, 2)
    ids = [i for i, _ in first + rest]
    assert ids == sorted(ids) and len(set(ids)) == 4 and ids[0] > since
    assert str(ds.SOPInstanceUID) in "".join(data for _, data in first + rest)


def test_only_callers_who_see_the_whole_archive_follow_the_feed(hub: Hub) -> None:
    limited = user(hub.server, "feed-reader", "reader", "label:alpha")
    everything = user(hub.server, "feed-auditor", "reader", "archive")
    for path in ("/changes", "/changes/stream"):
        r = hub.get(path, token=limited)
        assert r.status_code == 403 and "whole archive" in r.text, r.text
    assert hub.get("/changes", token=everything).status_code == 200
    assert httpx.get(hub.server.base_url + "/changes").status_code == 401
    for params in ({"since": "-1"}, {"limit": "x"}, {"wait": "31"}, {"wait": "nan"}):
        r = hub.get("/changes", **params)
        assert r.status_code == 400, (params, r.text)


def _stable_after(url: str, since: int, level: str, uid: str, timeout: float = 30) -> tuple[int, float]:
    """(seq, monotonic time) of the first ``stable`` change of ``uid`` after ``since``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = httpx.get(
            f"{url}/changes", params={"since": since, "limit": 1000, "wait": 5}, timeout=30
        ).json()
        for c in page["changes"]:
            if (c["change_type"], c["level"], c["uid"]) == ("stable", level, uid):
                return int(c["seq"]), time.monotonic()
        since = page["last"]
    raise AssertionError(f"{level} {uid} not announced stable within {timeout} s")


def test_a_study_is_announced_stable_once_quiet_and_again_after_a_late_instance(
    servers: ServerPool, tmp_path: Path
) -> None:
    server = servers.start(args=["--stable-age", "2"])
    url = server.base_url
    study = datagen.uid()
    first = datagen.write_ct_series(tmp_path / "a", 2, study_uid=study)
    start = httpx.get(f"{url}/changes", params={"limit": 1000}).json()["last"]
    store_ok(server, tmp_path / "a", expect=2)
    stored_at = time.monotonic()
    seq, seen_at = _stable_after(url, start, "STUDY", study)
    assert seen_at - stored_at >= 1.5  # not before the study was quiet for about 2 s
    _stable_after(url, start, "SERIES", str(first[0].SeriesInstanceUID))
    # Announced once: nothing more while the study stays quiet.
    time.sleep(3)
    later = httpx.get(f"{url}/changes", params={"since": seq, "limit": 1000}).json()["changes"]
    assert not [c for c in later if c["uid"] == study]
    # A late instance makes it unstable; it is announced again once quiet.
    (tmp_path / "b").mkdir()
    datagen.write_instance(tmp_path / "b" / "late.dcm", study_uid=study, patient_id=str(first[0].PatientID))
    store_ok(server, tmp_path / "b", expect=1)
    again, _ = _stable_after(url, seq, "STUDY", study)
    assert again > seq


def test_export_metadata_writes_what_changed_since_the_last_run(hub: Hub, tmp_path: Path) -> None:
    """``dicomhub export-metadata`` beside the running server, on its index and blobs."""
    out = tmp_path / "lake"
    args = ("export-metadata", "--data-dir", str(hub.server.data_dir), "--output", str(out), "--json")
    rc, text = run_cli(*args)
    assert rc == 0, text
    ds = datagen.make_dataset(patient_id="LAKE1", modality="MR", rows=8, cols=8)
    hub.stow(ds)
    rc, text = run_cli(*args)
    assert rc == 0, text
    written = json.loads(text.strip().splitlines()[-1])
    rows = pq.read_table(written["file"]).to_pylist()
    (row,) = [r for r in rows if r["sop_instance_uid"] == str(ds.SOPInstanceUID)]
    assert (row["patient_id"], row["modality"], row["change_type"]) == ("LAKE1", "MR", "created")
    assert json.loads(row["header_json"])["00100020"]["Value"] == ["LAKE1"]
    rc, text = run_cli(*args)
    assert rc == 0 and json.loads(text.strip().splitlines()[-1])["file"] is None, text
    rc, text = run_cli(
        "export-metadata", "--data-dir", str(hub.server.data_dir), "--output", str(written["file"])
    )
    assert rc != 0 and "not a folder" in text
