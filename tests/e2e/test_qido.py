"""QIDO-RS (PS3.18 10.6) against a real ``dicomhub serve``.

Data: three studies stored with storescu. S1 has a CT series of two
instances and an MR series of one; S2 and S3 one instance each.
Driven with dicomweb-client, and raw httpx for error paths and headers.
"""

from __future__ import annotations

import email.parser
import email.policy
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datagen
import httpx
import pytest
from dicomweb_client import DICOMwebClient

from .helpers import DicomhubServer, store_ok

pytestmark = pytest.mark.e2e

NS = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}


@dataclass
class Data:
    prefix: str
    studies: dict[str, str]  # name -> StudyInstanceUID
    s1_ct_series: str
    s1_mr_series: str
    s1_ct_sops: list[str]
    s2_series: str

    def pid(self, name: str) -> str:
        return self.prefix + name


@pytest.fixture(scope="module")
def data(server: DicomhubServer, tmp_path_factory: pytest.TempPathFactory) -> Data:
    src = tmp_path_factory.mktemp("qido")
    prefix = "Q" + datagen.uid()[-6:]
    studies = {name: datagen.uid() for name in ("S1", "S2", "S3")}
    s1_ct, s1_mr, s2_series = datagen.uid(), datagen.uid(), datagen.uid()
    common: dict[str, Any] = {"extra": {"InstitutionName": "General Hospital"}}
    ct = [
        datagen.write_instance(
            src / f"s1ct{n}.dcm", modality="CT", patient_id=prefix + "S1", patient_name="Doe^John",
            study_uid=studies["S1"], series_uid=s1_ct, study_date="20200115", accession="ACC-1",
            series_number=1, instance_number=n, study_description="Chest", **common,
        )
        for n in (1, 2)
    ]  # fmt: skip
    datagen.write_instance(
        src / "s1mr.dcm", modality="MR", patient_id=prefix + "S1", patient_name="Doe^John",
        study_uid=studies["S1"], series_uid=s1_mr, study_date="20200115", accession="ACC-1",
        series_number=2, study_description="Chest", **common,
    )  # fmt: skip
    datagen.write_instance(
        src / "s2.dcm", modality="MR", patient_id=prefix + "S2", patient_name="Smith^Anna Maria",
        study_uid=studies["S2"], series_uid=s2_series, study_date="20211231", accession="ACC-2",
        requested_procedure_id="RP-S2", referring_physician="House^Gregory",
        extra={"InstitutionName": "Other Clinic"},
    )  # fmt: skip
    datagen.write_instance(
        src / "s3.dcm", modality="CT", patient_id=prefix + "S3", patient_name="Roe^Joe",
        study_uid=studies["S3"], study_date="20190601", accession="ACC-3",
    )  # fmt: skip
    store_ok(server, src, expect=5)
    return Data(prefix, studies, s1_ct, s1_mr, [str(d.SOPInstanceUID) for d in ct], s2_series)


def client(server: DicomhubServer) -> DICOMwebClient:
    return DICOMwebClient(url=server.base_url + "/dicomweb")


