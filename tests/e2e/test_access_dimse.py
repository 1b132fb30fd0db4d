"""Access control over DIMSE with real DCMTK clients: who may associate, and what
each role may store, find, get and move; every operation leaves one audit record.

One archive with ``--auth`` holds two studies: A (patient PA) and B (patient
PB). Registered AEs and the grants of their principals:

=========  =============  ====================================  =====================
AE title   principal      grants                                listens (storescp)
=========  =============  ====================================  =====================
ADMIN      admin-svc      admin on the archive                  -
UPLOADER   uploader-1     uploader on patient:PA                -
READER     reader-1       reader on patient:PA                  yes (its own AE)
EXPORTER   exporter-1     exporter on the archive               -
DESTA      dest-a         reader on patient:PA                  yes
DESTB      dest-b         reader on patient:PB                  yes
ELSEWHERE  elsewhere      admin, but registered for 127.0.0.2   -
TLSMOD     tls-mod        reader on patient:PA, needs CN modality-1 over TLS
=========  =============  ====================================  =====================
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from datagen import uid, write_instance

from dicomhub.dimse.commitment import request_commitment
from dicomhub.model.commitment import CommitmentItem

from .helpers import (
    HOST,
    DicomhubServer,
    ServerPool,
    StoreSCP,
    backend_env,
    clean_env,
    dicomhub_command,
    find,
    free_port,
    get,
    move,
    read_dir,
    run_cli,
    run_dcmtk,
    store,
    store_ok,
    wait_for_port,
)
from .tlscerts import Pki, make_pki


def _grant(srv: DicomhubServer, principal: str, role: str, scope: str) -> str:
    """Add the service ``principal`` with ``role`` at ``scope``; its API token."""
    rc, out = run_cli(
        "user", "add", principal, "--kind", "service", "--role", role, "--scope", scope,
        "--data-dir", str(srv.data_dir),
    )  # fmt: skip
    assert rc == 0, out
    return out.strip().splitlines()[-1]


def _ae(srv: DicomhubServer, title: str, *args: str) -> None:
    rc, out = run_cli("ae", "add", title, "--data-dir", str(srv.data_dir), *args)
    assert rc == 0, out


def audit_events(srv: DicomhubServer, *args: str) -> list[dict[str, Any]]:
    rc, out = run_cli("audit-export", "--data-dir", str(srv.data_dir), "--format", "jsonl", *args)
    assert rc == 0, out
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def new_events(
    srv: DicomhubServer, before: list[dict[str, Any]], *args: str, settle: int = 0
) -> list[dict[str, Any]]:
    """Events after ``before`` (waiting up to 5 s for ``settle`` of them: STORE events
    are written when the association has ended on the server too)."""
    seen = {e["id"] for e in before}
    deadline = time.monotonic() + 5
    while True:
        events = [e for e in audit_events(srv, *args) if e["id"] not in seen]
        if len(events) >= settle or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    """One storescp: READER, DESTA and DESTB are registered at its port (it accepts any called AE)."""
    base = tmp_path_factory.mktemp("storescp")
    scp = StoreSCP(base / "out", base / "storescp.log", aet="READER").start()
    yield scp
    scp.stop()


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("studies")
    return {
        "A": write_instance(base / "a" / "a1.dcm", patient_id="PA", accession="ACCA"),
        "B": write_instance(base / "b" / "b1.dcm", patient_id="PB", accession="ACCB"),
        "A2": write_instance(base / "a2" / "a2.dcm", patient_id="PA", accession="ACCA2"),
        "B2": write_instance(base / "b2" / "b2.dcm", patient_id="PB", accession="ACCB2"),
        "dir": base,
    }


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool, listener: StoreSCP, studies: dict[str, Any], pki: Pki) -> DicomhubServer:
    srv = module_servers.create("auth")
    srv.tokens = {}  # type: ignore[attr-defined]
    srv.tls_port = free_port()  # type: ignore[attr-defined]
    srv.args += [
        "--auth",
        "--dimse-tls-port", str(srv.tls_port),  # type: ignore[attr-defined]
        "--tls-cert", str(pki.server.cert),
        "--tls-key", str(pki.server.key),
        "--tls-ca", str(pki.ca),
    ]  # fmt: skip
    srv.data_dir.mkdir(parents=True, exist_ok=True)
    port = str(listener.port)
    _ae(srv, "ADMIN", "--host", HOST, "--principal", "admin-svc")
    _ae(srv, "UPLOADER", "--host", HOST, "--principal", "uploader-1")
    _ae(srv, "READER", "--host", HOST, "--port", port, "--principal", "reader-1")
    _ae(srv, "EXPORTER", "--host", "localhost", "--principal", "exporter-1")
    _ae(srv, "DESTA", "--host", HOST, "--port", port, "--principal", "dest-a")
    _ae(srv, "DESTB", "--host", HOST, "--port", port, "--principal", "dest-b")
    _ae(srv, "ELSEWHERE", "--host", "127.0.0.2", "--principal", "admin-svc")
    _ae(srv, "TLSMOD", "--host", HOST, "--principal", "tls-mod", "--tls-subject", "modality-1")
    for principal, role, scope in (
        ("admin-svc", "admin", "archive"),
        ("uploader-1", "uploader", "patient:PA"),
        ("reader-1", "reader", "patient:PA"),
        ("exporter-1", "exporter", "archive"),
        ("dest-a", "reader", "patient:PA"),
        ("dest-b", "reader", "patient:PB"),
        ("tls-mod", "reader", "patient:PA"),
    ):
        srv.tokens[principal] = _grant(srv, principal, role, scope)  # type: ignore[attr-defined]
    srv.start()
    store_ok(srv, studies["dir"] / "a", studies["dir"] / "b", calling="ADMIN", expect=2)
    return srv


def _echo(srv: DicomhubServer, calling: str, *extra: str, port: int | None = None) -> tuple[int, str]:
    return run_dcmtk(
        "echoscu",
        "-v",
        *extra,
        "-aet",
        calling,
        "-aec",
        srv.aet,
        HOST,
        str(port or srv.dimse_port),
        timeout=30,
    )


def test_association_authentication(hub: DicomhubServer, pki: Pki) -> None:
    before = audit_events(hub, "--principal", "NOBODY")
    rc, out = _echo(hub, "NOBODY")
    assert rc != 0 and "Association Rejected" in out and "Calling AE Title Not Recognized" in out, out
    (event,) = new_events(hub, before, "--principal", "NOBODY", settle=1)
    assert (event["action"], event["outcome"], event["ae_title"], event["address"]) == (
        "login",
        "8",
        "NOBODY",
        HOST,
    )

    # Registered for 127.0.0.2; we connect from 127.0.0.1.
    before = audit_events(hub, "--principal", "ELSEWHERE")
    rc, out = _echo(hub, "ELSEWHERE")
    assert rc != 0 and "Association Rejected" in out, out
    (event,) = new_events(hub, before, "--principal", "ELSEWHERE", settle=1)
    assert event["outcome"] == "8" and "127.0.0.2" in event["detail"]["reason"]

    before = audit_events(hub, "--principal", "reader-1")
    rc, out = _echo(hub, "READER")
    assert rc == 0, out
    (event,) = new_events(hub, before, "--principal", "reader-1", settle=1)
    assert (event["action"], event["outcome"], event["ae_title"]) == ("login", "0", "READER")

    # TLSMOD needs DICOM TLS with a client certificate whose CN is modality-1.
    rc, out = _echo(hub, "TLSMOD")
    assert rc != 0 and "Association Rejected" in out, out
    tls = ["+tls", str(pki.client.key), str(pki.client.cert), "+cf", str(pki.ca)]
    rc, out = _echo(hub, "TLSMOD", *tls, port=hub.tls_port)  # type: ignore[attr-defined]
    assert rc == 0, out
    # A verified certificate does not make another registered AE title acceptable.
    rc, out = _echo(hub, "NOBODY", *tls, port=hub.tls_port)  # type: ignore[attr-defined]
    assert rc != 0 and "Association Rejected" in out, out


def test_store_per_role(hub: DicomhubServer, studies: dict[str, Any]) -> None:
    before = audit_events(hub, "--principal", "uploader-1")
    result = store(hub, studies["dir"] / "a2", studies["dir"] / "b2", calling="UPLOADER")
    assert result.statuses == {studies["A2"].SOPInstanceUID: 0, studies["B2"].SOPInstanceUID: 0x0124}
    stores = [
        e for e in new_events(hub, before, "--principal", "uploader-1", settle=3) if e["action"] == "store"
    ]
    by_outcome = {e["outcome"]: e for e in stores}
    assert len(stores) == 2 and set(by_outcome) == {"0", "8"}
    (study,) = by_outcome["0"]["studies"]
    assert (study["study_instance_uid"], study["patient_id"], study["number_of_instances"]) == (
        studies["A2"].StudyInstanceUID,
        "PA",
        1,
    )
    # The refused object's study is not named back to the caller's audit trail reader.
    assert by_outcome["8"]["studies"] == [] and by_outcome["8"]["detail"]["failed"] == 1

    # A reader holds no STORE at all.
    result = store(hub, studies["dir"] / "a", calling="READER")
    assert result.statuses == {studies["A"].SOPInstanceUID: 0x0124}


def test_find_sees_only_permitted_studies(
    hub: DicomhubServer, studies: dict[str, Any], tmp_path: Path
) -> None:
    before = audit_events(hub, "--principal", "reader-1")
    found = find(
        hub, "STUDY", {"StudyInstanceUID": None, "PatientID": None}, tmp_path / "f1", calling="READER"
    )
    uids = {str(d.StudyInstanceUID) for d in found}
    assert studies["A"].StudyInstanceUID in uids
    assert studies["B"].StudyInstanceUID not in uids and {str(d.PatientID) for d in found} == {"PA"}
    # Asked for by its UID, the forbidden study is still not there.
    found = find(
        hub, "STUDY", {"StudyInstanceUID": studies["B"].StudyInstanceUID}, tmp_path / "f2", calling="READER"
    )
    assert found == []
    queries = [
        e for e in new_events(hub, before, "--principal", "reader-1", settle=4) if e["action"] == "query"
    ]
    assert len(queries) == 2 and all(e["outcome"] == "0" for e in queries)
    assert queries[1]["detail"]["matches"] == 0
    assert queries[1]["studies"][0]["study_instance_uid"] == studies["B"].StudyInstanceUID
    # The admin sees both.
    found = find(hub, "STUDY", {"StudyInstanceUID": None}, tmp_path / "f3", calling="ADMIN")
    assert {studies["A"].StudyInstanceUID, studies["B"].StudyInstanceUID} <= {
        str(d.StudyInstanceUID) for d in found
    }


def test_get_retrieves_only_permitted_studies(
    hub: DicomhubServer, studies: dict[str, Any], tmp_path: Path
) -> None:
    before = audit_events(hub, "--principal", "reader-1")
    result = get(
        hub, "STUDY", {"StudyInstanceUID": studies["A"].StudyInstanceUID}, tmp_path / "a", calling="READER"
    )
    assert result.returncode == 0 and list(read_dir(tmp_path / "a")) == [studies["A"].SOPInstanceUID]
    result = get(
        hub, "STUDY", {"StudyInstanceUID": studies["B"].StudyInstanceUID}, tmp_path / "b", calling="READER"
    )
    # As if the study did not exist: success, nothing sent.
    assert result.returncode == 0 and result.statuses()[-1] == 0x0000
    assert read_dir(tmp_path / "b") == {}
    retrieves = [
        e for e in new_events(hub, before, "--principal", "reader-1", settle=4) if e["action"] == "retrieve"
    ]
    assert [len(e["studies"]) for e in retrieves] == [1, 0]
    assert retrieves[0]["studies"][0]["study_instance_uid"] == studies["A"].StudyInstanceUID


def _moved(listener: StoreSCP, srv: DicomhubServer, calling: str, destination: str, study: str) -> list[str]:
    listener.clear()
    result = move(srv, destination, "STUDY", {"StudyInstanceUID": study}, calling=calling)
    assert result.returncode == 0, result.output
    return list(read_dir(listener.out_dir))


def test_move_destinations_are_permissioned(
    hub: DicomhubServer, studies: dict[str, Any], listener: StoreSCP
) -> None:
    a, b = studies["A"], studies["B"]
    before = audit_events(hub, "--principal", "reader-1")
    # To its own AE a reader needs only RETRIEVE; to another AE it needs EXPORT.
    assert _moved(listener, hub, "READER", "READER", a.StudyInstanceUID) == [a.SOPInstanceUID]
    assert _moved(listener, hub, "READER", "DESTA", a.StudyInstanceUID) == []
    assert _moved(listener, hub, "READER", "READER", b.StudyInstanceUID) == []
    exports = [
        e for e in new_events(hub, before, "--principal", "reader-1", settle=6) if e["action"] == "export"
    ]
    assert [(e["detail"]["destination"], e["outcome"]) for e in exports] == [
        ("READER", "0"),
        ("DESTA", "8"),
        ("READER", "0"),
    ]

    before = audit_events(hub, "--principal", "exporter-1")
    # An exporter may send anywhere, but a destination only receives what it may see.
    assert _moved(listener, hub, "EXPORTER", "DESTA", a.StudyInstanceUID) == [a.SOPInstanceUID]
    assert _moved(listener, hub, "EXPORTER", "DESTB", a.StudyInstanceUID) == []
    assert _moved(listener, hub, "EXPORTER", "DESTB", b.StudyInstanceUID) == [b.SOPInstanceUID]
    listener.clear()
    result = move(hub, "NOWHERE", "STUDY", {"StudyInstanceUID": a.StudyInstanceUID}, calling="EXPORTER")
    assert result.statuses()[-1] == 0xA801
    exports = [
        e for e in new_events(hub, before, "--principal", "exporter-1", settle=8) if e["action"] == "export"
    ]
    assert [(e["detail"]["destination"], e["outcome"], e["detail"].get("withheld")) for e in exports] == [
        ("DESTA", "0", None),
        ("DESTB", "8", 1),
        ("DESTB", "0", None),
        ("NOWHERE", "12", None),
    ]


def test_storage_commitment_only_for_retrievable_instances(
    hub: DicomhubServer, studies: dict[str, Any]
) -> None:
    a, b = studies["A"], studies["B"]
    items = [CommitmentItem(str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in (a, b)]
    result = request_commitment(HOST, hub.dimse_port, hub.aet, "READER", uid(), items, timeout=20)
    assert result is not None
    assert [i.sop_instance_uid for i in result.successes] == [a.SOPInstanceUID]
    # B is held, but not for this caller: reported as if it were not.
    assert [(i.sop_instance_uid, reason) for i, reason in result.failures] == [(b.SOPInstanceUID, 0x0112)]


def test_audit_export_as_dicom_audit_messages(hub: DicomhubServer, studies: dict[str, Any]) -> None:
    rc, out = run_cli(
        "audit-export",
        "--data-dir",
        str(hub.data_dir),
        "--format",
        "dicom-xml",
        "--study",
        studies["A"].StudyInstanceUID,
    )
    assert rc == 0, out
    messages = [line for line in out.splitlines() if line.startswith("<AuditMessage>")]
    assert messages and all(studies["A"].StudyInstanceUID in m for m in messages)
    assert any('csd-code="110104"' in m for m in messages)  # DICOM Instances Transferred (the stores)
    assert any('csd-code="110103"' in m for m in messages)  # DICOM Instances Accessed (the C-GET)


def test_audit_export_over_http_needs_the_administer_right(
    hub: DicomhubServer, studies: dict[str, Any]
) -> None:
    url = f"{hub.base_url}/audit/export"
    tokens = hub.tokens  # type: ignore[attr-defined]
    assert httpx.get(url, timeout=10).status_code == 401
    reader = httpx.get(url, headers={"Authorization": f"Bearer {tokens['reader-1']}"}, timeout=10)
    assert reader.status_code == 403
    admin = {"Authorization": f"Bearer {tokens['admin-svc']}"}
    r = httpx.get(url, params={"format": "jsonl", "principal": "reader-1"}, headers=admin, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    events = [json.loads(line) for line in r.text.splitlines()]
    assert events and {e["principal"] for e in events} == {"reader-1"}
    assert events == audit_events(hub, "--principal", "reader-1")  # the same log as the CLI reads
    r = httpx.get(
        url, params={"format": "dicom-xml", "study": studies["B"].StudyInstanceUID}, headers=admin, timeout=10
    )
    assert r.status_code == 200 and r.text.startswith("<AuditMessage>")
    assert httpx.get(url, params={"format": "pdf"}, headers=admin, timeout=10).status_code == 400
    assert httpx.get(url, params={"since": "yesterday"}, headers=admin, timeout=10).status_code == 400


def test_safe_default_refuses_the_network_without_auth(servers: ServerPool, tmp_path: Path) -> None:
    http_port, dimse_port = free_port(), free_port()
    proc = subprocess.run(
        [
            *dicomhub_command(),
            "serve",
            "--data-dir",
            str(tmp_path / "open"),
            "--host",
            "0.0.0.0",
            "--dimse-port",
            str(dimse_port),
            "--http-port",
            str(http_port),
        ],  # fmt: skip
        capture_output=True,
        env=clean_env(backend_env(tmp_path / "open")),
        timeout=60,
        check=False,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "--auth" in err and "--allow-anonymous-network" in err
    with pytest.raises(AssertionError):
        wait_for_port(dimse_port, timeout=0.5)
    # Knowingly overridden, it serves.
    srv = servers.start("open", args=["--host", "0.0.0.0", "--allow-anonymous-network"])
    rc, out = _echo(srv, "ANYONE")
    assert rc == 0, out
