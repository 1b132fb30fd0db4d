"""De-identification on a running server: runs over HTTP and the CLI, the new study through
C-FIND (findscu) and WADO-RS (dicomweb-client), re-identification grants and the audit log,
a de-identifying C-MOVE destination (movescu -> storescp) and a run resumed after kill -9."""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from tests import datagen
from tests import deid_server_data as data

from .helpers import (
    DicomhubServer,
    ServerPool,
    StoreSCP,
    find,
    move,
    read_dir,
    run_cli,
    store_ok,
    wait_until,
)

SECRET_ENV = {"DICOMHUB_DEID_SECRET": data.SECRET}


@pytest.fixture(scope="module")
def destination(storescp_factory: Callable[..., StoreSCP]) -> StoreSCP:
    # Implicit VR only: the de-identified objects (stored explicit) must be re-encoded on the way.
    return storescp_factory(aet="DEIDSCP", implicit_only=True)


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool, destination: StoreSCP) -> DicomhubServer:
    return module_servers.start(
        env=SECRET_ENV,
        remote_aes={"DEIDSCP": destination.address},
        args=["--deid-export", "DEIDSCP=P1", "--workers", "1"],
    )


def cli(server: DicomhubServer, *args: str, secret: bool = True) -> tuple[int, str]:
    return run_cli(*args, "--data-dir", str(server.data_dir), env=SECRET_ENV if secret else None)


def make_token(server: DicomhubServer, principal: str) -> str:
    rc, out = cli(server, "token", "create", principal)
    assert rc == 0, out
    token = out.strip().splitlines()[-1]
    assert token.startswith("dh_")
    return token


def grant(server: DicomhubServer, principal: str, role: str, project: str = "P1") -> None:
    rc, out = cli(server, "deid-grant", principal, "--project", project, "--role", role)
    assert rc == 0, out


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def store_study(server: DicomhubServer, study: data.Study, directory: Path) -> None:
    data.write_study(study, directory)
    store_ok(server, directory, expect=len(study.datasets))


def wait_done(server: DicomhubServer, run_id: int, token: str, timeout: float = 60.0) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        r = httpx.get(f"{server.base_url}/deid/jobs/{run_id}", headers=bearer(token), timeout=10)
        assert r.status_code == 200, r.text
        run: dict[str, Any] = r.json()
        return run if run["status"] in ("done", "failed") else None

    return wait_until(finished, timeout=timeout, interval=0.2, what=f"run {run_id} finished")  # type: ignore[return-value]


def assert_deidentified(datasets: list[Dataset], study: data.Study, target_study: str) -> None:
    uids = {str(d.SOPInstanceUID) for d in datasets}
    series = {str(d.SeriesInstanceUID) for d in datasets}
    for ds in datasets:
        assert ds.StudyInstanceUID == target_study
        values = data.all_values(ds)
        assert not values & study.uids, f"an original UID survives in {ds.SOPInstanceUID}"
        for identifier in data.IDENTIFIERS:
            assert not any(identifier in v for v in values), f"{identifier} survives"
    (sr,) = [d for d in datasets if d.Modality == "SR"]
    cited = data.referenced_uids(sr)
    assert cited and cited <= uids | series, "the SR cites only objects of the new study"


