"""The trash and retention against a real ``dicomhub serve``: a delete over DICOMweb
moves a study to the trash (C-FIND and QIDO-RS no longer see it, its blobs stay),
``GET /trash`` lists it, a restore brings back the same instances with the same bytes,
a restore over instances stored again is refused, a purge removes the blobs, the keep
time purges by itself, and the ``[[retention]]`` rules list (dry run) and delete into
the trash, by command and in the background.

Objects are sent with DCMTK storescu and looked for with findscu and QIDO-RS.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import datagen
import httpx
import pytest
from pydicom.dataset import Dataset

from .helpers import (
    DicomhubServer,
    ServerPool,
    find,
    index_rows,
    read_blob,
    run_cli,
    store_ok,
    wait_until,
)

pytestmark = pytest.mark.e2e

TODAY = dt.date.today().strftime("%Y%m%d")
OLD = "20100101"
RULE = """
[[retention]]
name = "old-mr"
older_than = "365d"
by = "study_date"
modality = "MR"
"""


def _config(path: Path, interval: str) -> Path:
    path.write_text(f'retention_interval = "{interval}"\n{RULE}', encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The background run is off: the command's dry run must find what it lists untouched.
    return _config(tmp_path_factory.mktemp("config") / "dicomhub.toml", "0")


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool, config: Path) -> DicomhubServer:
    """The default keep time (7 days): nothing expires while the module runs."""
    return module_servers.start(args=["--config", str(config)])


def _store(server: DicomhubServer, src: Path, count: int = 1, **kwargs: Any) -> list[Dataset]:
    """``count`` instances of one study written to ``src`` (a new folder) and sent with storescu."""
    study = kwargs.pop("study_uid", None) or datagen.uid()
    pid = kwargs.pop("patient_id", None) or "T" + datagen.uid()[-8:]
    kwargs.setdefault("series_uid", datagen.uid())  # one series per call
    made = [
        datagen.write_instance(
            src / f"{study[-6:]}-{n}.dcm", study_uid=study, patient_id=pid, instance_number=n, **kwargs
        )
        for n in range(1, count + 1)
    ]  # fmt: skip
    store_ok(server, src, expect=count)
    return made


def _wado(server: DicomhubServer, ds: Dataset) -> bytes:
    r = httpx.get(
        f"{server.base_url}/dicomweb/wado",
        params={"requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID,
                "objectUID": ds.SOPInstanceUID, "contentType": "application/dicom"},
        timeout=30,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    return r.content


def _blob_keys(server: DicomhubServer, table: str, study: str) -> dict[str, str]:
    """SOP Instance UID -> blob key of a study's rows in ``instance`` or ``trash``."""
    if table == "trash":
        sql = "SELECT sop_instance_uid, blob_key FROM trash WHERE study_instance_uid = :s"
    else:
        sql = (
            "SELECT i.sop_instance_uid, i.blob_key FROM instance i JOIN series se ON se.pk = i.series_pk "
            "JOIN study st ON st.pk = se.study_pk WHERE st.study_instance_uid = :s"
        )
    return {str(uid): str(key) for uid, key in index_rows(server.data_dir, sql, s=study)}


def _trash(server: DicomhubServer) -> dict[str, dict[str, Any]]:
    r = httpx.get(f"{server.base_url}/trash", timeout=30)
    assert r.status_code == 200, r.text
    return {s["study_instance_uid"]: s for s in r.json()}


