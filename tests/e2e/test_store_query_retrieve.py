"""Store a CT series with storescu, query it at every level, retrieve it with
C-GET and C-MOVE (the issue's "done when")."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datagen
import pytest
from pydicom.dataset import Dataset

from .helpers import (
    DicomhubServer,
    ServerPool,
    StoreResult,
    StoreSCP,
    assert_same_instances,
    find,
    get,
    ls_json,
    move,
    read_dir,
    run_cli,
    store_ok,
    wait_until,
)

pytestmark = pytest.mark.e2e

N_SLICES = 30
DEST_AET = "E2EDEST"


@dataclass
class Stored:
    pid: str
    study_uid: str
    series_uid: str
    datasets: list[Dataset]
    mr: Dataset
    store_result: StoreResult


@pytest.fixture(scope="module")
def dest(storescp_factory: Callable[..., StoreSCP]) -> StoreSCP:
    return storescp_factory(aet=DEST_AET)


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool, dest: StoreSCP) -> DicomhubServer:
    return module_servers.start(remote_aes={DEST_AET: dest.address})


@pytest.fixture(scope="module")
def stored(hub: DicomhubServer, tmp_path_factory: pytest.TempPathFactory) -> Stored:
    src = tmp_path_factory.mktemp("series")
    pid = "SQR" + datagen.uid()[-8:]
    common = dict(
        patient_id=pid, patient_name="Doe^John", birth_date="19650302", sex="M",
        study_date="20200115", study_time="101500", accession="ACCSQR1",
        study_description="CT CHEST", referring_physician="Welby^Marcus", study_id="42",
        series_number=3, series_description="AXIAL 1mm", body_part="CHEST",
    )  # fmt: skip
    series = datagen.write_ct_series(src / "ct", N_SLICES, rows=64, cols=64, **common)
    study_uid = str(series[0].StudyInstanceUID)
    # one MR instance in a second series of the same study
    common.pop("series_number")
    mr = datagen.write_instance(
        src / "mr" / "mr.dcm", modality="MR", study_uid=study_uid, series_number=4, **common
    )
    res = store_ok(hub, src, expect=N_SLICES + 1)
    return Stored(pid, study_uid, str(series[0].SeriesInstanceUID), series, mr, res)


def test_store_reports_success_for_every_instance(stored: Stored) -> None:
    expected = {str(d.SOPInstanceUID) for d in stored.datasets} | {str(stored.mr.SOPInstanceUID)}
    assert set(stored.store_result.statuses) == expected
    assert set(stored.store_result.statuses.values()) == {0}


def test_ls_study_level(hub: DicomhubServer, stored: Stored) -> None:
    rows = [r for r in ls_json(hub.data_dir, "study") if r["StudyInstanceUID"] == stored.study_uid]
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["PatientID"] == stored.pid
    assert row["PatientName"] == "Doe^John"
    assert row["StudyDate"] == "20200115"
    assert row["StudyDescription"] == "CT CHEST"
    assert row["AccessionNumber"] == "ACCSQR1"
    assert sorted(row["ModalitiesInStudy"]) == ["CT", "MR"]  # type: ignore[arg-type]
    assert int(row["NumberOfStudyRelatedSeries"]) == 2  # type: ignore[call-overload]
    assert int(row["NumberOfStudyRelatedInstances"]) == N_SLICES + 1  # type: ignore[call-overload]


def test_ls_series_and_patient_level(hub: DicomhubServer, stored: Stored) -> None:
    series = {r["SeriesInstanceUID"]: r for r in ls_json(hub.data_dir, "series")}
    ct = series[stored.series_uid]
    assert ct["StudyInstanceUID"] == stored.study_uid
    assert ct["Modality"] == "CT"
    assert str(ct["SeriesNumber"]) == "3"
    assert ct["SeriesDescription"] == "AXIAL 1mm"
    assert int(ct["NumberOfSeriesRelatedInstances"]) == N_SLICES  # type: ignore[call-overload]
    patients = [r for r in ls_json(hub.data_dir, "patient") if r["PatientID"] == stored.pid]
    assert len(patients) == 1
    p = patients[0]
    assert p["PatientName"] == "Doe^John"
    assert p["PatientBirthDate"] == "19650302"
    assert p["PatientSex"] == "M"
    assert int(p["NumberOfPatientRelatedStudies"]) == 1  # type: ignore[call-overload]
    assert int(p["NumberOfPatientRelatedSeries"]) == 2  # type: ignore[call-overload]
    assert int(p["NumberOfPatientRelatedInstances"]) == N_SLICES + 1  # type: ignore[call-overload]


# ----------------------------------------------------------------------------- C-FIND


def test_find_patient_level_patient_root(hub: DicomhubServer, stored: Stored, tmp_path: Path) -> None:
    rsp = find(
        hub, "PATIENT",
        {"PatientID": stored.pid, "PatientName": None, "PatientBirthDate": None, "PatientSex": None},
        tmp_path, model="P",
    )  # fmt: skip
    assert len(rsp) == 1
    assert rsp[0].PatientID == stored.pid
    assert rsp[0].PatientName == "Doe^John"
    assert rsp[0].PatientBirthDate == "19650302"
    assert rsp[0].PatientSex == "M"
    assert rsp[0].QueryRetrieveLevel == "PATIENT"


def test_find_is_audited_after_the_answer(hub: DicomhubServer, stored: Stored, tmp_path: Path) -> None:
    # The QUERY event is committed behind the final C-FIND-RSP, at the latest when the
    # association ends; it names the level, the matching keys and the matches.
    keys = {"PatientID": stored.pid, "AccessionNumber": "ACCSQR1", "StudyInstanceUID": None}
    assert len(find(hub, "STUDY", keys, tmp_path, model="P")) == 1

    def audited() -> list[dict[str, object]] | None:
        rc, out = run_cli("audit", "--action", "query", "--json", "--data-dir", str(hub.data_dir))
        assert rc == 0, out
        events = json.loads(out)
        events = [e for e in events if e["detail"].get("keys", {}).get("AccessionNumber") == "ACCSQR1"]
        return events or None

    [event] = wait_until(audited, timeout=10, what="the QUERY audit event")
    assert event["outcome"] == "0"
    assert event["detail"]["level"] == "STUDY" and event["detail"]["matches"] == 1


@pytest.mark.parametrize("model", ["S", "P"])
def test_find_study_level(hub: DicomhubServer, stored: Stored, tmp_path: Path, model: str) -> None:
    keys: dict[str, str | None] = {
        "StudyInstanceUID": stored.study_uid, "StudyDate": None, "StudyTime": None,
        "AccessionNumber": None, "StudyDescription": None, "StudyID": None,
        "ReferringPhysicianName": None,
    }  # fmt: skip
    if model == "S":
        keys |= {"PatientID": None, "PatientName": None, "ModalitiesInStudy": None}
    else:  # patient root: the unique key of the patient level is required
        keys["PatientID"] = stored.pid
    rsp = find(hub, "STUDY", keys, tmp_path, model=model)
    assert len(rsp) == 1
    r = rsp[0]
    assert r.StudyInstanceUID == stored.study_uid
    assert r.StudyDate == "20200115"
    assert r.StudyTime.startswith("101500")
    assert r.AccessionNumber == "ACCSQR1"
    assert r.StudyDescription == "CT CHEST"
    assert r.StudyID == "42"
    assert r.ReferringPhysicianName == "Welby^Marcus"
    assert r.PatientID == stored.pid
    if model == "S":
        assert r.PatientName == "Doe^John"
        assert sorted(r.ModalitiesInStudy) == ["CT", "MR"]


@pytest.mark.parametrize("model", ["S", "P"])
def test_find_series_level(hub: DicomhubServer, stored: Stored, tmp_path: Path, model: str) -> None:
    keys: dict[str, str | None] = {
        "StudyInstanceUID": stored.study_uid, "SeriesInstanceUID": None, "Modality": None,
        "SeriesNumber": None, "SeriesDescription": None,
    }  # fmt: skip
    if model == "P":
        keys["PatientID"] = stored.pid
    rsp = find(hub, "SERIES", keys, tmp_path, model=model)
    by_uid = {str(r.SeriesInstanceUID): r for r in rsp}
    assert set(by_uid) == {stored.series_uid, str(stored.mr.SeriesInstanceUID)}
    ct = by_uid[stored.series_uid]
    assert ct.Modality == "CT"
    assert str(ct.SeriesNumber) == "3"
    assert ct.SeriesDescription == "AXIAL 1mm"
    assert by_uid[str(stored.mr.SeriesInstanceUID)].Modality == "MR"


@pytest.mark.parametrize("model", ["S", "P"])
def test_find_image_level(hub: DicomhubServer, stored: Stored, tmp_path: Path, model: str) -> None:
    keys: dict[str, str | None] = {
        "StudyInstanceUID": stored.study_uid, "SeriesInstanceUID": stored.series_uid,
        "SOPInstanceUID": None, "SOPClassUID": None, "InstanceNumber": None,
    }  # fmt: skip
    if model == "P":
        keys["PatientID"] = stored.pid
    rsp = find(hub, "IMAGE", keys, tmp_path, model=model)
    got = {str(r.SOPInstanceUID): r for r in rsp}
    expected = {str(d.SOPInstanceUID): d for d in stored.datasets}
    assert set(got) == set(expected)
    for uid, d in expected.items():
        assert got[uid].SOPClassUID == d.SOPClassUID
        assert int(got[uid].InstanceNumber) == int(d.InstanceNumber)


# ----------------------------------------------------------------------------- C-GET


def test_get_series_study_root(hub: DicomhubServer, stored: Stored, tmp_path: Path) -> None:
    res = get(
        hub, "SERIES", {"StudyInstanceUID": stored.study_uid, "SeriesInstanceUID": stored.series_uid},
        tmp_path / "get",
    )  # fmt: skip
    assert res.returncode == 0, res.output[-4000:]
    assert_same_instances(read_dir(tmp_path / "get"), stored.datasets)
    counts = res.final_counts()
    assert counts["completed"] == N_SLICES, (counts, res.output[-3000:])
    assert counts["failed"] in (0, None) and counts["warning"] in (0, None), counts
    assert res.statuses()[-1] == 0x0000, res.statuses()


def test_get_study_patient_root(hub: DicomhubServer, stored: Stored, tmp_path: Path) -> None:
    res = get(
        hub, "STUDY", {"PatientID": stored.pid, "StudyInstanceUID": stored.study_uid},
        tmp_path / "get", model="P",
    )  # fmt: skip
    assert res.returncode == 0, res.output[-4000:]
    assert_same_instances(read_dir(tmp_path / "get"), [*stored.datasets, stored.mr])
    assert res.final_counts()["completed"] == N_SLICES + 1, res.output[-3000:]


def test_get_single_image(hub: DicomhubServer, stored: Stored, tmp_path: Path) -> None:
    one = stored.datasets[7]
    res = get(
        hub, "IMAGE",
        {"StudyInstanceUID": stored.study_uid, "SeriesInstanceUID": stored.series_uid,
         "SOPInstanceUID": str(one.SOPInstanceUID)},
        tmp_path / "get",
    )  # fmt: skip
    assert res.returncode == 0, res.output[-4000:]
    assert_same_instances(read_dir(tmp_path / "get"), [one])
    assert res.final_counts()["completed"] == 1


# ----------------------------------------------------------------------------- C-MOVE


def test_move_series_to_storescp(hub: DicomhubServer, stored: Stored, dest: StoreSCP) -> None:
    dest.clear()
    res = move(
        hub, DEST_AET, "SERIES",
        {"StudyInstanceUID": stored.study_uid, "SeriesInstanceUID": stored.series_uid},
    )  # fmt: skip
    assert res.returncode == 0, res.output[-4000:]
    assert res.statuses()[-1] == 0x0000, res.statuses()
    counts = res.final_counts()
    assert counts["completed"] == N_SLICES, (counts, res.output[-3000:])
    assert counts["failed"] in (0, None), counts
    assert_same_instances(read_dir(dest.out_dir), stored.datasets)


def test_move_study_patient_root(hub: DicomhubServer, stored: Stored, dest: StoreSCP) -> None:
    dest.clear()
    res = move(
        hub, DEST_AET, "STUDY", {"PatientID": stored.pid, "StudyInstanceUID": stored.study_uid},
        model="P",
    )  # fmt: skip
    assert res.returncode == 0, res.output[-4000:]
    assert res.final_counts()["completed"] == N_SLICES + 1, res.output[-3000:]
    assert_same_instances(read_dir(dest.out_dir), [*stored.datasets, stored.mr])


def test_move_to_implicit_only_destination(
    module_servers: ServerPool, storescp_factory: Callable[..., StoreSCP], tmp_path: Path
) -> None:
    """Stored as explicit VR LE, moved to an SCP that only accepts implicit VR LE:
    the server has to convert (or at least offer implicit VR LE)."""
    scp = storescp_factory(aet="IMPLONLY", implicit_only=True)
    hub = module_servers.start(remote_aes={"IMPLONLY": scp.address})
    series = datagen.write_ct_series(tmp_path / "s", 3, rows=16, cols=16)
    store_ok(hub, tmp_path / "s", expect=3)
    res = move(
        hub, "IMPLONLY", "SERIES",
        {"StudyInstanceUID": str(series[0].StudyInstanceUID),
         "SeriesInstanceUID": str(series[0].SeriesInstanceUID)},
    )  # fmt: skip
    assert res.returncode == 0, res.output[-4000:]
    assert res.final_counts()["completed"] == 3, res.output[-3000:]
    assert_same_instances(read_dir(scp.out_dir), series)
