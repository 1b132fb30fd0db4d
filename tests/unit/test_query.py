"""PS3.4 C.2.2.2 matching rules, in Python and compiled to SQL."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomhub.errors import InvalidIdentifier
from dicomhub.model.identifiers import Level, is_valid_uid, require_uid
from dicomhub.model.query import (
    Condition,
    Range,
    SequenceMatch,
    Single,
    UidList,
    Universal,
    ValueList,
    Wildcard,
    matches,
    parse_matcher,
    query_from_identifier,
    range_bounds,
)


@pytest.mark.parametrize(
    ("vr", "value", "expected"),
    [
        ("LO", "", Universal()),
        ("LO", "*", Universal()),
        ("LO", None, Universal()),
        ("LO", "ABC", Single("ABC")),
        ("PN", "Do*", Wildcard("Do*")),
        ("PN", "?oe", Wildcard("?oe")),
        ("UI", "1.2.3", Single("1.2.3")),
        ("UI", "1.2.3\\1.2.4", UidList(("1.2.3", "1.2.4"))),
        ("CS", "CT\\MR", ValueList(("CT", "MR"))),
        ("DA", "20200101-20201231", Range("20200101", "20201231")),
        ("DA", "-20201231", Range(None, "20201231")),
        ("DA", "20200101-", Range("20200101", None)),
        ("DA", "20200101", Single("20200101")),
        ("TM", "1000-1200", Range("1000", "1200")),
    ],
)
def test_parse_matcher(vr: str, value: object, expected: object) -> None:
    assert parse_matcher(vr, value) == expected


def test_wildcards_in_uid_are_refused() -> None:
    with pytest.raises(InvalidIdentifier):
        parse_matcher("UI", "1.2.*")


def test_malformed_range_is_refused() -> None:
    with pytest.raises(InvalidIdentifier):
        parse_matcher("DA", "2020-01-01")


@pytest.mark.parametrize(
    ("pattern", "value", "ok"),
    [
        ("Do*", "Doe^John", True),
        ("do*", "Doe^John", True),  # PN matching is case-insensitive here
        ("?oe^J*", "Doe^John", True),
        ("?oe^J*", "Dooe^John", False),
        ("*hn", "Doe^John", True),
        ("D*e*", "Doe^John", True),
        ("X*", "Doe^John", False),
    ],
)
def test_wildcard_person_name(pattern: str, value: str, ok: bool) -> None:
    assert matches(Condition("PatientName", "PN", Wildcard(pattern)), value) is ok


def test_wildcard_is_case_sensitive_outside_pn() -> None:
    assert matches(Condition("AccessionNumber", "SH", Wildcard("ab*")), "ABC") is False
    assert matches(Condition("AccessionNumber", "SH", Wildcard("AB*")), "ABC") is True


def test_time_range_upper_bound_covers_the_whole_minute() -> None:
    lower, upper = range_bounds("TM", Range("1000", "1200"))
    assert lower == "1000"
    assert upper is not None and "120059.5" < upper
    cond = Condition("StudyTime", "TM", Range("1000", "1200"))
    assert matches(cond, "120030")
    assert matches(cond, "100000")
    assert not matches(cond, "120100")
    assert not matches(cond, "095959")


def test_value_missing_matches_only_universal() -> None:
    assert not matches(Condition("StudyDescription", "LO", Single("X")), None)
    assert matches(Condition("StudyDescription", "LO", Universal()), None)


def test_sequence_matching_one_level() -> None:
    cond = Condition(
        "RequestAttributesSequence",
        "SQ",
        SequenceMatch((Condition("RequestedProcedureID", "SH", Single("RP2")),)),
    )
    items = [{"RequestedProcedureID": "RP1"}, {"RequestedProcedureID": "RP2"}]
    assert matches(cond, None, items)
    assert not matches(cond, None, items[:1])


def test_query_from_identifier_splits_conditions_and_return_keys() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "Do*"
    ds.StudyDate = "20200101-"
    ds.StudyInstanceUID = ""
    item = Dataset()
    item.RequestedProcedureID = "RP1"
    ds.RequestAttributesSequence = Sequence([item])
    q = query_from_identifier(ds, "STUDY")
    assert q.level is Level.STUDY
    assert set(q.return_keys) == {
        "PatientName",
        "StudyDate",
        "StudyInstanceUID",
        "RequestAttributesSequence",
    }
    assert {c.keyword for c in q.conditions} == {
        "PatientName",
        "StudyDate",
        "RequestAttributesSequence",
    }


@pytest.mark.parametrize(
    ("uid", "ok"),
    [
        ("1.2.840.10008.1.1", True),
        ("1.2.3.04", False),
        ("../1.2.3", False),
        ("1.2." + "3" * 60, True),
        ("1.2." + "3" * 61, False),
        ("", False),
        ("1.2.3.", False),
    ],
)
def test_uid_syntax(uid: str, ok: bool) -> None:
    assert is_valid_uid(uid) is ok
    if not ok:
        with pytest.raises(InvalidIdentifier):
            require_uid(uid, "SOPInstanceUID")
