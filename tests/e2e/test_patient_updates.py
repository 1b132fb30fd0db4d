"""Patient updates and merges reach the archive, and objects leave it corrected.

One server (``--hl7-port``, patient_id_issuer HOSP) for the module. A study
stored with storescu, then ADT^A08 over MLLP (the ``hl7`` package's client):
findscu (patient and study level) and QIDO-RS show the new demographics;
getscu, movescu (to storescp) and WADO-RS give objects with the new Patient module and the old
values in Original Attributes Sequence, while the stored blob and its SHA-256
stay as received. ADT^A40 moves a study under the surviving Patient ID;
``dicomhub study set-patient`` and ``PUT /api/studies/{uid}/patient`` move one
study; bad input (unknown study, unknown prior patient, malformed UID) gets a
clear refusal and the server stays up.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import datagen
import hl7.client
import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from .helpers import (
    HOST,
    DicomhubServer,
    ServerPool,
    StoreSCP,
    assert_alive,
    find,
    free_port,
    get,
    index_rows,
    move,
    read_blob,
    read_dir,
    run_cli,
    split_multipart,
    store_ok,
)

pytestmark = pytest.mark.e2e

MSH = "MSH|^~\\&|RIS|HOSP|DICOMHUB|ARCH|20260101120000||{type}|{id}|P|2.5.1||||||UNICODE UTF-8"
PID = "PID|||{pid}^^^HOSP^MR||{name}||{birth}|{sex}"


@pytest.fixture(scope="module")
def dest(storescp_factory: Callable[..., StoreSCP]) -> StoreSCP:
    return storescp_factory(aet="COERCEDEST")


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool, dest: StoreSCP) -> DicomhubServer:
    port = free_port()
    srv = module_servers.start(
        "coerce",
        args=["--hl7-port", str(port)],
        env={"DICOMHUB_PATIENT_ID_ISSUER": "HOSP"},
        remote_aes={dest.aet: dest.address},
    )
    srv.hl7_port = port  # type: ignore[attr-defined]
    return srv


def _send(srv: DicomhubServer, *segments: str) -> tuple[str, str]:
    client = hl7.client.MLLPClient(HOST, srv.hl7_port, encoding="utf-8")  # type: ignore[attr-defined]
    try:
        reply = client.send_message("\r".join(segments))
    finally:
        client.close()
    text = reply.decode("utf-8") if isinstance(reply, bytes) else str(reply)
    segs = text.strip("\x0b\x1c\r").split("\r")
    msa = next(s for s in segs if s.startswith("MSA")).split("|")
    return msa[1], next((s for s in segs if s.startswith("ERR")), "")


def _store_study(srv: DicomhubServer, tmp: Path, pid: str, n: int = 2) -> tuple[str, list[Dataset]]:
    study = datagen.uid()
    series = datagen.uid()
    tmp.mkdir(parents=True, exist_ok=True)
    written = [
        datagen.write_instance(
            tmp / f"{i}.dcm",
            study_uid=study,
            series_uid=series,
            patient_id=pid,
            patient_name="Doe^John",
            birth_date="19700101",
            sex="M",
            instance_number=i + 1,
        )  # fmt: skip
        for i in range(n)
    ]
    store_ok(srv, tmp, expect=n)
    return study, written


def _blobs(srv: DicomhubServer, study: str) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (SHA-256 the index records, SHA-256 of the stored bytes)."""
    rows = index_rows(
        srv.data_dir,
        "SELECT i.sop_instance_uid, i.blob_key, i.sha256 FROM instance i "
        "JOIN series se ON se.pk = i.series_pk JOIN study st ON st.pk = se.study_pk "
        "WHERE st.study_instance_uid = :uid",
        uid=study,
    )
    out = {}
    for sop, key, sha in rows:
        data = read_blob(srv.data_dir, str(key))
        assert data is not None
        out[str(sop)] = (str(sha), hashlib.sha256(data).hexdigest())
    return out


def _assert_corrected(ds: Dataset, name: str, birth: str, old_name: str, old_birth: str) -> None:
    assert (str(ds.PatientName), ds.PatientBirthDate) == (name, birth)
    item = ds.OriginalAttributesSequence[-1]
    assert item.ReasonForTheAttributeModification == "CORRECT"
    assert item.ModifyingSystem and item.AttributeModificationDateTime
    old = item.ModifiedAttributesSequence[0]
    assert (str(old.PatientName), old.PatientBirthDate) == (old_name, old_birth)


