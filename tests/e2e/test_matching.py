"""C-FIND matching rules of PS3.4 C.2.2.2, each its own test.

Data: five studies (one patient each) chosen so that every query below
separates matches from non-matches.

Case: PS3.4 C.2.2.2.1 makes matching case-sensitive except for PN, where an
SCP may match case-insensitively. dicomhub folds case for PN (model/query.py
and index/compile.py upper-case PN values and keys), so these tests assert
case-INsensitive PN matching and case-sensitive matching for other VRs
(AccessionNumber SH, PatientID LO).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datagen
import pytest

from .helpers import DicomhubServer, find, store_ok

pytestmark = pytest.mark.e2e

# name, patient id, patient name, study date, study time, accession, modality
STUDIES = {
    "S1": ("M01", "Doe^John", "20200115", "101500", "ACC-A1", "CT"),
    "S2": ("M02", "Doe^Jane", "20201231", "235959", "ACC-B2", "MR"),
    "S3": ("M03", "Roe^Joe", "20210301", "080000", "ACC-C3", "CT"),
    "S4": ("M04", "Moe^Kim", "20191231", "120000", "XYZ-4", "MR"),
    "S5": ("M05", "smith^anna", "20220610", "153000", "ZZZ-5", "CT"),
}
# S1 has three series with different RequestAttributesSequence items
S1_SERIES_RP = ["RP-A", "RP-B", "RP-C"]


@dataclass
class Data:
    prefix: str  # unique PatientID prefix for this run
    study: dict[str, str]  # name -> StudyInstanceUID
    s1_series: dict[str, str]  # requested procedure id -> SeriesInstanceUID
    s1_sops: list[str]

    def pid(self, name: str) -> str:
        return self.prefix + STUDIES[name][0]

    def names_of(self, uids: set[str]) -> set[str]:
        inv = {v: k for k, v in self.study.items()}
        unknown = uids - set(inv)
        assert not unknown, f"responses for studies not created by this module: {unknown}"
        return {inv[u] for u in uids}


@pytest.fixture(scope="module")
def data(server: DicomhubServer, tmp_path_factory: pytest.TempPathFactory) -> Data:
    src = tmp_path_factory.mktemp("matching")
    prefix = "X" + datagen.uid()[-6:]
    study: dict[str, str] = {}
    s1_series: dict[str, str] = {}
    s1_sops: list[str] = []
    for name, (pid, pname, date, time, acc, mod) in STUDIES.items():
        study_uid = datagen.uid()
        study[name] = study_uid
        rps = S1_SERIES_RP if name == "S1" else [f"RP-{name}"]
        for n, rp in enumerate(rps, start=1):
            ds = datagen.write_instance(
                src / name / f"{n}.dcm", modality=mod, patient_id=prefix + pid, patient_name=pname,
                study_uid=study_uid, study_date=date, study_time=time, accession=acc,
                series_number=n, requested_procedure_id=rp,
            )  # fmt: skip
            if name == "S1":
                s1_series[rp] = str(ds.SeriesInstanceUID)
                s1_sops.append(str(ds.SOPInstanceUID))
    store_ok(server, src, expect=7)
    return Data(prefix, study, s1_series, s1_sops)


def study_query(server: DicomhubServer, tmp_path: Path, keys: dict[str, str | None]) -> list:  # type: ignore[type-arg]
    base: dict[str, str | None] = {"StudyInstanceUID": None, "PatientID": None, "PatientName": None}
    return find(server, "STUDY", base | keys, tmp_path, model="S")


def matched(server: DicomhubServer, data: Data, tmp_path: Path, keys: dict[str, str | None]) -> set[str]:
    rsp = study_query(server, tmp_path, keys)
    uids = [str(r.StudyInstanceUID) for r in rsp]
    assert len(uids) == len(set(uids)), f"duplicate responses: {uids}"
    return data.names_of(set(uids))


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"AccessionNumber": "ACC-C3"}, {"S3"}),
        ({"StudyDate": "20201231"}, {"S2"}),
        ({"StudyTime": "080000"}, {"S3"}),
        ({"PatientName": "Moe^Kim"}, {"S4"}),
        ({"ModalitiesInStudy": "MR"}, {"S2", "S4"}),
        ({"AccessionNumber": "ACC-C"}, set()),  # no prefix matching without '*'
    ],
    ids=["accession", "date", "time", "patient-name", "modalities-in-study", "no-implicit-prefix"],
)
def test_single_value(
    server: DicomhubServer, data: Data, tmp_path: Path, keys: dict[str, str], expected: set[str]
) -> None:
    assert matched(server, data, tmp_path, keys) == expected


def test_single_value_patient_id(server: DicomhubServer, data: Data, tmp_path: Path) -> None:
    assert matched(server, data, tmp_path, {"PatientID": data.pid("S2")}) == {"S2"}


@pytest.mark.parametrize("names", [["S1", "S3"], ["S2"], ["S5", "S4", "S1"]], ids=["two", "one", "three"])
def test_uid_list(server: DicomhubServer, data: Data, tmp_path: Path, names: list[str]) -> None:
    keys = {"StudyInstanceUID": "\\".join(data.study[n] for n in names)}
    assert matched(server, data, tmp_path, keys) == set(names)


def test_uid_list_image_level(server: DicomhubServer, data: Data, tmp_path: Path) -> None:
    wanted = {data.s1_sops[0], data.s1_sops[2]}
    for i, rp in enumerate(S1_SERIES_RP):
        rsp = find(
            server, "IMAGE",
            {"StudyInstanceUID": data.study["S1"], "SeriesInstanceUID": data.s1_series[rp],
             "SOPInstanceUID": "\\".join(sorted(wanted))},
            tmp_path,
        )  # fmt: skip
        assert {str(r.SOPInstanceUID) for r in rsp} == wanted & {data.s1_sops[i]}, rp


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"PatientName": "Do*"}, {"S1", "S2"}),
        ({"PatientName": "?oe^J*"}, {"S1", "S2", "S3"}),
        ({"PatientName": "D?e^J*"}, {"S1", "S2"}),
        ({"PatientName": "*^Jane"}, {"S2"}),
        ({"PatientName": "Doe^Jo?n"}, {"S1"}),
        ({"PatientName": "*"}, {"S1", "S2", "S3", "S4", "S5"}),
        ({"AccessionNumber": "ACC*"}, {"S1", "S2", "S3"}),
        ({"AccessionNumber": "*-?"}, {"S4", "S5"}),
        ({"AccessionNumber": "ACC-??"}, {"S1", "S2", "S3"}),
        ({"AccessionNumber": "ACC-?"}, set()),
    ],
    ids=["Do*", "?oe^J*", "D?e^J*", "*^Jane", "Doe^Jo?n", "star-only", "ACC*", "*-?", "ACC-??", "ACC-?"],
)
def test_wildcard(
    server: DicomhubServer, data: Data, tmp_path: Path, keys: dict[str, str], expected: set[str]
) -> None:
    assert matched(server, data, tmp_path, keys) == expected


def test_wildcard_patient_id(server: DicomhubServer, data: Data, tmp_path: Path) -> None:
    keys = {"PatientID": data.prefix + "M0?"}
    assert matched(server, data, tmp_path, keys) == {"S1", "S2", "S3", "S4", "S5"}
    keys = {"PatientID": data.prefix + "*3"}
    assert matched(server, data, tmp_path, keys) == {"S3"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20200101-20201231", {"S1", "S2"}),  # closed, both ends inclusive
        ("20200115-20200115", {"S1"}),
        ("-20200115", {"S1", "S4"}),  # open start, inclusive
        ("20210301-", {"S3", "S5"}),  # open end, inclusive
        ("20230101-", set()),
    ],
    ids=["closed", "closed-single-day", "open-start", "open-end", "open-end-empty"],
)
def test_date_range(
    server: DicomhubServer, data: Data, tmp_path: Path, value: str, expected: set[str]
) -> None:
    assert matched(server, data, tmp_path, {"StudyDate": value}) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("080000-120000", {"S1", "S3", "S4"}),  # inclusive on both ends
        ("-100000", {"S3"}),
        ("150000-", {"S2", "S5"}),
        ("101500-101500", {"S1"}),
    ],
    ids=["closed", "open-start", "open-end", "single-instant"],
)
def test_time_range(
    server: DicomhubServer, data: Data, tmp_path: Path, value: str, expected: set[str]
) -> None:
    assert matched(server, data, tmp_path, {"StudyTime": value}) == expected


def test_universal_matching_returns_all(server: DicomhubServer, data: Data, tmp_path: Path) -> None:
    everything = set(STUDIES)
    assert matched(server, data, tmp_path, {"StudyDate": ""}) == everything
    assert matched(server, data, tmp_path, {"PatientID": "", "AccessionNumber": ""}) == everything


def test_universal_matching_returns_values(server: DicomhubServer, data: Data, tmp_path: Path) -> None:
    rsp = study_query(server, tmp_path, {"StudyDate": "", "AccessionNumber": "", "StudyTime": ""})
    got = {str(r.StudyInstanceUID): r for r in rsp}
    for name, (_pid, pname, date, time, acc, _mod) in STUDIES.items():
        r = got[data.study[name]]
        assert (r.PatientName, r.StudyDate, r.AccessionNumber) == (pname, date, acc)
        assert str(r.StudyTime).startswith(time)


def test_patient_level_wildcard(server: DicomhubServer, data: Data, tmp_path: Path) -> None:
    rsp = find(server, "PATIENT", {"PatientName": "Do*", "PatientID": None}, tmp_path, model="P")
    assert {str(r.PatientID) for r in rsp} == {data.pid("S1"), data.pid("S2")}


@pytest.mark.parametrize("rp", S1_SERIES_RP)
def test_sequence_matching(server: DicomhubServer, data: Data, tmp_path: Path, rp: str) -> None:
    """Series level key RequestAttributesSequence > RequestedProcedureID."""
    rsp = find(
        server, "SERIES",
        [("StudyInstanceUID", data.study["S1"]), ("SeriesInstanceUID", None),
         ("RequestAttributesSequence[0].RequestedProcedureID", rp)],
        tmp_path,
    )  # fmt: skip
    assert [str(r.SeriesInstanceUID) for r in rsp] == [data.s1_series[rp]]
    seq = rsp[0].get("RequestAttributesSequence")
    assert seq and seq[0].RequestedProcedureID == rp, rsp[0]


def test_sequence_universal_returns_items(server: DicomhubServer, data: Data, tmp_path: Path) -> None:
    rsp = find(
        server, "SERIES",
        [("StudyInstanceUID", data.study["S1"]), ("SeriesInstanceUID", None),
         ("RequestAttributesSequence[0].RequestedProcedureID", None)],
        tmp_path,
    )  # fmt: skip
    assert {str(r.SeriesInstanceUID) for r in rsp} == set(data.s1_series.values())
    for r in rsp:
        seq = r.get("RequestAttributesSequence")
        assert seq, f"sequence return key missing or empty in {r}"
        rp = seq[0].RequestedProcedureID
        assert data.s1_series[rp] == r.SeriesInstanceUID


def test_sequence_wildcard_no_match(server: DicomhubServer, data: Data, tmp_path: Path) -> None:
    rsp = find(
        server, "SERIES",
        [("StudyInstanceUID", data.study["S1"]), ("SeriesInstanceUID", None),
         ("RequestAttributesSequence[0].RequestedProcedureID", "NOPE*")],
        tmp_path,
    )  # fmt: skip
    assert rsp == []


def test_unindexed_return_key_is_empty_not_error(server: DicomhubServer, data: Data, tmp_path: Path) -> None:
    """InstitutionName / ... are in no stored object: returned empty or absent,
    and the query still succeeds (find() asserts the final status is Success)."""
    rsp = study_query(
        server, tmp_path,
        {"StudyInstanceUID": data.study["S3"], "InstitutionName": None,
         "OtherPatientIDsSequence": None},
    )  # fmt: skip
    assert len(rsp) == 1
    r = rsp[0]
    assert r.StudyInstanceUID == data.study["S3"]
    assert not r.get("InstitutionName"), r
    assert not r.get("OtherPatientIDsSequence"), r


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("smith^anna", {"S5"}),
        ("Smith^Anna", {"S5"}),
        ("SMITH^ANNA", {"S5"}),
        ("SMITH*", {"S5"}),
        ("doe^john", {"S1"}),
        ("dOE^j*", {"S1", "S2"}),
        ("smith^ann", set()),
    ],
)
def test_pn_matching_is_case_insensitive(
    server: DicomhubServer, data: Data, tmp_path: Path, value: str, expected: set[str]
) -> None:
    assert matched(server, data, tmp_path, {"PatientName": value}) == expected


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"AccessionNumber": "acc-c3"}, set()),
        ({"AccessionNumber": "ACC-C3"}, {"S3"}),
        ({"AccessionNumber": "acc*"}, set()),
    ],
    ids=["lower-single", "exact-single", "lower-wildcard"],
)
def test_non_pn_matching_is_case_sensitive(
    server: DicomhubServer, data: Data, tmp_path: Path, keys: dict[str, str], expected: set[str]
) -> None:
    assert matched(server, data, tmp_path, keys) == expected


def test_patient_id_matching_is_case_sensitive(server: DicomhubServer, data: Data, tmp_path: Path) -> None:
    assert matched(server, data, tmp_path, {"PatientID": data.pid("S2").lower()}) == set()


def test_combined_keys_are_anded(server: DicomhubServer, data: Data, tmp_path: Path) -> None:
    keys = {"PatientName": "Do*", "StudyDate": "20201201-", "ModalitiesInStudy": None}
    assert matched(server, data, tmp_path, keys) == {"S2"}