def test_a_run_over_http_makes_a_new_study_found_by_cfind_and_wado(
    hub: DicomhubServer, tmp_path: Path
) -> None:
    study = data.make_study(capture=True)
    store_study(hub, study, tmp_path / "in")
    token = make_token(hub, "research-bot")
    body = {"project": "P1", "study": study.study_uid, "reason": "AI training set"}

    assert httpx.post(f"{hub.base_url}/deid/jobs", json=body).status_code == 401
    assert httpx.post(f"{hub.base_url}/deid/jobs", json=body, headers=bearer(token)).status_code == 403
    grant(hub, "research-bot", "deidentifier")
    r = httpx.post(f"{hub.base_url}/deid/jobs", json=body, headers=bearer(token))
    assert r.status_code == 202, r.text
    run = wait_done(hub, r.json()["id"], token)
    assert run["status"] == "done", run
    assert (run["total"], run["stored"], run["refused"]) == (8, 7, 1)
    refused = [i for i in run["items"] if i["status"] == "refused"]
    assert [i["source_sop_instance_uid"] for i in refused] == [study.capture.SOPInstanceUID]  # type: ignore[union-attr]
    target = run["target_study_uid"]

    keys = {"StudyInstanceUID": target, "PatientID": None, "NumberOfStudyRelatedInstances": None}
    (found,) = find(hub, "STUDY", keys, tmp_path / "find")
    assert found.PatientID not in ("", data.PATIENT_ID)
    assert int(found.NumberOfStudyRelatedInstances) == 7
    # The original study is still there, as it was.
    (original,) = find(
        hub, "STUDY", {"StudyInstanceUID": study.study_uid, "PatientID": None}, tmp_path / "f2"
    )
    assert original.PatientID == data.PATIENT_ID

    retrieved = DICOMwebClient(url=hub.base_url + "/dicomweb").retrieve_study(target)
    assert len(retrieved) == 7
    assert_deidentified(retrieved, study, target)

    preview = {"project": "P1", "instance": str(study.images[0].SOPInstanceUID)}
    assert httpx.post(f"{hub.base_url}/deid/preview", json=preview).status_code == 401
    r = httpx.post(f"{hub.base_url}/deid/preview", json=preview, headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.json()["study_instance_uid"] == target
    assert {"(0010,0010)", "(0010,0020)"} <= {a["tag"] for a in r.json()["actions"]}

    listed = httpx.get(f"{hub.base_url}/deid/jobs", headers=bearer(token)).json()
    assert run["id"] in [j["id"] for j in listed]
    assert httpx.get(f"{hub.base_url}/deid/jobs").status_code == 401


def test_a_run_from_the_cli_is_done_by_the_server_and_masks_captures(
    hub: DicomhubServer, tmp_path: Path
) -> None:
    study = data.make_study(images_per_series=1, capture=True)
    store_study(hub, study, tmp_path / "in")
    rc, out = cli(
        hub, "deid-job", "start", study.study_uid, "--project", "P1", "--reason", "teaching file",
        "--burned-in", "mask", "--mask", "2,3,4,5", "--json",
    )  # fmt: skip
    assert rc == 0, out
    run_id = json.loads(out)["id"]

    def shown() -> dict[str, Any] | None:
        rc, out = cli(hub, "deid-job", "show", str(run_id), "--json")
        assert rc == 0, out
        run: dict[str, Any] = json.loads(out)
        return run if run["status"] in ("done", "failed") else None

    run = wait_until(shown, timeout=60, interval=0.5, what="CLI run done")
    assert run["status"] == "done" and (run["stored"], run["refused"]) == (4, 0), run  # type: ignore[index]
    assert run["actor"] == getpass.getuser()  # type: ignore[index]
    rc, out = cli(hub, "deid-job", "list", "--json")
    assert rc == 0 and run_id in [r["id"] for r in json.loads(out)]
    retrieved = DICOMwebClient(url=hub.base_url + "/dicomweb").retrieve_study(run["target_study_uid"])  # type: ignore[index]
    (capture,) = [d for d in retrieved if d.Modality == "OT"]
    assert capture.BurnedInAnnotation == "NO"
    assert (capture.pixel_array[3:8, 2:6] == 0).all() and capture.pixel_array[0, 0] == 1000


def test_reidentification_needs_the_grant_over_http_and_cli_and_is_audited(
    hub: DicomhubServer, tmp_path: Path
) -> None:
    study = data.make_study(images_per_series=1)
    store_study(hub, study, tmp_path / "in")
    rc, out = cli(
        hub, "deid-job", "start", study.study_uid, "--project", "P1", "--reason", "r", "--now", "--json"
    )
    assert rc == 0, out
    target = json.loads(out)["target_study_uid"]
    url = f"{hub.base_url}/deid/projects/P1/reidentify"
    body = {"values": [target]}
    me = getpass.getuser()

    def audit_count() -> int:
        rc, out = cli(hub, "audit", "--json", "--limit", "100000")
        assert rc == 0, out
        return len([e for e in json.loads(out) if e["action"] == "reidentify"])

    before = audit_count()
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url, json=body, headers=bearer("dh_not-a-token")).status_code == 401
    clerk = make_token(hub, "clerk")
    assert httpx.post(url, json=body, headers=bearer(clerk)).status_code == 403
    rc, out = cli(hub, "reidentify", "--project", "P1", target, secret=False)
    assert rc != 0 and "reidentifier" in out
    assert audit_count() == before + 4

    grant(hub, "clerk", "reidentifier")
    r = httpx.post(url, json=body, headers=bearer(clerk))
    assert r.status_code == 200, r.text
    assert r.json() == {target: [{"kind": "uid", "original": study.study_uid}]}
    grant(hub, me, "reidentifier")
    rc, out = cli(hub, "reidentify", "--project", "P1", target, secret=False)
    assert rc == 0 and study.study_uid in out, out
    rc, out = cli(hub, "token", "revoke", "clerk")
    assert rc == 0, out
    assert httpx.post(url, json=body, headers=bearer(clerk)).status_code == 401
    assert audit_count() == before + 7

    rc, out = cli(hub, "audit", "--actor", "clerk", "--json")
    outcomes = [e["detail"]["result"] for e in json.loads(out) if e["action"] == "reidentify"]
    assert outcomes == ["allowed", "forbidden"]
    rc, out = cli(hub, "audit", "--study", study.study_uid)
    assert rc == 0 and "deid-run-start" in out
    assert data.SECRET not in hub.log_text()


