"""dicomhub's QIDO-RS extensions: ``orderby`` (server-side sort), ``count`` (the total)
and ``label`` (studies carrying a label), parsed and then run on a real index."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dicomhub.errors import InvalidRequest
from dicomhub.index.security import SecurityRepository
from dicomhub.model.access import Access, Action, Grant, Scope
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.identifiers import Level
from dicomhub.model.query import OrderKey, Query, parse_order_by
from dicomhub.web.dicomweb.qido import parse_qido_params
from tests import datagen
from tests.unit.test_ingest_search import CLI, Archive, encode


def parse(params: list[tuple[str, str]], level: Level = Level.STUDY):  # type: ignore[no-untyped-def]
    return parse_qido_params(level, params, {}, default_limit=100, max_limit=1000)


def test_orderby_keys_and_direction() -> None:
    assert parse_order_by("-StudyDate, PatientName") == (
        OrderKey("StudyDate", True),
        OrderKey("PatientName", False),
    )
    assert parse_order_by("+AccessionNumber") == (OrderKey("AccessionNumber", False),)
    req = parse([("orderby", "-StudyDate"), ("count", "true"), ("label", "a,b"), ("label", "a")])
    assert req.query.order_by == (OrderKey("StudyDate", True),)
    assert req.count is True
    assert req.query.labels == ("a", "b")
    assert parse([]).count is False


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ([("orderby", "StudyDescription")], "cannot sort by 'StudyDescription'"),
        ([("orderby", "SOPInstanceUID")], "cannot sort by"),
        ([("orderby", "StudyDate,-StudyDate")], "twice"),
        ([("count", "yes")], "count must be true or false"),
        ([("label", "no spaces")], "label"),
    ],
)
def test_refusals(params: list[tuple[str, str]], reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        parse(params)


@pytest.fixture
def archive(tmp_path: Path, index_url: str) -> Archive:
    archive = Archive(tmp_path, index_url)
    # Stored out of date order, so that storage order is not the sorted order.
    for i, (date, name) in enumerate(
        [("20200301", "Brown^A"), ("20210101", "adams^B"), ("20190505", "Clark^C"), ("20220202", "BROWN^A")]
    ):
        ds = datagen.make_dataset(patient_id=f"P{i}", patient_name=name, study_date=date, accession=f"ACC{i}")
        archive.ingest.store_part10(encode(ds), CLI)
    return archive


def _study(archive: Archive, query: Query, caller: Caller = CLI) -> list[str]:
    return [str(m.get("PatientID")) for m in archive.search.search(query, caller)]


def test_sorted_pages_and_total(archive: Archive) -> None:
    base = Query(level=Level.STUDY, return_keys=("PatientID",), order_by=(OrderKey("StudyDate", True),))
    first = _study(archive, replace(base, limit=2))
    second = _study(archive, replace(base, limit=2, offset=2))
    assert first + second == ["P3", "P1", "P0", "P2"]
    assert archive.search.count(replace(base, limit=2, offset=2), CLI) == 4
    by_name = replace(base, order_by=(OrderKey("PatientName"), OrderKey("StudyDate", True)))
    # Names sort case-insensitively (the folded key): adams, Brown^A in either case (newest first), Clark.
    assert _study(archive, by_name) == ["P1", "P3", "P0", "P2"]


def test_label_filter_and_count_stay_inside_the_callers_grants(archive: Archive) -> None:
    security = SecurityRepository(archive.index.engine)
    uids = {
        str(m.get("PatientID")): str(m.get("StudyInstanceUID"))
        for m in archive.search.search(
            Query(level=Level.STUDY, return_keys=("PatientID", "StudyInstanceUID")), CLI
        )
    }
    security.add_label(uids["P0"], "teaching")
    security.add_label(uids["P2"], "teaching")
    security.add_label(uids["P2"], "research")
    labelled = Query(level=Level.STUDY, return_keys=("PatientID",), labels=("teaching",))
    assert sorted(_study(archive, labelled)) == ["P0", "P2"]
    assert archive.search.count(labelled, CLI) == 2
    # A reader limited to "research" never sees the other teaching study, nor counts it.
    reader = Caller(
        Channel.HTTP,
        "reader",
        principal="reader",
        access=Access.of([Grant("reader", Scope.parse("label:research"))]),
    )
    assert _study(archive, labelled, reader) == ["P2"]
    assert archive.search.count(labelled, reader, Action.QUERY) == 1


def test_patient_resource_sorts_counts_and_stays_inside_the_callers_grants(archive: Archive) -> None:
    """``/dicomweb/patients`` (a dicomhub extension) parses to a patient-level query:
    name wildcards, the order, the total, and counts of the studies the caller may see."""
    with pytest.raises(InvalidRequest, match="label filters studies"):
        parse([("label", "teaching")], Level.PATIENT)
    extra = datagen.make_dataset(patient_id="P0", patient_name="Brown^A", study_date="20230303")
    archive.ingest.store_part10(encode(extra), CLI)
    security = SecurityRepository(archive.index.engine)
    security.add_label(str(extra.StudyInstanceUID), "research")
    req = parse(
        [("PatientName", "B*"), ("orderby", "-PatientID"), ("count", "true"),
         ("includefield", "PatientID,NumberOfPatientRelatedStudies")],
        Level.PATIENT,
    )  # fmt: skip

    def found(caller: Caller) -> list[tuple[str, str]]:
        matches = archive.search.search(req.query, caller)
        return [(str(m.get("PatientID")), str(m.get("NumberOfPatientRelatedStudies"))) for m in matches]

    assert found(CLI) == [("P3", "1"), ("P0", "2")]
    assert archive.search.count(req.query, CLI) == 2
    reader = Caller(
        Channel.HTTP,
        "reader",
        principal="reader",
        access=Access.of([Grant("reader", Scope.parse("label:research"))]),
    )
    # Only P0 has a research study, and only that one is counted.
    assert found(reader) == [("P0", "1")]
    assert archive.search.count(req.query, reader) == 1
