"""QIDO-RS parameter parsing, content negotiation and DICOM JSON/XML serialisation (no I/O)."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET

import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomhub.errors import InvalidRequest
from dicomhub.index.compile import fuzzy_words
from dicomhub.model.identifiers import Level
from dicomhub.model.match import Match
from dicomhub.model.query import Range, SequenceMatch, Single, UidList, ValueList, Wildcard
from dicomhub.web.dicomweb.dicomjson import match_to_json, match_to_xml, matches_to_json_bytes
from dicomhub.web.dicomweb.qido import Representation, negotiate, parse_qido_params
from dicomhub.web.errors import NotAcceptable


def parse(params: list[tuple[str, str]], level: Level = Level.STUDY, **kw: object):  # type: ignore[no-untyped-def]
    return parse_qido_params(
        level,
        params,
        kw.pop("scope", {}),  # type: ignore[arg-type]
        default_limit=kw.pop("default_limit", 100),  # type: ignore[arg-type]
        max_limit=kw.pop("max_limit", 1000),  # type: ignore[arg-type]
        defaults=("StudyInstanceUID", "RetrieveURL"),
    )


def test_keywords_and_tags_become_conditions() -> None:
    req = parse([("PatientID", "P1"), ("00100010", "Doe*"), ("StudyDate", "20200101-20201231")])
    conds = {c.keyword: c.matcher for c in req.query.conditions}
    assert conds == {
        "PatientID": Single("P1"),
        "PatientName": Wildcard("Doe*"),
        "StudyDate": Range("20200101", "20201231"),
    }
    assert req.query.level is Level.STUDY
    # matching keys are returned; RetrieveURL is made by the web layer, not searched
    assert req.query.return_keys == ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate")


def test_uid_lists_with_comma_or_backslash() -> None:
    req = parse([("StudyInstanceUID", "1.2.3,1.2.4\\1.2.5")])
    assert req.query.conditions[0].matcher == UidList(("1.2.3", "1.2.4", "1.2.5"))


def test_repeated_parameter_is_a_value_list() -> None:
    req = parse([("AccessionNumber", "A1"), ("AccessionNumber", "A2")])
    assert req.query.conditions[0].matcher == ValueList(("A1", "A2"))


def test_empty_value_is_universal_return_key() -> None:
    req = parse([("PatientName", "")])
    assert req.query.conditions == ()
    assert "PatientName" in req.query.return_keys


def test_scope_from_path() -> None:
    req = parse([], Level.SERIES, scope={"StudyInstanceUID": "1.2.3"})
    assert [(c.keyword, c.matcher) for c in req.query.conditions] == [("StudyInstanceUID", Single("1.2.3"))]


def test_sequence_matching() -> None:
    req = parse([("RequestAttributesSequence.RequestedProcedureID", "RP1")], Level.SERIES)
    (cond,) = req.query.conditions
    assert cond.keyword == "RequestAttributesSequence"
    assert isinstance(cond.matcher, SequenceMatch)
    assert cond.matcher.conditions[0].keyword == "RequestedProcedureID"


def test_includefield() -> None:
    req = parse([("includefield", "StudyDescription,00080080"), ("includefield", "PatientAge")])
    assert req.query.return_keys[-3:] == ("StudyDescription", "InstitutionName", "PatientAge")
    assert not req.include_all
    assert parse([("includefield", "all")]).include_all


def test_limit_offset_defaults_and_clamp() -> None:
    req = parse([])
    assert (req.limit, req.query.limit, req.query.offset, req.warnings) == (100, 101, 0, ())
    req = parse([("limit", "5"), ("offset", "10")])
    assert (req.limit, req.query.limit, req.query.offset) == (5, 6, 10)
    req = parse([("limit", "999999999")])
    assert req.limit == 1000
    assert "maximum" in req.warnings[0]


@pytest.mark.parametrize(
    "params",
    [
        [("limit", "-1")],
        [("limit", "abc")],
        [("limit", "0")],
        [("limit", "1.5")],
        [("offset", "-1")],
        [("offset", "")],
        [("fuzzymatching", "yes")],
        [("PatientNmae", "x")],
        [("includefield", "NoSuchThing")],
        [("12345678", "x")],  # not a public tag
        [("SeriesInstanceUID", "1.2.3")],  # below the study level
        [("NumberOfSeriesRelatedInstances", "1")],
        [("StudyInstanceUID", "1.2.*")],  # no wildcards in UIDs
        [("StudyDate", "2020-2021-2022")],
        [("RetrieveURL", "http://x")],
        [("RequestAttributesSequence", "x")],
        [("A.B.C", "x")],
    ],
)
def test_invalid_parameters(params: list[tuple[str, str]]) -> None:
    with pytest.raises(InvalidRequest):
        parse(params)


def test_sql_text_is_just_a_value() -> None:
    req = parse([("PatientID", "' OR 1=1 --")])
    assert req.query.conditions[0].matcher == Single("' OR 1=1 --")


def test_fuzzy_flag_and_words() -> None:
    assert parse([("fuzzymatching", "true")]).query.fuzzy_person_names
    assert not parse([("fuzzymatching", "false")]).query.fuzzy_person_names
    assert fuzzy_words("smi  Anna^mar, x=y") == ["SMI", "ANNA", "MAR", "X", "Y"]


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, Representation.JSON),
        ("", Representation.JSON),
        ("*/*", Representation.JSON),
        ("application/dicom+json", Representation.JSON),
        ("application/json", Representation.JSON),
        ('multipart/related; type="application/dicom+xml"', Representation.XML),
        ("multipart/related;type=application/dicom+xml", Representation.XML),
        ("application/dicom+json;q=0.5, multipart/related; type=application/dicom+xml", Representation.XML),
        ("text/html, application/dicom+json;q=0.1", Representation.JSON),
    ],
)
def test_negotiate(accept: str | None, expected: str) -> None:
    assert negotiate(accept) == expected


@pytest.mark.parametrize(
    "accept",
    [
        "application/xml",
        "text/html",
        "application/dicom+json;q=0",
        'multipart/related; type="application/dicom"',
    ],
)
def test_negotiate_refuses(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        negotiate(accept)


def _study_match(n: int = 0) -> Match:
    m = Match()
    m.set("StudyInstanceUID", f"1.2.3.{n}")
    m.set("PatientName", "Doe^John=\u5c71\u7530^\u592a\u90ce")
    m.set("PatientID", f"P{n}")
    m.set("StudyDate", "20200115")
    m.set("StudyTime", None)
    m.set("ModalitiesInStudy", ["CT", "MR"])
    m.set("NumberOfStudyRelatedInstances", "12")
    m.set("AccessionNumber", "")
    m.set("RetrieveURL", f"http://h/dicomweb/studies/1.2.3.{n}")
    m.set("StudyDescription", "a\\b")
    return m


def test_match_to_json() -> None:
    obj = match_to_json(_study_match())
    assert list(obj) == sorted(obj)
    assert obj["0020000D"] == {"vr": "UI", "Value": ["1.2.3.0"]}
    assert obj["00100010"] == {
        "vr": "PN",
        "Value": [{"Alphabetic": "Doe^John", "Ideographic": "\u5c71\u7530^\u592a\u90ce"}],
    }
    assert obj["00080030"] == {"vr": "TM"}
    assert obj["00080050"] == {"vr": "SH"}
    assert obj["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert obj["00201208"] == {"vr": "IS", "Value": [12]}
    assert obj["00081190"] == {"vr": "UR", "Value": ["http://h/dicomweb/studies/1.2.3.0"]}
    assert obj["00081030"] == {"vr": "LO", "Value": ["a", "b"]}  # backslash = multiplicity


def test_header_elements_and_sequences_to_json() -> None:
    item = Dataset()
    item.RequestedProcedureID = "RP1"
    m = Match()
    m.values[0x00400275] = ("SQ", DataElement(0x00400275, "SQ", Sequence([item])))
    m.values[0x00180050] = ("DS", DataElement(0x00180050, "DS", "2.5"))
    m.values[0x00080080] = ("LO", DataElement(0x00080080, "LO", "Hospital"))
    m.set("RequestedProcedureDescription", None)
    obj = match_to_json(m)
    assert obj["00400275"] == {"vr": "SQ", "Value": [{"00401001": {"vr": "SH", "Value": ["RP1"]}}]}
    assert obj["00180050"] == {"vr": "DS", "Value": [2.5]}
    assert obj["00080080"] == {"vr": "LO", "Value": ["Hospital"]}
    assert obj["00321060"] == {"vr": "LO"}
    # round trip through pydicom
    ds = Dataset.from_json(json.dumps(obj))
    assert ds.RequestAttributesSequence[0].RequestedProcedureID == "RP1"
    assert float(ds.SliceThickness) == 2.5


def test_match_to_xml() -> None:
    m = _study_match()
    item = Dataset()
    item.RequestedProcedureID = "R<&>1"
    m.values[0x00400275] = ("SQ", DataElement(0x00400275, "SQ", Sequence([item])))
    root = ET.fromstring(match_to_xml(m))
    ns = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
    pn = root.find("d:DicomAttribute[@tag='00100010']/d:PersonName", ns)
    assert pn is not None and pn.get("number") == "1"
    assert pn.findtext("d:Alphabetic/d:FamilyName", namespaces=ns) == "Doe"
    assert pn.findtext("d:Ideographic/d:GivenName", namespaces=ns) == "\u592a\u90ce"
    mods = root.findall("d:DicomAttribute[@tag='00080061']/d:Value", ns)
    assert [(v.get("number"), v.text) for v in mods] == [("1", "CT"), ("2", "MR")]
    empty = root.find("d:DicomAttribute[@tag='00080030']", ns)
    assert empty is not None and empty.get("vr") == "TM" and len(empty) == 0
    seq = root.find("d:DicomAttribute[@tag='00400275']/d:Item[@number='1']/d:DicomAttribute", ns)
    assert seq is not None and seq.get("keyword") == "RequestedProcedureID"
    assert seq.findtext("d:Value", namespaces=ns) == "R<&>1"


def test_serialising_a_hundred_studies_is_fast() -> None:
    matches = [_study_match(n) for n in range(100)]
    matches_to_json_bytes(matches)  # warm caches
    start = time.perf_counter()
    body = matches_to_json_bytes(matches)
    elapsed = time.perf_counter() - start
    assert len(json.loads(body)) == 100
    assert elapsed < 0.05, f"serialising 100 studies took {elapsed * 1000:.1f} ms"
