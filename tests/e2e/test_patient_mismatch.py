"""A study UID arriving under a different PatientID is refused (0xC4xx),
recorded as a conflict with the bytes kept in quarantine, and the study stays
with its first patient."""

from __future__ import annotations

import re
from pathlib import Path

import datagen
import pytest

from .helpers import (
    DicomhubServer,
    assert_same_instances,
    find,
    get,
    index_rows,
    ls_json,
    read_blob,
    read_dir,
    store,
    store_ok,
)

pytestmark = pytest.mark.e2e


def test_study_under_other_patient_is_refused(server: DicomhubServer, tmp_path: Path) -> None:
    tag = datagen.uid()[-8:]
    pid_a, pid_b = "PMA" + tag, "PMB" + tag
    original = datagen.write_ct_series(
        tmp_path / "orig", 3, rows=16, cols=16, patient_id=pid_a, patient_name="First^Patient"
    )
    study_uid = str(original[0].StudyInstanceUID)
    store_ok(server, tmp_path / "orig", expect=3)

    # new series (new SOP UIDs) of the same study, but another patient
    intruder = datagen.write_instance(
        tmp_path / "other" / "x.dcm", study_uid=study_uid, patient_id=pid_b,
        patient_name="Second^Patient", rows=16, cols=16,
    )  # fmt: skip
    res = store(server, tmp_path / "other")
    uid = str(intruder.SOPInstanceUID)
    assert uid in res.statuses, res.output[-3000:]
    status = res.statuses[uid]
    assert 0xC400 <= status <= 0xC4FF, f"expected 0xC4xx, got 0x{status:04X}\n{res.output[-3000:]}"

    # the study is unchanged and still belongs to patient A
    rows = [r for r in ls_json(server.data_dir, "study") if r["StudyInstanceUID"] == study_uid]
    assert len(rows) == 1, rows
    assert rows[0]["PatientID"] == pid_a
    assert int(rows[0]["NumberOfStudyRelatedInstances"]) == 3  # type: ignore[call-overload]
    assert not [r for r in ls_json(server.data_dir, "patient") if r["PatientID"] == pid_b]

    rsp = find(server, "STUDY", {"PatientID": pid_b, "StudyInstanceUID": None}, tmp_path / "f", model="P")
    assert rsp == []
    rsp = find(server, "IMAGE", {"PatientID": pid_a, "StudyInstanceUID": study_uid,
                                 "SeriesInstanceUID": str(intruder.SeriesInstanceUID),
                                 "SOPInstanceUID": None}, tmp_path / "f", model="P")  # fmt: skip
    assert rsp == []

    got = get(server, "STUDY", {"StudyInstanceUID": study_uid}, tmp_path / "get")
    assert got.returncode == 0, got.output[-3000:]
    received = read_dir(tmp_path / "get")
    assert_same_instances(received, original)
    assert {str(d.PatientID) for d in received.values()} == {pid_a}


def test_refused_object_is_quarantined_not_lost(server: DicomhubServer, tmp_path: Path) -> None:
    """The refused bytes are kept somewhere under the data dir."""
    tag = datagen.uid()[-8:]
    first = datagen.write_instance(tmp_path / "a" / "a.dcm", patient_id="QA" + tag, rows=16, cols=16)
    store_ok(server, tmp_path / "a", expect=1)
    intruder = datagen.write_instance(
        tmp_path / "b" / "b.dcm", study_uid=str(first.StudyInstanceUID), patient_id="QB" + tag,
        rows=16, cols=16, seed=99,
    )  # fmt: skip
    status = store(server, tmp_path / "b").statuses.get(str(intruder.SOPInstanceUID))
    assert status is not None and 0xC400 <= status <= 0xC4FF, status
    needle = bytes(intruder.PixelData)
    uid = str(intruder.SOPInstanceUID).encode()
    # Kept in quarantine: the conflict row names its blob, wherever the archive stores blobs.
    keys = index_rows(
        server.data_dir, "SELECT blob_key FROM conflict WHERE sop_instance_uid = :uid", uid=uid.decode()
    )
    kept = [read_blob(server.data_dir, str(k)) or b"" for (k,) in keys]
    hits = [data for data in kept if needle in data and uid in data]
    assert hits, f"refused object not kept (conflict rows: {keys})"


def test_same_patient_new_study_still_accepted(server: DicomhubServer, tmp_path: Path) -> None:
    """Control: after a conflict the patient can still receive new studies."""
    tag = datagen.uid()[-8:]
    a = datagen.write_instance(tmp_path / "a" / "a.dcm", patient_id="CT" + tag, rows=16, cols=16)
    store_ok(server, tmp_path / "a", expect=1)
    b = datagen.write_instance(tmp_path / "b" / "b.dcm", study_uid=str(a.StudyInstanceUID),
                               patient_id="CX" + tag, rows=16, cols=16)  # fmt: skip
    assert store(server, tmp_path / "b").statuses.get(str(b.SOPInstanceUID), 0) != 0
    c = datagen.write_instance(tmp_path / "c" / "c.dcm", patient_id="CT" + tag, rows=16, cols=16)
    store_ok(server, tmp_path / "c", expect=1)
    studies = {
        r["StudyInstanceUID"] for r in ls_json(server.data_dir, "study") if r["PatientID"] == "CT" + tag
    }
    assert studies == {str(a.StudyInstanceUID), str(c.StudyInstanceUID)}
    assert not re.search(r"CX" + tag, str(ls_json(server.data_dir, "patient")))
