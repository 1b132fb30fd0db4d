"""The peer registry end to end: one server with ``--known-aes-only`` and ``[[peer]]`` tables.

- a peer registered with ``dicomhub peer add`` while the server runs is a C-MOVE
  destination at once (DCMTK ``movescu`` to a DCMTK ``storescp``);
- ``--known-aes-only`` refuses an AE that is no peer, and a peer's roles limit
  what it may do (a query-only peer cannot store);
- ``/admin/peers``: list (configured peers with their source, never a secret),
  PUT (create, replace), GET, DELETE, and 409 for a configured peer;
- a migration from a folder peer defined in the configuration file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import datagen
import httpx
import pytest

from .helpers import (
    HOST,
    DicomhubServer,
    ServerPool,
    StoreSCP,
    find,
    move,
    read_dir,
    run_cli,
    run_dcmtk,
    store,
    store_ok,
    study_instance_count,
)

pytestmark = pytest.mark.e2e

SECRET = "bearer:never-shown-4711"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The configuration file, and the study UIDs of the folder peer's files."""
    root = tmp_path_factory.mktemp("peers")
    folder = root / "old-archive"
    written = datagen.write_ct_series(folder, 2, rows=8, cols=8)
    cfg = root / "dicomhub.toml"
    cfg.write_text(
        "[[peer]]\n"
        'name = "MOVER"\nae_title = "MOVER"\nhost = "127.0.0.1"\nroles = ["store", "query", "retrieve"]\n'
        "[[peer]]\n"
        'name = "LOOKER"\nae_title = "LOOKER"\nhost = "127.0.0.1"\nroles = ["query"]\n'
        "[[peer]]\n"
        f'name = "old"\nfolder = "{folder}"\nroles = ["migration-source"]\n'
        "[[peer]]\n"
        f'name = "cloud"\ndicomweb_url = "https://cloud.invalid/rs"\nauth = "{SECRET}"\n'
        'roles = ["migration-target"]\n'
    )
    return cfg, sorted({str(d.StudyInstanceUID) for d in written})


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool, config: tuple[Path, list[str]]) -> DicomhubServer:
    return module_servers.start(args=["--known-aes-only"], env={"DICOMHUB_CONFIG": str(config[0])})


def cli(server: DicomhubServer, config: Path, *args: str) -> tuple[int, str]:
    return run_cli(*args, "--data-dir", str(server.data_dir), env={"DICOMHUB_CONFIG": str(config)})


def test_a_peer_added_by_cli_is_a_move_destination(
    hub: DicomhubServer,
    config: tuple[Path, list[str]],
    storescp_factory: Callable[..., StoreSCP],
    tmp_path: Path,
) -> None:
    scp = storescp_factory(aet="PEERSCP")
    rc, out = cli(hub, config[0], "peer", "add", "PEERSCP", "--host", HOST, "--port", str(scp.port))
    assert rc == 0 and "move-destination" in out, out
    ds = datagen.write_instance(tmp_path / "in" / "x.dcm", rows=8, cols=8)
    store_ok(hub, tmp_path / "in", calling="MOVER", expect=1)
    result = move(hub, "PEERSCP", "STUDY", {"StudyInstanceUID": str(ds.StudyInstanceUID)}, calling="MOVER")
    assert result.returncode == 0 and result.final_counts()["completed"] == 1, result.output[-2000:]
    assert set(read_dir(scp.out_dir)) == {str(ds.SOPInstanceUID)}
    # An AE that is no move destination (LOOKER may only query) is refused as a destination.
    result = move(hub, "LOOKER", "STUDY", {"StudyInstanceUID": str(ds.StudyInstanceUID)}, calling="MOVER")
    assert result.statuses() and result.statuses()[-1] == 0xA801, result.output[-2000:]

    rc, out = cli(hub, config[0], "peer", "list", "--json")
    assert rc == 0, out
    listed = {p["name"]: p for p in json.loads(out[out.index("[") :])}
    assert listed["PEERSCP"]["source"] == "index" and listed["MOVER"]["source"] == "config"
    assert listed["cloud"]["auth"] == "bearer" and "never-shown" not in out
    # The deprecated alias still works and says so.
    rc, out = cli(hub, config[0], "ae", "list")
    assert rc == 0 and "deprecated" in out and "PEERSCP" in out, out