def _qido_studies(server: DicomhubServer, study: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{server.base_url}/dicomweb/studies", params={"StudyInstanceUID": study}, timeout=30)
    assert r.status_code in (200, 204), r.text
    return [] if r.status_code == 204 else list(r.json())


def test_delete_to_trash_and_restore(hub: DicomhubServer, tmp_path: Path) -> None:
    ct = _store(hub, tmp_path / "ct", 2, modality="CT", study_date=TODAY)
    study = str(ct[0].StudyInstanceUID)
    mr = _store(
        hub,
        tmp_path / "mr",
        1,
        modality="MR",
        study_uid=study,
        patient_id=str(ct[0].PatientID),
        study_date=TODAY,
    )
    instances = [*ct, *mr]
    sops = {str(d.SOPInstanceUID) for d in instances}
    before = {str(d.SOPInstanceUID): _wado(hub, d) for d in instances}
    keys = _blob_keys(hub, "instance", study)
    seq = int(index_rows(hub.data_dir, "SELECT COALESCE(MAX(seq), 0) FROM change")[0][0])  # type: ignore[call-overload]

    assert httpx.delete(f"{hub.base_url}/dicomweb/studies/{study}", timeout=30).status_code == 204
    assert _qido_studies(hub, study) == []
    assert find(hub, "STUDY", {"StudyInstanceUID": study}, tmp_path / "f1") == []
    assert _blob_keys(hub, "trash", study) == keys  # the blobs are kept, under their keys
    assert all(read_blob(hub.data_dir, k) is not None for k in keys.values())
    listed = _trash(hub)[study]
    assert (listed["instances"], listed["series"], listed["modalities"]) == (3, 2, ["CT", "MR"])
    assert listed["patient_id"] == str(ct[0].PatientID) and listed["deleted_by"] == ["anonymous"]
    deleted_at = dt.datetime.fromisoformat(listed["deleted_at"])
    assert dt.datetime.fromisoformat(listed["purge_at"]) - deleted_at == dt.timedelta(days=7)

    r = httpx.post(f"{hub.base_url}/trash/{study}/restore", timeout=60)
    assert r.status_code == 200, r.text
    assert set(r.json()["restored"]) == sops and r.json()["conflicts"] == []
    found = []
    for se in {str(d.SeriesInstanceUID) for d in instances}:
        query = {"StudyInstanceUID": study, "SeriesInstanceUID": se, "SOPInstanceUID": None}
        found += [str(d.SOPInstanceUID) for d in find(hub, "IMAGE", query, tmp_path / se)]
    assert sorted(found) == sorted(sops)
    (qido,) = _qido_studies(hub, study)
    assert qido["00201208"]["Value"] == [3] and qido["00201206"]["Value"] == [2]
    assert qido["00080061"]["Value"] == ["CT", "MR"]
    assert {uid: _wado(hub, d) for uid, d in ((str(d.SOPInstanceUID), d) for d in instances)} == before
    assert _blob_keys(hub, "instance", study) == keys and _blob_keys(hub, "trash", study) == {}
    created = index_rows(
        hub.data_dir,
        "SELECT uid FROM change WHERE change_type = 'created' AND level = 'IMAGE' AND seq > :s",
        s=seq,
    )
    assert {str(u) for (u,) in created} == sops  # the change feed sees them again
    assert study not in _trash(hub)
    assert httpx.post(f"{hub.base_url}/trash/{study}/restore", timeout=30).status_code == 404


def test_restore_conflict_then_purge(hub: DicomhubServer, tmp_path: Path) -> None:
    (ds,) = _store(hub, tmp_path / "src", 1, study_date=TODAY)
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    url = f"{hub.base_url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    assert httpx.delete(url, timeout=30).status_code == 204
    (trashed,) = _blob_keys(hub, "trash", study).values()
    store_ok(hub, tmp_path / "src", expect=1)  # the same UID stored again
    (live,) = _blob_keys(hub, "instance", study).values()

    r = httpx.post(f"{hub.base_url}/trash/{study}/restore", timeout=30)
    assert r.status_code == 409, r.text
    assert "stored again" in r.json()["error"]
    assert _blob_keys(hub, "instance", study) == {sop: live}  # not overwritten
    assert study in _trash(hub)

    r = httpx.delete(f"{hub.base_url}/trash/{study}", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["instances"] == 1
    assert read_blob(hub.data_dir, trashed) is None
    assert read_blob(hub.data_dir, live) is not None
    assert study not in _trash(hub)
    assert httpx.delete(f"{hub.base_url}/trash/{study}", timeout=30).status_code == 404
    assert httpx.post(f"{hub.base_url}/trash/{datagen.uid()}/restore", timeout=30).status_code == 404


def test_retention_dry_run_then_run(hub: DicomhubServer, config: Path, tmp_path: Path) -> None:
    (old_mr,) = _store(hub, tmp_path / "a", 1, modality="MR", study_date=OLD)
    (old_ct,) = _store(hub, tmp_path / "b", 1, modality="CT", study_date=OLD)
    (new_mr,) = _store(hub, tmp_path / "c", 1, modality="MR", study_date=TODAY)
    cli = ("--config", str(config), "--data-dir", str(hub.data_dir))

    rc, out = run_cli("retention", "run", "--dry-run", "--json", *cli)
    assert rc == 0, out
    (rule,) = json.loads(out)["rules"]
    listed = {s["study_instance_uid"] for s in rule["studies"]}
    assert str(old_mr.StudyInstanceUID) in listed
    assert listed.isdisjoint({str(old_ct.StudyInstanceUID), str(new_mr.StudyInstanceUID)})
    assert rule["deleted"] == []
    assert _qido_studies(hub, str(old_mr.StudyInstanceUID)) != []  # a dry run deletes nothing

    rc, out = run_cli("retention", "run", "--json", *cli)
    assert rc == 0, out
    assert str(old_mr.StudyInstanceUID) in json.loads(out)["rules"][0]["deleted"]
    assert _qido_studies(hub, str(old_mr.StudyInstanceUID)) == []
    assert _qido_studies(hub, str(old_ct.StudyInstanceUID)) != []
    assert _qido_studies(hub, str(new_mr.StudyInstanceUID)) != []
    assert _trash(hub)[str(old_mr.StudyInstanceUID)]["reasons"] == ["retention rule old-mr"]
    study = str(old_mr.StudyInstanceUID)
    rc, out = run_cli(
        "audit", "--action", "delete", "--study", study, "--json", "--data-dir", str(hub.data_dir)
    )
    assert rc == 0, out
    assert any(e.get("detail", {}).get("retention") == "old-mr" for e in json.loads(out))


def test_keep_time_and_background_retention(module_servers: ServerPool, tmp_path: Path) -> None:
    """Keep time 2 s, the rules applied every second: both happen without being asked."""
    config = _config(tmp_path / "fast.toml", "1s")
    server = module_servers.start(args=["--config", str(config)], env={"DICOMHUB_TRASH_KEEP": "2s"})
    (old_mr,) = _store(server, tmp_path / "a", 1, modality="MR", study_date=OLD)
    (recent,) = _store(server, tmp_path / "b", 1, modality="CT", study_date=TODAY)
    # The background run may have taken it already: its key is in one table or the other.
    old_study = str(old_mr.StudyInstanceUID)
    (old_key,) = {
        **_blob_keys(server, "instance", old_study),
        **_blob_keys(server, "trash", old_study),
    }.values()
    recent_key = next(iter(_blob_keys(server, "instance", str(recent.StudyInstanceUID)).values()))
    assert (
        httpx.delete(f"{server.base_url}/dicomweb/studies/{recent.StudyInstanceUID}", timeout=30).status_code
        == 204
    )
    assert read_blob(server.data_dir, recent_key) is not None  # in the trash for now

    wait_until(lambda: _qido_studies(server, old_study) == [], timeout=20,
               what="the background retention run")  # fmt: skip
    wait_until(
        lambda: (
            read_blob(server.data_dir, recent_key) is None and read_blob(server.data_dir, old_key) is None
        ),
        timeout=20,
        what="the purge after the keep time",
    )
    assert _trash(server) == {}
    assert index_rows(server.data_dir, "SELECT count(*) FROM trash") == [(0,)]


def test_a_reject_rule_rejects_instead_of_deleting(hub: DicomhubServer, tmp_path: Path) -> None:
    """A rule with ``action = "reject"`` (a configuration of its own, run by the command
    while the server runs): the study's instances are rejected for an expired retention
    period (113039) and hidden, not put in the trash."""
    stored = _store(hub, tmp_path / "x", 2, modality="CT", study_date="19000101")
    study = str(stored[0].StudyInstanceUID)
    config = tmp_path / "reject.toml"
    config.write_text('[[retention]]\nname = "expired"\nolder_than = "100y"\naction = "reject"\n')
    cli = ("--config", str(config), "--data-dir", str(hub.data_dir))
    rc, out = run_cli("retention", "run", "--dry-run", *cli)
    assert rc == 0 and "expired: reject" in out and "would reject 1 studies" in out and study in out, out
    rc, out = run_cli("retention", "run", "--json", *cli)
    assert rc == 0, out
    assert json.loads(out)["rules"][0]["rejected"] == [study]
    r = httpx.get(f"{hub.base_url}/dicomweb/studies/{study}/instances", timeout=30)
    assert r.status_code in (200, 204), r.text
    left = [] if r.status_code == 204 else [i["00080016"]["Value"][0] for i in r.json()]
    assert left == ["1.2.840.10008.5.1.4.1.1.88.59"]  # only the rejection note (a KOS) is found
    assert study not in _trash(hub)