def value(obj: dict[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON object (None when empty)."""
    attr = obj.get(tag)
    assert attr is not None, f"{tag} missing in {sorted(obj)}"
    values = attr.get("Value")
    return values[0] if values else None


def uids(results: list[dict[str, Any]], tag: str = "0020000D") -> set[str]:
    return {value(r, tag) for r in results}


def mine(data: Data, results: list[dict[str, Any]]) -> set[str]:
    """Names of this module's studies among the results (the server holds only these)."""
    inv = {v: k for k, v in data.studies.items()}
    found = uids(results)
    assert found <= set(inv), f"unexpected studies {found - set(inv)}"
    return {inv[u] for u in found}


def get(server: DicomhubServer, path: str, **kw: Any) -> httpx.Response:
    return httpx.get(server.base_url + "/dicomweb" + path, timeout=30.0, **kw)


# ---------------------------------------------------------------- studies


def test_all_studies_with_default_attributes(server: DicomhubServer, data: Data) -> None:
    results = client(server).search_for_studies()
    assert mine(data, results) == {"S1", "S2", "S3"}
    s1 = next(r for r in results if value(r, "0020000D") == data.studies["S1"])
    expected_tags = {
        "00080020", "00080030", "00080050", "00080056", "00080061", "00080090", "00081190",
        "00100010", "00100020", "00100030", "00100040", "0020000D", "00200010", "00201206",
        "00201208",
    }  # fmt: skip
    assert expected_tags <= set(s1), expected_tags - set(s1)
    assert s1["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert s1["00201206"] == {"vr": "IS", "Value": [2]}
    assert s1["00201208"] == {"vr": "IS", "Value": [3]}
    assert s1["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
    assert value(s1, "00100020") == data.pid("S1")
    assert value(s1, "00080056") == "ONLINE"
    assert value(s1, "00080020") == "20200115"
    # dicomweb-client sends "Host: 127.0.0.1" without the port: the URL follows the Host header
    assert value(s1, "00081190").endswith(f"127.0.0.1/dicomweb/studies/{data.studies['S1']}")
    r = get(server, "/studies", params={"StudyInstanceUID": data.studies["S1"]})
    assert value(r.json()[0], "00081190") == f"{server.base_url}/dicomweb/studies/{data.studies['S1']}"
    assert s1["00081190"]["vr"] == "UR"
    # keys in ascending tag order, as PS3.18 F.2 requires
    assert list(s1) == sorted(s1)


def test_study_matching(server: DicomhubServer, data: Data) -> None:
    c = client(server)
    assert mine(data, c.search_for_studies(search_filters={"PatientID": data.pid("S2")})) == {"S2"}
    assert mine(data, c.search_for_studies(search_filters={"PatientName": "doe*"})) == {"S1"}
    assert mine(data, c.search_for_studies(search_filters={"StudyDate": "20200101-20211231"})) == {
        "S1",
        "S2",
    }
    assert mine(data, c.search_for_studies(search_filters={"StudyDate": "-20191231"})) == {"S3"}
    both = f"{data.studies['S1']},{data.studies['S3']}"
    assert mine(data, c.search_for_studies(search_filters={"StudyInstanceUID": both})) == {"S1", "S3"}
    backslash = f"{data.studies['S2']}\\{data.studies['S3']}"
    assert mine(data, c.search_for_studies(search_filters={"StudyInstanceUID": backslash})) == {
        "S2",
        "S3",
    }
    assert mine(data, c.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})) == {"S1", "S2"}
    assert mine(data, c.search_for_studies(search_filters={"AccessionNumber": "ACC-?"})) == {
        "S1",
        "S2",
        "S3",
    }
    # keys given as tags
    assert mine(data, c.search_for_studies(search_filters={"00100020": data.pid("S3")})) == {"S3"}
    # a non-indexed attribute, matched on the stored header
    assert mine(data, c.search_for_studies(search_filters={"InstitutionName": "General*"})) == {"S1"}


def test_matching_key_is_returned(server: DicomhubServer, data: Data) -> None:
    results = client(server).search_for_studies(search_filters={"InstitutionName": "Other*"})
    assert value(results[0], "00080080") == "Other Clinic"


def test_includefield(server: DicomhubServer, data: Data) -> None:
    c = client(server)
    results = c.search_for_studies(
        search_filters={"PatientID": data.pid("S1")}, fields=["StudyDescription", "00081030"]
    )
    assert value(results[0], "00081030") == "Chest"
    r = get(
        server,
        "/studies",
        params=[("PatientID", data.pid("S1")), ("includefield", "StudyDescription,InstitutionName")],
    )
    assert r.status_code == 200
    assert value(r.json()[0], "00080080") == "General Hospital"


def test_includefield_all(server: DicomhubServer, data: Data) -> None:
    r = get(server, "/studies", params={"PatientID": data.pid("S1"), "includefield": "all"})
    assert r.status_code == 200
    study = r.json()[0]
    assert value(study, "00080080") == "General Hospital"  # InstitutionName, not indexed
    assert "00080018" not in study  # SOPInstanceUID is not a study attribute
    assert "7FE00010" not in study
    r = get(
        server,
        f"/studies/{data.studies['S1']}/series/{data.s1_ct_series}/instances",
        params={"includefield": "all"},
    )
    inst = r.json()[0]
    assert value(inst, "00080080") == "General Hospital"
    assert value(inst, "00080070") == "dicomhub-tests"  # Manufacturer
    assert value(inst, "00180060") == 120  # KVP (DS) as a number


def test_limit_offset(server: DicomhubServer, data: Data) -> None:
    c = client(server)
    everything = uids(c.search_for_studies())
    page1 = uids(c.search_for_studies(limit=2))
    page2 = uids(c.search_for_studies(limit=2, offset=2))
    assert len(page1) == 2 and len(page2) == 1
    assert page1 | page2 == everything
    assert uids(c.search_for_studies(limit=1, get_remaining=True)) == everything
    r = get(server, "/studies", params={"limit": "2"})
    assert r.status_code == 200 and len(r.json()) == 2
    assert "299" in r.headers.get("warning", ""), "truncated results must say so"
    r = get(server, "/studies", params={"limit": "3"})
    assert "warning" not in r.headers


def test_absurd_limit_is_clamped_with_warning(server: DicomhubServer, data: Data) -> None:
    r = get(server, "/studies", params={"limit": "999999999"})
    assert r.status_code == 200
    assert len(r.json()) == 3
    warning = r.headers.get("warning", "")
    assert warning.startswith("299 ") and "maximum" in warning, warning


def test_offset_beyond_end_is_no_content(server: DicomhubServer, data: Data) -> None:
    r = get(server, "/studies", params={"offset": "1000000"})
    assert r.status_code == 204
    assert r.content == b""


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "-1"},
        {"limit": "abc"},
        {"limit": "0"},
        {"offset": "-5"},
        {"offset": "1e3"},
        {"fuzzymatching": "maybe"},
    ],
)
def test_bad_paging_parameters(server: DicomhubServer, data: Data, params: dict[str, str]) -> None:
    r = get(server, "/studies", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["error"]


def test_unknown_keyword_is_400_with_reason(server: DicomhubServer, data: Data) -> None:
    r = get(server, "/studies", params={"PatientNmae": "Doe*"})
    assert r.status_code == 400
    assert "PatientNmae" in r.json()["error"]
    r = get(server, "/studies", params={"includefield": "NoSuchKeyword"})
    assert r.status_code == 400
    r = get(server, "/studies", params={"SeriesInstanceUID": data.s1_ct_series})
    assert r.status_code == 400, "a series key cannot match studies"
    assert "series" in r.json()["error"]


def test_sql_like_text_is_harmless(server: DicomhubServer, data: Data) -> None:
    for params in (
        {"PatientID": "' OR 1=1 --"},
        {"PatientName": "x' OR '1'='1"},
        {"AccessionNumber": "%"},
        {"PatientID": "'; DROP TABLE study; --"},
        {"StudyDescription": "_hest"},
    ):
        r = get(server, "/studies", params=params)
        assert r.status_code == 204, (params, r.status_code, r.text)
    assert mine(data, client(server).search_for_studies()) == {"S1", "S2", "S3"}


def test_not_acceptable(server: DicomhubServer, data: Data) -> None:
    for accept in ("application/xml", "text/html", "application/dicom"):
        r = get(server, "/studies", headers={"Accept": accept})
        assert r.status_code == 406, (accept, r.status_code)
    r = get(server, "/studies", headers={"Accept": "text/html, application/dicom+json;q=0.5"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/dicom+json")


def _xml_parts(r: httpx.Response) -> list[ET.Element]:
    ctype = r.headers["content-type"]
    assert ctype.startswith("multipart/related") and 'type="application/dicom+xml"' in ctype, ctype
    raw = f"Content-Type: {ctype}\r\n\r\n".encode() + r.content
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    parts = list(msg.iter_parts())
    for part in parts:
        assert part.get_content_type() == "application/dicom+xml"
    return [ET.fromstring(part.get_payload(decode=True)) for part in parts]


def test_xml_multipart(server: DicomhubServer, data: Data) -> None:
    r = get(
        server,
        "/studies",
        params={"PatientID": data.pid("S2")},
        headers={"Accept": 'multipart/related; type="application/dicom+xml"'},
    )
    assert r.status_code == 200
    docs = _xml_parts(r)
    assert len(docs) == 1
    root = docs[0]
    assert root.tag == "{" + NS["d"] + "}NativeDicomModel"

    def attr(tag: str) -> ET.Element:
        found = root.find(f"d:DicomAttribute[@tag='{tag}']", NS)
        assert found is not None, tag
        return found

    uid = attr("0020000D")
    assert uid.get("vr") == "UI" and uid.get("keyword") == "StudyInstanceUID"
    assert uid.findtext("d:Value", namespaces=NS) == data.studies["S2"]
    name = attr("00100010").find("d:PersonName/d:Alphabetic", NS)
    assert name is not None
    assert name.findtext("d:FamilyName", namespaces=NS) == "Smith"
    assert name.findtext("d:GivenName", namespaces=NS) == "Anna Maria"
    assert attr("00201208").findtext("d:Value", namespaces=NS) == "1"
    assert [v.text for v in attr("00080061").findall("d:Value", NS)] == ["MR"]
    # several matches: one part each
    r = get(server, "/studies", headers={"Accept": "multipart/related; type=application/dicom+xml"})
    assert len(_xml_parts(r)) == 3


def test_fuzzy_matching(server: DicomhubServer, data: Data) -> None:
    c = client(server)
    assert mine(data, c.search_for_studies(search_filters={"PatientName": "anna"})) == set()
    assert mine(data, c.search_for_studies(search_filters={"PatientName": "anna"}, fuzzymatching=True)) == {
        "S2"
    }
    found = c.search_for_studies(search_filters={"PatientName": "MAR smi"}, fuzzymatching=True)
    assert mine(data, found) == {"S2"}
    # words match the start of components only
    assert (
        mine(data, c.search_for_studies(search_filters={"PatientName": "mith"}, fuzzymatching=True)) == set()
    )
    assert mine(data, c.search_for_studies(search_filters={"PatientName": "jo"}, fuzzymatching=True)) == {
        "S1",
        "S3",
    }
    found = c.search_for_studies(search_filters={"ReferringPhysicianName": "greg"}, fuzzymatching=True)
    assert mine(data, found) == {"S2"}
    # fuzzymatching=false is exact (case-insensitive for PN) matching
    assert mine(
        data, c.search_for_studies(search_filters={"PatientName": "doe^john"}, fuzzymatching=False)
    ) == {"S1"}


# ---------------------------------------------------------------- series and instances


def test_series_of_a_study(server: DicomhubServer, data: Data) -> None:
    results = client(server).search_for_series(data.studies["S1"])
    by_uid = {value(r, "0020000E"): r for r in results}
    assert set(by_uid) == {data.s1_ct_series, data.s1_mr_series}
    ct = by_uid[data.s1_ct_series]
    assert value(ct, "00080060") == "CT"
    assert value(ct, "00200011") == 1
    assert value(ct, "00201209") == 2  # NumberOfSeriesRelatedInstances
    assert value(ct, "0020000D") == data.studies["S1"]
    assert value(ct, "00081190") == (
        f"http://127.0.0.1/dicomweb/studies/{data.studies['S1']}/series/{data.s1_ct_series}"
    )
    assert value(by_uid[data.s1_mr_series], "00201209") == 1
    # RequestAttributesSequence is a default series attribute (PS3.18 Table 10.6.3-4)
    items = ct["00400275"]["Value"]
    assert items[0]["00401001"]["Value"] == ["RP0001"]


def test_all_series(server: DicomhubServer, data: Data) -> None:
    c = client(server)
    results = c.search_for_series(search_filters={"Modality": "MR"})
    assert uids(results, "0020000E") == {data.s1_mr_series, data.s2_series}
    # unscoped series searches carry the study attributes too
    s2 = next(r for r in results if value(r, "0020000E") == data.s2_series)
    assert value(s2, "00100020") == data.pid("S2")
    found = c.search_for_series(search_filters={"RequestAttributesSequence.RequestedProcedureID": "RP-S2"})
    assert uids(found, "0020000E") == {data.s2_series}
    assert c.search_for_series(data.studies["S1"], search_filters={"Modality": "XA"}) == []


def test_instances(server: DicomhubServer, data: Data) -> None:
    c = client(server)
    results = c.search_for_instances(data.studies["S1"], data.s1_ct_series)
    assert uids(results, "00080018") == set(data.s1_ct_sops)
    first = next(r for r in results if value(r, "00200013") == 1)
    assert value(first, "00080016") == "1.2.840.10008.5.1.4.1.1.2"
    assert value(first, "00280010") == 16 and value(first, "00280011") == 16  # Rows, Columns
    assert value(first, "00280100") == 16  # BitsAllocated
    assert value(first, "00080056") == "ONLINE"
    assert value(first, "00081190") == (
        f"http://127.0.0.1/dicomweb/studies/{data.studies['S1']}/series/{data.s1_ct_series}"
        f"/instances/{value(first, '00080018')}"
    )
    assert len(c.search_for_instances(data.studies["S1"])) == 3
    found = c.search_for_instances(data.studies["S1"], search_filters={"InstanceNumber": "2"})
    assert uids(found, "00080018") == {data.s1_ct_sops[1]}
    everything = c.search_for_instances(search_filters={"PatientID": data.pid("S1")})
    assert len(everything) == 3
    assert value(everything[0], "00100020") == data.pid("S1")
    # an unknown study is an empty result, not an error
    r = get(server, f"/studies/{datagen.uid()}/instances")
    assert r.status_code == 204


def test_gzip_and_cors_free_json(server: DicomhubServer, data: Data, tmp_path: Path) -> None:
    r = get(server, "/studies", headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/dicom+json"
    assert len(r.json()) == 3
