"""``dicomhub import`` and ``dicomhub ls`` against a data dir."""

from __future__ import annotations

import re
from pathlib import Path

import datagen
import pytest
from pydicom.dataset import Dataset

from .helpers import (
    DicomhubServer,
    ServerPool,
    assert_same_instances,
    find,
    get,
    ls_json,
    read_dir,
    run_cli,
    study_instance_count,
)

pytestmark = pytest.mark.e2e


def count(output: str, word: str) -> int:
    """The number printed next to ``word`` (``stored: 5``, ``5 stored``, ...)."""
    rx = re.compile(
        rf"(?:(\d+)\s+(?:instances?\s+|files?\s+|objects?\s+)?{word}|{word}\b\D{{0,20}}?(\d+))", re.I
    )
    m = rx.search(output)
    assert m, f"no count for {word!r} in import summary:\n{output}"
    return int(m.group(1) or m.group(2))


def build_tree(root: Path) -> tuple[list[Dataset], list[Path]]:
    tag = datagen.uid()[-6:]
    good = datagen.write_ct_series(root / "a" / "ct", 3, rows=16, cols=16, patient_id="IMP" + tag)
    good.append(
        datagen.write_instance(root / "b" / "deeper" / "still" / "mr.dcm", modality="MR",
                               rows=16, cols=16, patient_id="IMP" + tag, implicit=True)
    )  # fmt: skip
    good.append(datagen.write_instance(root / "top.dcm", rows=16, cols=16, patient_id="IMQ" + tag))
    bad = [
        root / "bad" / n for n in ("truncated.dcm", "nosop.dcm", "garbage.dcm", "dotdot.dcm", "nostudy.dcm")
    ]
    datagen.write_truncated(bad[0])
    datagen.write_missing_sop_instance_uid(bad[1])
    datagen.write_garbage(bad[2])
    datagen.write_dotdot_uid(bad[3])
    datagen.write_missing_study_uid(bad[4])
    return good, bad


def test_import_summary_and_rerun(tmp_path: Path) -> None:
    good, bad = build_tree(tmp_path / "in")
    data_dir = tmp_path / "data"
    rc, out = run_cli("import", str(tmp_path / "in"), "--data-dir", str(data_dir))
    assert rc != 0, f"import with rejected files must exit non-zero:\n{out}"
    assert count(out, "stored") == len(good), out
    assert count(out, "rejected") == len(bad), out
    flat = re.sub(r"\s+", "", out)  # long paths may be wrapped by the console
    for p in bad:
        assert p.name in flat, f"rejected file {p.name} not named in the summary:\n{out}"

    studies = {str(d.StudyInstanceUID) for d in good}
    listed = {str(r["StudyInstanceUID"]): r for r in ls_json(data_dir, "study")}
    assert set(listed) == studies
    assert sum(int(r["NumberOfStudyRelatedInstances"]) for r in listed.values()) == len(good)  # type: ignore[call-overload]

    # again: everything good is already present, nothing new stored
    rc, out2 = run_cli("import", str(tmp_path / "in"), "--data-dir", str(data_dir))
    assert rc != 0, out2
    assert count(out2, "already present") == len(good), out2
    assert count(out2, "stored") == 0, out2
    assert count(out2, "rejected") == len(bad), out2
    assert sum(int(r["NumberOfStudyRelatedInstances"]) for r in ls_json(data_dir, "study")) == len(good)  # type: ignore[call-overload]

    # only good files: exit code 0
    rc, out3 = run_cli(
        "import", str(tmp_path / "in" / "a"), str(tmp_path / "in" / "top.dcm"), "--data-dir", str(data_dir)
    )
    assert rc == 0, out3
    assert count(out3, "already present") == 4, out3


def test_import_then_serve(servers: ServerPool, tmp_path: Path) -> None:
    """Import into an empty data dir, then start a server on it: C-GET returns
    identical objects, implicit VR file included."""
    good, _bad = build_tree(tmp_path / "in")
    data_dir = tmp_path / "data"
    run_cli("import", str(tmp_path / "in"), "--data-dir", str(data_dir))
    srv = servers.start(data_dir=data_dir)
    for study_uid in {str(d.StudyInstanceUID) for d in good}:
        out = tmp_path / "get" / study_uid
        res = get(srv, "STUDY", {"StudyInstanceUID": study_uid}, out)
        assert res.returncode == 0, res.output[-3000:]
        assert_same_instances(read_dir(out), [d for d in good if d.StudyInstanceUID == study_uid])


def test_import_while_server_runs(server: DicomhubServer, tmp_path: Path) -> None:
    series = datagen.write_ct_series(
        tmp_path / "in", 5, rows=16, cols=16, patient_id="LIVE" + datagen.uid()[-6:]
    )
    study_uid = str(series[0].StudyInstanceUID)
    rc, out = run_cli("import", str(tmp_path / "in"), "--data-dir", str(server.data_dir))
    assert rc == 0, out
    assert count(out, "stored") == 5, out
    rsp = find(
        server, "IMAGE",
        {"StudyInstanceUID": study_uid, "SeriesInstanceUID": str(series[0].SeriesInstanceUID),
         "SOPInstanceUID": None},
        tmp_path / "find",
    )  # fmt: skip
    assert {str(r.SOPInstanceUID) for r in rsp} == {str(d.SOPInstanceUID) for d in series}
    res = get(
        server,
        "SERIES",
        {"StudyInstanceUID": study_uid, "SeriesInstanceUID": str(series[0].SeriesInstanceUID)},
        tmp_path / "get",
    )
    assert res.returncode == 0, res.output[-3000:]
    assert_same_instances(read_dir(tmp_path / "get"), series)
    assert study_instance_count(server.data_dir, study_uid) == 5


def test_ls_levels_json_shape(server: DicomhubServer, tmp_path: Path) -> None:
    datagen.write_ct_series(tmp_path / "in", 2, rows=16, cols=16, patient_id="SHAPE" + datagen.uid()[-6:])
    rc, out = run_cli("import", str(tmp_path / "in"), "--data-dir", str(server.data_dir))
    assert rc == 0, out
    keys = {
        "study": {"PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyDescription",
                  "AccessionNumber", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                  "NumberOfStudyRelatedInstances"},
        "series": {"StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber",
                   "SeriesDescription", "NumberOfSeriesRelatedInstances"},
        "patient": {"PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                    "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                    "NumberOfPatientRelatedInstances"},
    }  # fmt: skip
    for level, expected in keys.items():
        rows = ls_json(server.data_dir, level)
        assert rows, level
        for row in rows:
            assert expected <= set(row), f"{level}: missing {expected - set(row)}"
        if level == "study":
            assert all(isinstance(r["ModalitiesInStudy"], list) for r in rows)
