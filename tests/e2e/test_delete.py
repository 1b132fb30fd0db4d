"""DELETE of studies, series and instances against a real ``dicomhub serve``.

Each test stores its own study (two CT instances in one series, one MR
instance in another) plus a bystander study, deletes over HTTP (for good:
``trash_keep`` 0), and checks
QIDO-RS, C-FIND, the blobs in the data dir, the change log (read with
the index) and that the rest can still be retrieved with getscu.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datagen
import httpx
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from . import helpers
from .helpers import DicomhubServer, ServerPool, find, get, read_dir, store_ok

pytestmark = pytest.mark.e2e


@dataclass
class Study:
    uid: str
    ct_series: str
    mr_series: str
    ct: list[Dataset]
    mr: Dataset
    src: Path


def make_study(server: DicomhubServer, src: Path, patient_id: str | None = None) -> Study:
    study_uid, ct_series, mr_series = datagen.uid(), datagen.uid(), datagen.uid()
    pid = patient_id or "D" + datagen.uid()[-8:]
    ct = [
        datagen.write_instance(
            src / f"ct{n}.dcm", modality="CT", patient_id=pid, study_uid=study_uid,
            series_uid=ct_series, series_number=1, instance_number=n,
        )
        for n in (1, 2)
    ]  # fmt: skip
    mr = datagen.write_instance(
        src / "mr.dcm", modality="MR", patient_id=pid, study_uid=study_uid, series_uid=mr_series,
        series_number=2,
    )  # fmt: skip
    store_ok(server, src, expect=3)
    return Study(study_uid, ct_series, mr_series, ct, mr, src)


def url(server: DicomhubServer, path: str) -> str:
    return server.base_url + "/dicomweb" + path


def delete(server: DicomhubServer, path: str) -> httpx.Response:
    return httpx.delete(url(server, path), timeout=30.0)


def index_rows(server: DicomhubServer, sql: str, *args: object) -> list[tuple[object, ...]]:
    """``?`` placeholders, on whichever index backend the server runs."""
    parts = sql.split("?")
    named = "".join(f"{part}:p{i}" for i, part in enumerate(parts[:-1])) + parts[-1]
    return helpers.index_rows(server.data_dir, named, **{f"p{i}": a for i, a in enumerate(args)})


def blob_keys(server: DicomhubServer, *sop_uids: str) -> list[str]:
    marks = ",".join("?" * len(sop_uids))
    rows = index_rows(server, f"SELECT blob_key FROM instance WHERE sop_instance_uid IN ({marks})", *sop_uids)
    assert len(rows) == len(sop_uids)
    return [str(r[0]) for r in rows]


def blob_exists(server: DicomhubServer, key: str) -> bool:
    return helpers.read_blob(server.data_dir, key) is not None


def deleted_changes(server: DicomhubServer, since: int) -> set[tuple[str, str]]:
    rows = index_rows(
        server, "SELECT level, uid FROM change WHERE change_type = 'deleted' AND seq > ?", since
    )
    return {(str(level), str(uid)) for level, uid in rows}


def last_seq(server: DicomhubServer) -> int:
    return int(index_rows(server, "SELECT COALESCE(MAX(seq), 0) FROM change")[0][0])  # type: ignore[call-overload]


def first(result: list[dict[str, object]], tag: str) -> object:
    attr = result[0][tag]
    assert isinstance(attr, dict)
    return attr["Value"][0]


@pytest.fixture(scope="module")
def server(module_servers: ServerPool) -> DicomhubServer:
    """A delete for good (``trash_keep`` 0), as every delete was before the trash; what
    a delete into the trash does is in test_trash.py."""
    return module_servers.start(env={"DICOMHUB_TRASH_KEEP": "0"})


@pytest.fixture(scope="module")
def bystander(server: DicomhubServer, tmp_path_factory: pytest.TempPathFactory) -> Study:
    """A study that no test deletes: it must stay intact and retrievable."""
    return make_study(server, tmp_path_factory.mktemp("bystander"))


def assert_bystander_intact(server: DicomhubServer, bystander: Study, tmp_path: Path) -> None:
    res = get(server, "STUDY", {"StudyInstanceUID": bystander.uid}, tmp_path / "get-bystander")
    assert res.returncode == 0, res.output[-3000:]
    received = read_dir(tmp_path / "get-bystander")
    assert set(received) == {str(d.SOPInstanceUID) for d in [*bystander.ct, bystander.mr]}


def test_delete_instance(server: DicomhubServer, bystander: Study, tmp_path: Path) -> None:
    st = make_study(server, tmp_path / "src")
    c = DICOMwebClient(url=server.base_url + "/dicomweb")
    victim = str(st.ct[0].SOPInstanceUID)
    (key,) = blob_keys(server, victim)
    assert blob_exists(server, key)
    seq = last_seq(server)

    r = delete(server, f"/studies/{st.uid}/series/{st.ct_series}/instances/{victim}")
    assert r.status_code == 204, r.text

    assert not blob_exists(server, key)
    remaining = c.search_for_instances(st.uid, st.ct_series)
    assert [first([x], "00080018") for x in remaining] == [str(st.ct[1].SOPInstanceUID)]
    study = c.search_for_studies(search_filters={"StudyInstanceUID": st.uid})
    assert first(study, "00201208") == 2  # NumberOfStudyRelatedInstances
    assert first(study, "00201206") == 2  # NumberOfStudyRelatedSeries
    series = c.search_for_series(st.uid, search_filters={"SeriesInstanceUID": st.ct_series})
    assert first(series, "00201209") == 1
    assert find(server, "IMAGE", {"StudyInstanceUID": st.uid, "SeriesInstanceUID": st.ct_series,
                                  "SOPInstanceUID": victim}, tmp_path / "find") == []  # fmt: skip
    assert deleted_changes(server, seq) == {("IMAGE", victim)}

    r = delete(server, f"/studies/{st.uid}/series/{st.ct_series}/instances/{victim}")
    assert r.status_code == 404

    res = get(server, "STUDY", {"StudyInstanceUID": st.uid}, tmp_path / "get")
    assert res.returncode == 0, res.output[-3000:]
    assert set(read_dir(tmp_path / "get")) == {str(st.ct[1].SOPInstanceUID), str(st.mr.SOPInstanceUID)}
    assert_bystander_intact(server, bystander, tmp_path)


def test_delete_series(server: DicomhubServer, bystander: Study, tmp_path: Path) -> None:
    st = make_study(server, tmp_path / "src")
    c = DICOMwebClient(url=server.base_url + "/dicomweb")
    (key,) = blob_keys(server, str(st.mr.SOPInstanceUID))
    seq = last_seq(server)

    r = delete(server, f"/studies/{st.uid}/series/{st.mr_series}")
    assert r.status_code == 204, r.text

    assert not blob_exists(server, key)
    study = c.search_for_studies(search_filters={"StudyInstanceUID": st.uid})
    assert study[0]["00080061"]["Value"] == ["CT"]  # ModalitiesInStudy
    assert first(study, "00201206") == 1
    assert first(study, "00201208") == 2
    assert c.search_for_series(st.uid, search_filters={"Modality": "MR"}) == []
    found = find(server, "SERIES", {"StudyInstanceUID": st.uid, "SeriesInstanceUID": None}, tmp_path / "f")
    assert {str(d.SeriesInstanceUID) for d in found} == {st.ct_series}
    assert deleted_changes(server, seq) == {("SERIES", st.mr_series), ("IMAGE", str(st.mr.SOPInstanceUID))}
    assert delete(server, f"/studies/{st.uid}/series/{st.mr_series}").status_code == 404
    # a series is only found under its own study
    assert delete(server, f"/studies/{bystander.uid}/series/{st.ct_series}").status_code == 404

    # storing the series again works (the workers' remembered parent keys are stale)
    store_ok(server, st.src / "mr.dcm", expect=1)
    study = c.search_for_studies(search_filters={"StudyInstanceUID": st.uid})
    assert study[0]["00080061"]["Value"] == ["CT", "MR"]
    assert first(study, "00201208") == 3
    assert_bystander_intact(server, bystander, tmp_path)


def test_delete_study(server: DicomhubServer, bystander: Study, tmp_path: Path) -> None:
    st = make_study(server, tmp_path / "src")
    c = DICOMwebClient(url=server.base_url + "/dicomweb")
    sops = [str(d.SOPInstanceUID) for d in [*st.ct, st.mr]]
    keys = blob_keys(server, *sops)
    pid = str(st.mr.PatientID)
    seq = last_seq(server)

    r = delete(server, f"/studies/{st.uid}")
    assert r.status_code == 204, r.text

    assert not any(blob_exists(server, k) for k in keys)
    assert c.search_for_studies(search_filters={"StudyInstanceUID": st.uid}) == []
    assert c.search_for_instances(search_filters={"PatientID": pid}) == []
    assert find(server, "STUDY", {"StudyInstanceUID": st.uid}, tmp_path / "find") == []
    assert deleted_changes(server, seq) == {
        ("STUDY", st.uid),
        ("SERIES", st.ct_series),
        ("SERIES", st.mr_series),
        ("PATIENT", pid),
        *(("IMAGE", s) for s in sops),
    }
    assert index_rows(server, "SELECT count(*) FROM patient WHERE patient_id = ?", pid) == [(0,)]
    assert delete(server, f"/studies/{st.uid}").status_code == 404
    assert_bystander_intact(server, bystander, tmp_path)


def test_deleting_the_last_instance_removes_empty_parents(
    server: DicomhubServer, bystander: Study, tmp_path: Path
) -> None:
    src = tmp_path / "one"
    ds = datagen.write_instance(src / "only.dcm", patient_id="D" + datagen.uid()[-8:])
    store_ok(server, src, expect=1)
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    seq = last_seq(server)
    assert delete(server, f"/studies/{study}/series/{series}/instances/{sop}").status_code == 204
    assert deleted_changes(server, seq) == {
        ("IMAGE", sop),
        ("SERIES", series),
        ("STUDY", study),
        ("PATIENT", str(ds.PatientID)),
    }
    assert httpx.get(url(server, "/studies"), params={"StudyInstanceUID": study}).status_code == 204


def test_delete_unknown_is_404(server: DicomhubServer, bystander: Study) -> None:
    unknown = datagen.uid()
    assert delete(server, f"/studies/{unknown}").status_code == 404
    assert delete(server, f"/studies/{bystander.uid}/series/{unknown}").status_code == 404
    r = delete(server, f"/studies/{bystander.uid}/series/{bystander.ct_series}/instances/{unknown}")
    assert r.status_code == 404
    assert "not found" in r.json()["error"]
    # the instance exists, but not in that series
    mr_sop = str(bystander.mr.SOPInstanceUID)
    r = delete(server, f"/studies/{bystander.uid}/series/{bystander.ct_series}/instances/{mr_sop}")
    assert r.status_code == 404
    r = delete(server, f"/studies/{bystander.uid}/series/{bystander.mr_series}/instances/' OR 1=1 --")
    assert r.status_code == 404
    assert index_rows(server, "SELECT count(*) FROM instance WHERE sop_instance_uid = ?", mr_sop) == [(1,)]