def test_a_cmove_to_a_deidentifying_destination_sends_nothing_identifiable(
    hub: DicomhubServer, destination: StoreSCP, tmp_path: Path
) -> None:
    study = data.make_study(capture=True)
    store_study(hub, study, tmp_path / "in")
    destination.clear()
    result = move(hub, "DEIDSCP", "STUDY", {"StudyInstanceUID": study.study_uid})
    counts = result.final_counts()
    assert (counts["completed"], counts["failed"]) == (7, 1), result.output[-3000:]
    received = list(read_dir(destination.out_dir).values())
    assert len(received) == 7
    targets = {str(d.StudyInstanceUID) for d in received}
    (target,) = targets
    assert_deidentified(received, study, target)
    for ds in received:
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    rc, out = cli(hub, "audit", "--study", study.study_uid, "--json")
    (event,) = [e for e in json.loads(out) if e["detail"].get("event") == "deid-export"]
    assert event["principal"] == "MOVESCU" and event["detail"]["destination"] == "DEIDSCP"
    rc, out = cli(hub, "deid-job", "show", str(event["detail"]["run"]), "--json")
    run = json.loads(out)
    assert (run["kind"], run["status"], run["stored"], run["refused"]) == ("export", "done", 7, 1)


def test_a_run_resumes_after_kill9_without_duplicates(servers: ServerPool, tmp_path: Path) -> None:
    srv = servers.start(env=SECRET_ENV, args=["--workers", "1"])
    study_uid, series_uid = datagen.uid(), datagen.uid()
    directory = tmp_path / "many"
    for n in range(240):
        datagen.write_instance(
            directory / f"i{n:04d}.dcm", study_uid=study_uid, series_uid=series_uid, instance_number=n + 1,
            patient_id=data.PATIENT_ID, rows=8, cols=8,
        )  # fmt: skip
    store_ok(srv, directory, expect=240)
    token = make_token(srv, "bot")
    grant(srv, "bot", "deidentifier", project="P9")
    r = httpx.post(
        f"{srv.base_url}/deid/jobs",
        json={"project": "P9", "study": study_uid, "reason": "crash test"},
        headers=bearer(token),
    )
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]

    def started() -> dict[str, Any] | None:
        run: dict[str, Any] = httpx.get(f"{srv.base_url}/deid/jobs/{run_id}", headers=bearer(token)).json()
        return run if run["stored"] > 0 else None

    at_kill = wait_until(started, timeout=60, interval=0.02, what="run under way")
    srv.kill9()
    assert at_kill["status"] == "running" and at_kill["stored"] < 240, at_kill  # type: ignore[index]
    srv.restart()
    run = wait_done(srv, run_id, token, timeout=120)
    assert run["status"] == "done" and run["failed"] == 0, run
    assert run["stored"] + run["already_present"] == 240
    keys = {"StudyInstanceUID": run["target_study_uid"], "NumberOfStudyRelatedInstances": None}
    (found,) = find(srv, "STUDY", keys, tmp_path / "f")
    assert int(found.NumberOfStudyRelatedInstances) == 240
    assert len({i["target_sop_instance_uid"] for i in run["items"]}) == 240