def test_a08_reaches_query_and_retrieve_without_touching_blobs(hub: DicomhubServer, tmp_path: Path) -> None:
    study, written = _store_study(hub, tmp_path / "in", "PU1")
    before = _blobs(hub, study)
    assert all(recorded == actual for recorded, actual in before.values())

    adt = (
        MSH.format(type="ADT^A08", id="u1"),
        PID.format(pid="PU1", name="Roe^Jane", birth="19810203", sex="F"),
    )
    assert _send(hub, *adt) == ("AA", "")

    (patient,) = find(hub, "PATIENT", {"PatientID": "PU1", "PatientName": None, "PatientBirthDate": None},
                      tmp_path / "fp", model="P")  # fmt: skip
    assert (str(patient.PatientName), patient.PatientBirthDate) == ("Roe^Jane", "19810203")
    (found,) = find(hub, "STUDY", {"StudyInstanceUID": study, "PatientName": None, "PatientSex": None},
                    tmp_path / "fs")  # fmt: skip
    assert (str(found.PatientName), found.PatientSex) == ("Roe^Jane", "F")
    assert find(hub, "STUDY", {"PatientName": "ROE^JANE", "StudyInstanceUID": None}, tmp_path / "fn")

    with httpx.Client(base_url=hub.base_url, timeout=60) as http:
        qido = http.get("/dicomweb/studies", params={"StudyInstanceUID": study})
        assert qido.status_code == 200, qido.text
        assert qido.json()[0]["00100010"]["Value"] == [{"Alphabetic": "Roe^Jane"}]
        rsp = http.get(
            f"/dicomweb/studies/{study}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert rsp.status_code == 200, rsp.text
        parts = split_multipart(rsp.content, rsp.headers["content-type"])
        assert len(parts) == len(written)
        for _headers, body in parts:
            _assert_corrected(
                pydicom.dcmread(io.BytesIO(body)), "Roe^Jane", "19810203", "Doe^John", "19700101"
            )
        meta = http.get(f"/dicomweb/studies/{study}/metadata", headers={"Accept": "application/dicom+json"})
        assert meta.status_code == 200
        assert {m["00100010"]["Value"][0]["Alphabetic"] for m in meta.json()} == {"Roe^Jane"}
        assert all(m["04000561"]["Value"][0]["04000565"]["Value"] == ["CORRECT"] for m in meta.json())

    res = get(hub, "STUDY", {"StudyInstanceUID": study}, tmp_path / "get")
    assert res.returncode == 0 and res.final_counts()["completed"] == len(written), res.output[-3000:]
    received = read_dir(tmp_path / "get")
    assert set(received) == {str(ds.SOPInstanceUID) for ds in written}
    originals = {str(ds.SOPInstanceUID): ds for ds in written}
    for uid, ds in received.items():
        _assert_corrected(ds, "Roe^Jane", "19810203", "Doe^John", "19700101")
        assert ds.PixelData == originals[uid].PixelData

    # The stored objects are as received: same bytes, same recorded digest.
    assert _blobs(hub, study) == before


def test_a40_moves_studies_and_unknown_prior_is_refused(
    hub: DicomhubServer, dest: StoreSCP, tmp_path: Path
) -> None:
    study, _ = _store_study(hub, tmp_path / "in", "PM_OLD", n=1)
    merge = (MSH.format(type="ADT^A40", id="m1"), PID.format(pid="PM_NEW", name="New^Name", birth="", sex=""),
             "MRG|PM_OLD^^^HOSP")  # fmt: skip
    assert _send(hub, *merge) == ("AA", "")
    (found,) = find(hub, "STUDY", {"PatientID": "PM_NEW", "StudyInstanceUID": None}, tmp_path / "new")
    assert found.StudyInstanceUID == study
    assert find(hub, "STUDY", {"PatientID": "PM_OLD", "StudyInstanceUID": None}, tmp_path / "old") == []
    # C-MOVE: the C-STORE sub-operations carry the surviving patient.
    dest.clear()
    res = move(hub, dest.aet, "STUDY", {"StudyInstanceUID": study})
    assert res.returncode == 0 and res.final_counts()["completed"] == 1, res.output[-3000:]
    (ds,) = read_dir(dest.out_dir).values()
    assert (ds.PatientID, str(ds.PatientName)) == ("PM_NEW", "New^Name")
    old = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    assert (old.PatientID, str(old.PatientName)) == ("PM_OLD", "Doe^John")

    survivor = PID.format(pid="PM_NEW", name="New^Name", birth="", sex="")
    unknown = (MSH.format(type="ADT^A40", id="m2"), survivor, "MRG|NOBODY^^^HOSP")
    code, err = _send(hub, *unknown)
    assert code == "AE" and "NOBODY" in err
    assert_alive(hub)


def test_set_patient_cli_and_rest(hub: DicomhubServer, tmp_path: Path) -> None:
    study, _ = _store_study(hub, tmp_path / "a", "WRONG1", n=1)
    other, _ = _store_study(hub, tmp_path / "b", "WRONG2", n=1)
    code, out = run_cli("study", "set-patient", study, "--patient-id", "RIGHT",
                        "--patient-name", "Right^Person", "--data-dir", str(hub.data_dir))  # fmt: skip
    assert code == 0, out
    found = find(hub, "STUDY", {"PatientID": "RIGHT", "StudyInstanceUID": None, "PatientName": None},
                 tmp_path / "f1")  # fmt: skip
    assert [(f.StudyInstanceUID, str(f.PatientName)) for f in found] == [(study, "Right^Person")]

    with httpx.Client(base_url=hub.base_url, timeout=60) as http:
        rsp = http.put(f"/api/studies/{other}/patient", json={"patient_id": "RIGHT"})
        assert rsp.status_code == 200, rsp.text
        # Demographics from the archive's patient RIGHT.
        assert rsp.json()["PatientName"] == "Right^Person"
        assert (
            http.put(f"/api/studies/{datagen.uid()}/patient", json={"patient_id": "RIGHT"}).status_code == 404
        )
        bad = http.put("/api/studies/not..a.uid/patient", json={"patient_id": "RIGHT"})
        assert bad.status_code == 400, bad.text
        assert http.put(f"/api/studies/{other}/patient", json={"patient": "x"}).status_code == 400
        wado = http.get(
            f"/dicomweb/studies/{other}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        ((_h, body),) = split_multipart(wado.content, wado.headers["content-type"])
        ds = pydicom.dcmread(io.BytesIO(body))
        assert (ds.PatientID, ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientID) == (
            "RIGHT", "WRONG2",
        )  # fmt: skip
    found = find(hub, "STUDY", {"PatientID": "RIGHT", "StudyInstanceUID": None}, tmp_path / "f2")
    assert {f.StudyInstanceUID for f in found} == {study, other}

    code, out = run_cli("study", "set-patient", datagen.uid(), "--patient-id", "RIGHT",
                        "--data-dir", str(hub.data_dir))  # fmt: skip
    assert code != 0 and "no study" in out
    assert_alive(hub)