def test_known_aes_only_refuses_an_ae_that_is_no_peer_and_roles_limit_peers(
    hub: DicomhubServer, tmp_path: Path
) -> None:
    rc, out = run_dcmtk("echoscu", "-aet", "STRANGER", "-aec", hub.aet, HOST, str(hub.dimse_port))
    assert rc != 0 and "Association Rejected" in out, out
    datagen.write_instance(tmp_path / "in" / "y.dcm", rows=8, cols=8)
    res = store(hub, tmp_path / "in", calling="LOOKER")  # a peer, but not allowed to store
    assert list(res.statuses.values()) == [0x0124], res.output[-2000:]
    assert find(hub, "STUDY", {"StudyInstanceUID": None}, tmp_path / "f", calling="LOOKER") is not None


def test_admin_peer_routes(hub: DicomhubServer) -> None:
    base = f"{hub.base_url}/admin/peers"
    listed = httpx.get(base, timeout=30).json()
    assert {p["name"]: p["source"] for p in listed}.items() >= {"MOVER": "config", "old": "config"}.items()
    assert "never-shown" not in json.dumps(listed)

    body = {"ae_title": "VIEWER", "host": HOST, "port": 4006, "roles": ["move-destination"]}
    r = httpx.put(f"{base}/VIEWER", json=body, timeout=30)
    assert r.status_code == 201 and r.json()["roles"] == ["move-destination"], r.text
    r = httpx.put(f"{base}/VIEWER", json={**body, "port": 4007, "auth": ""}, timeout=30)
    assert r.status_code == 200 and r.json()["port"] == 4007, r.text
    assert httpx.get(f"{base}/VIEWER", timeout=30).json()["source"] == "index"
    for name, bad in (
        ("VIEWER", {**body, "port": 70000}),
        ("VIEWER", {**body, "ae_title": "BAD\\AE"}),
        ("web", {"dicomweb_url": "file:///etc/passwd"}),
        ("web", {"dicomweb_url": "https://x.example/", "auth": "plain-token"}),
    ):
        r = httpx.put(f"{base}/{name}", json=bad, timeout=30)
        assert r.status_code == 400, (bad, r.text)
    assert httpx.put(f"{base}/MOVER", json={"ae_title": "MOVER", "host": HOST}, timeout=30).status_code == 409
    assert httpx.delete(f"{base}/old", timeout=30).status_code == 409
    assert httpx.delete(f"{base}/VIEWER", timeout=30).json() == {"removed": "VIEWER"}
    assert httpx.delete(f"{base}/VIEWER", timeout=30).status_code == 404
    assert httpx.get(f"{base}/VIEWER", timeout=30).status_code == 404


def test_migration_from_a_configured_peer(hub: DicomhubServer, config: tuple[Path, list[str]]) -> None:
    cfg, studies = config
    rc, out = cli(hub, cfg, "inventory", "old")
    assert rc == 0, out
    rc, out = cli(hub, cfg, "migrate", "old", "--quiet")
    assert rc == 0, out
    assert all(study_instance_count(hub.data_dir, uid) > 0 for uid in studies)
    # The folder's studies are all here, the same; the archive holds more (the study the
    # other tests stored), so the report is not clean as a whole.
    rc, out = cli(hub, cfg, "reconcile", "old", "--json")
    report = json.loads(out[out.index("{") :])
    assert {s["study_instance_uid"]: s["status"] for s in report["studies"]}.keys().isdisjoint(studies), out
    # A configured peer is only what its roles say: old is no push target.
    rc, out = cli(hub, cfg, "migrate", "--to", "old", "--quiet")
    assert rc != 0 and "folder" in out, out
