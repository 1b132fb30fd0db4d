"""Corrections of stored studies: modify (in place and with new UIDs), split,
merge of studies and of patients, with their records and audit events.

One server for the module; the corrections run through the ``dicomhub`` CLI on
its index while it serves, and the results are read back with real clients:
findscu and getscu (DCMTK), QIDO-RS and WADO-RS (httpx).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import datagen
import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from .helpers import (
    DicomhubServer,
    ServerPool,
    assert_alive,
    find,
    get,
    read_dir,
    run_cli,
    split_multipart,
    store_ok,
)

pytestmark = pytest.mark.e2e

KOS = "1.2.840.10008.5.1.4.1.1.88.59"


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool) -> DicomhubServer:
    return module_servers.start("corrections")


def _study(srv: DicomhubServer, tmp: Path, pid: str, series: tuple[int, ...] = (2,)) -> tuple[str, list[str]]:
    """A stored study with ``series[i]`` instances in its i-th series; its UID and the series UIDs."""
    study, uids = datagen.uid(), [datagen.uid() for _ in series]
    tmp.mkdir(parents=True, exist_ok=True)
    for s, (series_uid, n) in enumerate(zip(uids, series, strict=True)):
        for i in range(n):
            datagen.write_instance(
                tmp / f"{s}-{i}.dcm", study_uid=study, series_uid=series_uid, patient_id=pid,
                patient_name="Doe^Jane", accession="ACC1", instance_number=i + 1,
            )  # fmt: skip
    store_ok(srv, tmp, expect=sum(series))
    return study, uids


def _cli(srv: DicomhubServer, *args: str) -> Any:
    code, out = run_cli(*args, "--data-dir", str(srv.data_dir))
    assert code == 0, out
    start = min(i for i in (out.find("{"), out.find("[")) if i >= 0)
    return json.loads(out[start:])


def _images(srv: DicomhubServer, study: str) -> list[dict[str, Any]]:
    """QIDO-RS instances of ``study`` other than rejection notes."""
    r = httpx.get(f"{srv.base_url}/dicomweb/studies/{study}/instances", timeout=30.0)
    assert r.status_code in (200, 204), r.text
    rows = [] if r.status_code == 204 else r.json()
    return [m for m in rows if m["00080016"]["Value"][0] != KOS]


def _wado_one(srv: DicomhubServer, study: str) -> Dataset:
    r = httpx.get(
        f"{srv.base_url}/dicomweb/studies/{study}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        timeout=60.0,
    )
    assert r.status_code == 200, r.text
    parts = split_multipart(r.content, r.headers["content-type"])
    return pydicom.dcmread(io.BytesIO(parts[0][1]))


def test_modify_in_place(hub: DicomhubServer, tmp_path: Path) -> None:
    study, _ = _study(hub, tmp_path / "s", "MODP1")
    since = httpx.get(f"{hub.base_url}/changes", params={"limit": "1000"}, timeout=30).json()["last"]
    done = _cli(hub, "study", "modify", study, "--set", "PatientName=Roe^Jane",
                "--set", "AccessionNumber=ACC9", "--set", "StudyDescription=Fixed")  # fmt: skip
    assert (done["new_study_instance_uid"], done["original_values"], done["new_values"]) == (
        study,
        {"PatientName": "Doe^Jane", "AccessionNumber": "ACC1", "StudyDescription": "Test study"},
        {"PatientName": "Roe^Jane", "AccessionNumber": "ACC9", "StudyDescription": "Fixed"},
    )
    keys = {"StudyInstanceUID": study, "PatientName": None, "AccessionNumber": None, "StudyDescription": None}
    (found,) = find(hub, "STUDY", keys, tmp_path / "f")
    assert (str(found.PatientName), found.AccessionNumber, found.StudyDescription) == (
        "Roe^Jane",
        "ACC9",
        "Fixed",
    )
    ds = _wado_one(hub, study)
    assert (str(ds.PatientName), ds.AccessionNumber, ds.StudyInstanceUID) == ("Roe^Jane", "ACC9", study)
    old = Dataset()
    for item in ds.OriginalAttributesSequence:
        old.update(item.ModifiedAttributesSequence[0])
    assert (str(old.PatientName), old.AccessionNumber, old.StudyDescription) == (
        "Doe^Jane",
        "ACC1",
        "Test study",
    )
    r = httpx.get(f"{hub.base_url}/dicomweb/studies/{study}/metadata", timeout=30.0)
    assert r.status_code == 200 and {m["00080050"]["Value"][0] for m in r.json()} == {"ACC9"}, r.text
    # Routing and webhooks follow the change log: the study is announced as updated.
    page = httpx.get(
        f"{hub.base_url}/changes", params={"since": str(since), "limit": "1000"}, timeout=30
    ).json()
    assert ("updated", "STUDY", study) in {(c["change_type"], c["level"], c["uid"]) for c in page["changes"]}


def test_modify_with_new_uids(hub: DicomhubServer, tmp_path: Path) -> None:
    study, (series,) = _study(hub, tmp_path / "s", "MODN1")
    done = _cli(hub, "study", "modify", study, "--set", "AccessionNumber=ACC2", "--set",
                "StudyDescription=Fixed", "--new-uids", "--reason", "wrong order")  # fmt: skip
    new = done["new_study_instance_uid"]
    assert new != study and done["uid_map"][study] == new and series in done["uid_map"]
    assert done["original_values"] == {"AccessionNumber": "ACC1", "StudyDescription": "Test study"}

    (found,) = find(hub, "STUDY", {"AccessionNumber": "ACC2", "StudyInstanceUID": None}, tmp_path / "f")
    assert found.StudyInstanceUID == new
    got = get(hub, "STUDY", {"StudyInstanceUID": new}, tmp_path / "get")
    assert got.returncode == 0, got.output
    received = read_dir(tmp_path / "get")
    assert len(received) == 2
    for ds in received.values():
        assert (ds.StudyInstanceUID, ds.AccessionNumber, ds.SeriesInstanceUID) == (
            new,
            "ACC2",
            done["uid_map"][series],
        )
        old = ds.OriginalAttributesSequence[-1]
        assert old.ReasonForTheAttributeModification == "CORRECT"
        assert (
            old.ModifiedAttributesSequence[0].StudyInstanceUID,
            old.ModifiedAttributesSequence[0].AccessionNumber,
        ) == (study, "ACC1")
    # The originals are rejected: hidden from C-FIND images and QIDO-RS.
    assert _images(hub, study) == []
    keys = {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": None}
    assert find(hub, "IMAGE", keys, tmp_path / "f2") == []

    records = httpx.get(f"{hub.base_url}/admin/corrections", params={"study": study}, timeout=30).json()
    assert [(r["kind"], r["new_study_instance_uid"], r["reason"]) for r in records] == [
        ("modify", new, "wrong order")
    ]
    code, out = run_cli(
        "audit", "--action", "correction", "--study", new, "--json", "--data-dir", str(hub.data_dir)
    )
    assert code == 0, out
    (event,) = json.loads(out[out.index("[") :])
    assert (event["outcome"], event["detail"]["kind"], event["detail"]["correction"]) == (
        "0",
        "modify",
        done["id"],
    )
    assert {s["study_instance_uid"] for s in event["studies"]} == {study, new}


def test_split_then_merge_back(hub: DicomhubServer, tmp_path: Path) -> None:
    study, (keep, move) = _study(hub, tmp_path / "s", "SPLIT1", series=(2, 1))
    done = _cli(hub, "study", "split", study, "--series", move, "--set", "StudyDescription=Split off")
    new = done["new_study_instance_uid"]
    assert [len(_images(hub, study)), len(_images(hub, new))] == [2, 1]
    assert {m["0020000E"]["Value"][0] for m in _images(hub, study)} == {keep}

    # The merge back over REST (as dicomhub study merge).
    r = httpx.post(
        f"{hub.base_url}/api/studies/{study}/merge", json={"sources": [new], "reason": "undo"}, timeout=120
    )
    assert r.status_code == 200, r.text
    assert r.json()["kind"] == "merge-studies"
    assert [len(_images(hub, study)), len(_images(hub, new))] == [3, 0]
    merged = [m for m in _images(hub, study) if m["0020000E"]["Value"][0] != keep]
    assert len(merged) == 1


def test_merge_patients_and_refusals(hub: DicomhubServer, tmp_path: Path) -> None:
    a, _ = _study(hub, tmp_path / "a", "PATA")
    b, (b_series,) = _study(hub, tmp_path / "b", "PATB")
    # The keyword rules are unit-tested (tests/unit/test_correction.py); here the
    # refusals that need the archive: each exits non-zero with its reason, changing nothing.
    code, out = run_cli("study", "merge", a, b, "--data-dir", str(hub.data_dir))
    assert code != 0 and "--force" in out, out  # two patients
    api = f"{hub.base_url}/api"
    r = httpx.post(f"{api}/studies/{a}/split", json={"series": [b_series]}, timeout=60)
    assert r.status_code == 404 and "is not in study" in r.text, r.text
    r = httpx.post(f"{api}/patient-merges", json={"into": "PATA", "from": "NOBODY"}, timeout=60)
    assert r.status_code == 404 and "no study" in r.text, r.text
    assert [len(_images(hub, a)), len(_images(hub, b))] == [2, 2]

    done = _cli(hub, "patient", "merge", "--into", "PATA", "--from", "PATB", "--reason", "duplicate")
    assert done["kind"] == "merge-patients" and done["original_values"]["patient_id"] == "PATB"
    found = find(hub, "STUDY", {"PatientID": "PATA", "StudyInstanceUID": None}, tmp_path / "f")
    assert {f.StudyInstanceUID for f in found} == {a, b}
    # Only the merge is recorded, and it is found by either study.
    records = _cli(hub, "study", "corrections", b)
    assert [(r["kind"], r["original_values"]["studies"]) for r in records] == [("merge-patients", [b])]
    r = httpx.get(f"{hub.base_url}/admin/corrections", params={"study": b}, timeout=30)
    assert r.status_code == 200 and r.json() == records, r.text


def test_rest_refusals(hub: DicomhubServer, tmp_path: Path) -> None:
    study, _ = _study(hub, tmp_path / "s", "REST1", series=(1,))
    api = f"{hub.base_url}/api/studies"
    with httpx.Client(timeout=60) as http:
        for path, body, status, says in [
            (f"{api}/{study}/modify", {"set": {"Frobnicate": "1"}}, 400, "not a DICOM keyword"),
            (f"{api}/{study}/modify", {"set": {"SOPInstanceUID": "1.2"}, "new_uids": True}, 400, "is a UID"),
            (f"{api}/{study}/modify", {"set": {"StudyDate": "2024"}, "new_uids": True}, 400, "StudyDate"),
            (f"{api}/{study}/modify", {"set": {"StudyID": "1"}, "new_uids": "yes"}, 400, "new_uids"),
            (f"{api}/{datagen.uid()}/modify", {"set": {"StudyID": "1"}, "new_uids": True}, 404, "no "),
            (f"{api}/not..uid/modify", {"set": {"StudyID": "1"}}, 400, "StudyInstanceUID"),
        ]:
            r = http.post(path, json=body)
            assert (r.status_code, says in r.text) == (status, True), (path, body, r.text)
        r = http.get(f"{hub.base_url}/admin/corrections", params={"study": study})
        assert (r.status_code, r.json()) == (200, [])
    assert len(_images(hub, study)) == 1
    assert_alive(hub)
    assert_alive(hub)
