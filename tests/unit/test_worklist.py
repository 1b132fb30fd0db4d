"""Modality Worklist: identifier parsing and answers (model.worklist), and the SQL
matching of index.worklist on a migrated SQLite index through the service."""

from __future__ import annotations

from datetime import datetime, time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomhub.dimse.messages import decode_dataset
from dicomhub.dimse.worklist import encode_answer
from dicomhub.errors import InvalidIdentifier
from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.orders import OrderRepository
from dicomhub.index.worklist import WorklistRepository
from dicomhub.model.access import Access, Grant, Scope, ScopeKind
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.orders import (
    CodedEntry,
    Order,
    PatientRef,
    RequestedProcedure,
    ScheduledProcedureStep,
    StepStatus,
)
from dicomhub.model.query import Single, Wildcard
from dicomhub.model.worklist import answer_dataset, worklist_answer, worklist_query
from dicomhub.services.access import Forbidden
from dicomhub.services.orders import OrderKey, OrderService
from dicomhub.services.worklist import WorklistService

SCHEDULER = Caller(
    Channel.HTTP, "s", access=Access(frozenset({Grant("scheduler", Scope(ScopeKind.ARCHIVE))}))
)


def _identifier(**item: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = ""
    ds.AccessionNumber = ""
    sps = Dataset()
    sps.Modality = ""
    sps.ScheduledProcedureStepStartDate = ""
    sps.ScheduledProcedureStepStartTime = ""
    for key, value in item.items():
        setattr(sps, key, value)
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    return ds


def test_date_and_time_combine_into_one_range() -> None:
    q = worklist_query(
        _identifier(
            ScheduledProcedureStepStartDate="20260301-20260302", ScheduledProcedureStepStartTime="10-1500"
        )
    )
    assert q.start is not None
    assert (q.start.lower, q.start.upper) == (
        datetime(2026, 3, 1, 10),
        datetime(2026, 3, 2, 15, 0, 59, 999999),
    )
    one_day = worklist_query(_identifier(ScheduledProcedureStepStartDate="20260301")).start
    assert one_day is not None and (one_day.lower, one_day.upper) == (
        datetime(2026, 3, 1),
        datetime.combine(datetime(2026, 3, 1), time.max),
    )
    open_lower = worklist_query(_identifier(ScheduledProcedureStepStartDate="-20260301")).start
    assert open_lower is not None and open_lower.lower is None
    time_only = worklist_query(_identifier(ScheduledProcedureStepStartTime="0800-0900")).start
    assert time_only is not None and time_only.lower is None
    assert time_only.contains(datetime(2026, 1, 5, 8, 30)) and not time_only.contains(
        datetime(2026, 1, 5, 9, 1)
    )
    assert worklist_query(_identifier()).start is None


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"ScheduledProcedureStepStartDate": "2026-03-01"}, "not a range"),
        ({"ScheduledProcedureStepStartDate": "20260230"}, "not a date"),
        ({"ScheduledProcedureStepStartDate": "2026030*"}, "wildcards"),
        ({"ScheduledProcedureStepStartTime": "2561"}, "not a time"),
        ({"ScheduledProcedureStepStartDate": "20260302-20260301"}, "ends before"),
    ],
)
def test_malformed_dates_and_times_are_invalid_identifiers(item: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidIdentifier, match=message):
        worklist_query(_identifier(**item))


def test_conditions_and_unsupported_keys() -> None:
    ds = _identifier(Modality="CT", ScheduledStationAETitle="CT*")
    ds.PatientName = "Doe^J?ne"
    ds.PatientMotherBirthName = ""  # no worklist key
    ds.RequestingPhysician = "Who^Ever"  # a return key only: its value is not matched
    q = worklist_query(ds)
    assert q.conditions == {
        "PatientName": Wildcard("Doe^J?ne"),
        "step.Modality": Single("CT"),
        "step.ScheduledStationAETitle": Wildcard("CT*"),
    }
    assert set(q.unsupported) == {"RequestingPhysician", "PatientMotherBirthName"}
    two = _identifier()
    two.ScheduledProcedureStepSequence.append(Dataset())
    with pytest.raises(InvalidIdentifier, match="one item"):
        worklist_query(two)


def _order(accession: str, name: str, modality: str, station: str, start: datetime | None) -> Order:
    step = ScheduledProcedureStep(
        f"S{accession}",
        modality,
        description="Step é",
        station_ae_title=station,
        start=start,
        performing_physician="Smith^John",
        protocol_code=CodedEntry("P1", "LOCAL", "Protocol"),
    )
    return Order(
        accession,
        PatientRef(f"P{accession}", "HOSP"),
        patient_name=name,
        patient_birth_date="19700102",
        patient_sex="F",
        procedures=(
            RequestedProcedure(f"R{accession}", "Head", CodedEntry("C", "L", "M"), "1.2.3", "STAT", (step,)),
        ),
    )


