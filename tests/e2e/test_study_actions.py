"""A study's ZIP and its send to a peer, on a real ``dicomhub serve --auth``.

* ``GET /api/studies/{uid}/archive.zip`` holds exactly the stored files (by SOP
  Instance UID, byte for byte); with ``?dicomdir=true`` a PS3.10 file-set whose
  DICOMDIR pydicom's ``FileSet`` and DCMTK's ``dcmftest`` accept;
* a reader limited to one label gets 404 for another study's ZIP, 400 for a bad
  UID, 403 for a send; an unknown peer is a 400;
* ``POST /api/studies/{uid}/send`` queues the study for a DCMTK storescp peer
  (TCP_NODELAY=1), where its instances arrive, and ``GET .../send`` shows them sent.
"""

from __future__ import annotations

import io
import re
import subprocess
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datagen
import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet

from tests.e2e.helpers import (
    HOST,
    DicomhubServer,
    ServerPool,
    StoreSCP,
    add_user,
    bearer,
    clean_env,
    read_dir,
    stow,
)

pytestmark = pytest.mark.e2e


def _part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@dataclass
class Hub:
    server: DicomhubServer
    scp: StoreSCP
    admin: str = ""
    reader: str = ""
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # study -> SOP UID -> bytes

    def user(self, name: str, role: str, scope: str) -> str:
        """A user's token: the first (the admin) by the CLI, the others over HTTP (faster)."""
        return add_user(self.server, name, role, scope, self.admin)

    def get(self, path: str, token: str, **params: str) -> httpx.Response:
        return httpx.get(f"{self.server.base_url}{path}", params=params, headers=bearer(token), timeout=30)


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    root = tmp_path_factory.mktemp("actions")
    scp = StoreSCP(root / "scp", root / "scp.log", aet="ACTSCP").start()
    config = root / "dicomhub.toml"
    config.write_text(f'[[peer]]\nname = "pacs"\nae_title = "ACTSCP"\nhost = "{HOST}"\nport = {scp.port}\n')
    server = module_servers.start(args=["--auth", "--config", str(config)])
    h = Hub(server, scp)
    h.admin = h.user("root", "admin", "archive")
    # Study A: two series (one labelled "alpha"); study B: one instance, not labelled.
    a, b = datagen.uid(), datagen.uid()
    made = [
        datagen.make_dataset(study_uid=a, patient_id="PA", series_number=1, rows=8, cols=8),
        datagen.make_dataset(study_uid=a, patient_id="PA", series_number=2, rows=8, cols=8, modality="MR"),
        datagen.make_dataset(study_uid=b, patient_id="PB", rows=8, cols=8),
    ]
    stow(h.server.base_url, h.admin, made)
    for ds in made:
        h.files.setdefault(str(ds.StudyInstanceUID), {})[str(ds.SOPInstanceUID)] = _part10(ds)
    r = httpx.put(f"{server.base_url}/dicomweb/studies/{a}/labels/alpha", headers=bearer(h.admin))
    assert r.status_code == 201, r.text
    h.reader = h.user("alpha-reader", "reader", "label:alpha")
    yield h
    scp.stop()


def _studies(hub: Hub) -> tuple[str, str]:
    a, b = sorted(hub.files, key=lambda s: -len(hub.files[s]))
    return a, b


def test_the_zip_holds_the_stored_files_and_the_dicomdir_a_readable_file_set(
    hub: Hub, tmp_path: Path
) -> None:
    a, _b = _studies(hub)
    r = hub.get(f"/api/studies/{a}/archive.zip", hub.reader)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert zf.testzip() is None
        found = {dcmread(io.BytesIO(zf.read(n))).SOPInstanceUID: zf.read(n) for n in zf.namelist()}
    assert found == hub.files[a]

    r = hub.get(f"/api/studies/{a}/archive.zip", hub.reader, dicomdir="true")
    assert r.status_code == 200, r.text
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path)
    assert "DICOMDIR" in names
    for name in names:  # PS3.10 8.2: up to 8 characters of A-Z 0-9 _ per component
        assert all(re.fullmatch("[A-Z0-9_]{1,8}", p) for p in name.split("/")), name
    fs = FileSet(dcmread(tmp_path / "DICOMDIR"))
    by_uid = {str(i.SOPInstanceUID): Path(i.path).read_bytes() for i in fs}
    assert by_uid == hub.files[a]
    assert {str(i.PatientID) for i in fs} == {"PA"}
    checked = subprocess.run(
        ["dcmftest", str(tmp_path / "DICOMDIR")], env=clean_env(), capture_output=True, text=True, check=False
    )
    assert checked.stdout.startswith("yes:"), checked.stdout + checked.stderr
    dumped = subprocess.run(
        ["dcmdump", "+P", "0004,1500", str(tmp_path / "DICOMDIR")],
        env=clean_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert dumped.stdout.count("ReferencedFileID") == 2


def test_refusals(hub: Hub) -> None:
    a, b = _studies(hub)
    # Another study than the reader's label: not found, as over WADO-RS.
    assert hub.get(f"/api/studies/{b}/archive.zip", hub.reader).status_code == 404
    assert hub.get(f"/dicomweb/studies/{b}", hub.reader).status_code == 404
    r = hub.get("/api/studies/1.2.x/archive.zip", hub.reader)
    assert r.status_code == 400 and "UID" in r.json()["error"], r.text
    assert hub.get(f"/api/studies/{a}/archive.zip", hub.reader, dicomdir="maybe").status_code == 400
    assert hub.get(f"/api/studies/{a}/archive.zip", "dh_nonsense").status_code == 401
    url = f"{hub.server.base_url}/api/studies/{a}/send"
    # The reader sees study A but may not export it; nor see B at all.
    assert httpx.post(url, json={"to": "pacs"}, headers=bearer(hub.reader)).status_code == 403
    assert hub.get(f"/api/studies/{b}/send", hub.reader).status_code == 404
    r = httpx.post(url, json={"to": "nowhere"}, headers=bearer(hub.admin))
    assert r.status_code == 400 and "nowhere" in r.json()["error"], r.text
    assert httpx.post(url, json={}, headers=bearer(hub.admin)).status_code == 400


def _sends(hub: Hub, study: str) -> dict[str, Any]:
    r = hub.get(f"/api/studies/{study}/send", hub.admin)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_send_queues_the_study_for_a_peer_where_it_arrives(hub: Hub) -> None:
    a, _b = _studies(hub)
    assert [p["name"] for p in _sends(hub, a)["peers"]] == ["pacs"]
    send = f"{hub.server.base_url}/api/studies/{a}/send"
    r = httpx.post(send, json={"to": "pacs"}, headers=bearer(hub.admin))
    assert r.status_code == 202, r.text
    assert r.json()["queued"] == 2 and r.headers["location"] == f"/api/studies/{a}/send"
    deadline = time.monotonic() + 30
    while (state := _sends(hub, a)["sends"]) != [] and state[0]["sent"] < 2:
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    assert state[0]["to"] == "pacs" and state[0]["dead"] == 0
    received = read_dir(hub.scp.out_dir)
    assert set(received) == set(hub.files[a])
    # Asked again, it is sent again (a send by hand is not deduplicated away).
    r = httpx.post(send, json={"to": "pacs"}, headers=bearer(hub.admin))
    assert r.status_code == 202 and r.json()["queued"] == 2, r.text
    events = httpx.get(
        f"{hub.server.base_url}/audit", params={"action": "export"}, headers=bearer(hub.admin)
    ).json()
    assert any(e["detail"].get("destination") == "pacs" for e in events), events