@pytest.fixture
def services(tmp_path: Path) -> tuple[OrderService, WorklistService]:
    engine = connect_engine(f"sqlite:///{tmp_path / 'index.db'}")
    migrate(engine)
    orders = OrderService(OrderRepository(engine))
    for order in (
        _order("A1", "Doe^Jane", "CT", "CTAE", datetime(2026, 3, 1, 10, 15)),
        _order("A2", "doe^john", "CT", "CT2AE", datetime(2026, 3, 2, 8, 0)),
        _order("A3", "Roe^Richard", "MR", "MRAE", datetime(2026, 3, 1, 23, 0)),
        _order("A4", "Poe^Edgar", "MR", "MRAE", None),
        _order("A5", "Doe^Anna", "CT", "CTAE", datetime(2026, 3, 1, 9, 0)),
    ):
        orders.place_order(order, SCHEDULER)
    orders.move_step(OrderKey(accession_number="A5"), "SA5", StepStatus.IN_PROGRESS, SCHEDULER)
    return orders, WorklistService(WorklistRepository(engine))


def _accessions(worklist: WorklistService, ds: Dataset) -> list[str]:
    return [e.accession_number for e in worklist.find(worklist_query(ds), SCHEDULER)]


def test_matching_in_sql(services: tuple[OrderService, WorklistService]) -> None:
    _, worklist = services
    # Universal: scheduled steps only (A5 is in progress), earliest first, no start last.
    assert _accessions(worklist, _identifier()) == ["A1", "A3", "A2", "A4"]
    assert _accessions(worklist, _identifier(Modality="CT")) == ["A1", "A2"]
    assert _accessions(worklist, _identifier(ScheduledStationAETitle="CT*")) == ["A1", "A2"]
    assert _accessions(worklist, _identifier(ScheduledStationAETitle="CTAE\\MRAE")) == ["A1", "A3", "A4"]
    name = _identifier()
    name.PatientName = "DOE^J*"  # person names match case-insensitively
    assert _accessions(worklist, name) == ["A1", "A2"]
    assert _accessions(worklist, _identifier(ScheduledProcedureStepStartDate="20260301")) == ["A1", "A3"]
    combined = _identifier(
        ScheduledProcedureStepStartDate="20260301-20260302", ScheduledProcedureStepStartTime="2200-0900"
    )
    assert _accessions(worklist, combined) == ["A3", "A2"]
    assert _accessions(worklist, _identifier(ScheduledProcedureStepStartTime="0800-1100")) == ["A1", "A2"]
    uid = _identifier()
    uid.StudyInstanceUID = "1.2.3"
    assert len(_accessions(worklist, uid)) == 4
    percent = _identifier()
    percent.PatientName = "%"  # a LIKE character is a literal
    assert _accessions(worklist, percent) == []


def _flat(ds: Dataset) -> list[tuple[int, str]]:
    return [(int(e.tag), "" if e.VR == "SQ" else str(e.value or "")) for e in ds.iterall()]


def test_answers_carry_only_the_asked_keys(services: tuple[OrderService, WorklistService]) -> None:
    _, worklist = services
    ds = _identifier(Modality="CT")
    ds.PatientID = ""
    ds.RequestingPhysician = ""
    ds.RequestedProcedureCodeSequence = Sequence([])
    ds.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence = Sequence([])
    ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription = ""
    q = worklist_query(ds)
    entry = next(iter(worklist.find(q, SCHEDULER)))
    answer = answer_dataset(worklist_answer(entry, q))
    # The DIMSE layer frames the same answer without pydicom: both readings agree.
    for syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1"):
        framed = decode_dataset([memoryview(encode_answer(worklist_answer(entry, q), syntax))], syntax)
        assert _flat(framed) == _flat(answer)
    assert {e.keyword for e in answer} == {
        "SpecificCharacterSet",  # the step description is not ASCII
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "RequestingPhysician",
        "RequestedProcedureCodeSequence",
        "ScheduledProcedureStepSequence",
    }
    assert answer.SpecificCharacterSet == "ISO_IR 192" and answer.RequestingPhysician in ("", None)
    item = answer.ScheduledProcedureStepSequence[0]
    assert (item.Modality, item.ScheduledProcedureStepStartDate, item.ScheduledProcedureStepStartTime) == (
        "CT",
        "20260301",
        "101500",
    )
    assert item.ScheduledProtocolCodeSequence[0].CodeValue == "P1"
    assert answer.RequestedProcedureCodeSequence[0].CodingSchemeDesignator == "L"


def test_reading_the_worklist_needs_archive_query_or_schedule(
    services: tuple[OrderService, WorklistService],
) -> None:
    _, worklist = services
    labelled = Caller(
        Channel.DIMSE, "l", access=Access(frozenset({Grant("reader", Scope(ScopeKind.LABEL, "x"))}))
    )
    with pytest.raises(Forbidden):
        worklist.find(worklist_query(_identifier()), labelled)
    reader = Caller(Channel.DIMSE, "r", access=Access(frozenset({Grant("reader", Scope(ScopeKind.ARCHIVE))})))
    assert len(list(worklist.find(worklist_query(_identifier()), reader))) == 4
