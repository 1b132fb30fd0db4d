"""MPPS: the PS3.4 F.7.2 rules of model.mpps, the service on a migrated SQLite index
(the order moves, the HL7 status message is queued and delivered with retries), and
the N-response encoding of the Attribute Identifier List."""

from __future__ import annotations

import datetime as dt
from io import BytesIO
from pathlib import Path

import hl7
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence

from dicomhub.dimse import messages as M
from dicomhub.errors import NotFound
from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.mpps import MppsRepository
from dicomhub.index.orders import OrderRepository
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.mpps import (
    MODALITY_PERFORMED_PROCEDURE_STEP,
    DuplicatePerformedStep,
    InvalidAttributeValue,
    MissingAttribute,
    NoSuchAttribute,
    PerformedStepFinal,
    PerformedStepStatus,
    apply_n_set,
    check_n_create,
)
from dicomhub.model.orders import Order, PatientRef, RequestedProcedure, ScheduledProcedureStep, StepStatus
from dicomhub.services.mpps import MppsService
from dicomhub.services.orders import OrderKey, OrderService

MODALITY = Caller(Channel.DIMSE, "CTAE", "127.0.0.1")


def n_create(accession: str = "ACC1", step_id: str = "SPS1", status: str = "IN PROGRESS") -> Dataset:
    item = Dataset()
    item.StudyInstanceUID = "1.2.3.4"
    item.ReferencedStudySequence = Sequence()
    item.AccessionNumber = accession
    item.RequestedProcedureID = "RP1"
    item.RequestedProcedureDescription = ""
    item.ScheduledProcedureStepID = step_id
    item.ScheduledProcedureStepDescription = ""
    item.ScheduledProtocolCodeSequence = Sequence()
    ds = Dataset()
    ds.ScheduledStepAttributesSequence = Sequence([item])
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P1"
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.ReferencedPatientSequence = Sequence()
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CTAE"
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20260301"
    ds.PerformedProcedureStepStartTime = "101500"
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepDescription = ""
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = Sequence()
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = Sequence()
    ds.PerformedSeriesSequence = Sequence()
    return ds


def n_set(status: str = "COMPLETED", series: bool = True, end: bool = True) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    if end:
        ds.PerformedProcedureStepEndDate = "20260301"
        ds.PerformedProcedureStepEndTime = "103000"
    if series:
        s = Dataset()
        s.SeriesInstanceUID = "1.2.3.4.1"
        s.RetrieveAETitle = ""
        s.SeriesDescription = ""
        s.PerformingPhysicianName = ""
        s.OperatorsName = ""
        s.ProtocolName = "HEAD"
        s.ReferencedImageSequence = Sequence()
        s.ReferencedNonImageCompositeSOPInstanceSequence = Sequence()
        ds.PerformedSeriesSequence = Sequence([s])
    return ds


# ---------------------------------------------------------------- the rules


def test_n_create_requires_type_1_and_type_2_attributes() -> None:
    check_n_create(n_create())
    ds = n_create()
    del ds.PerformedStationAETitle
    with pytest.raises(MissingAttribute) as missing:
        check_n_create(ds)
    assert missing.value.tags == (0x00400241,)
    ds = n_create()
    ds.Modality = ""  # Type 1: a value is required
    with pytest.raises(MissingAttribute, match="Modality"):
        check_n_create(ds)
    ds = n_create()
    del ds.StudyID  # Type 2: present, even empty
    with pytest.raises(MissingAttribute, match="StudyID"):
        check_n_create(ds)
    ds = n_create()
    del ds.ScheduledStepAttributesSequence[0].StudyInstanceUID
    with pytest.raises(MissingAttribute, match="Scheduled Step Attributes item 1") as inner:
        check_n_create(ds)
    assert inner.value.tags == (0x0020000D,)


@pytest.mark.parametrize("status", ["COMPLETED", "DISCONTINUED", "STARTED"])
def test_n_create_only_in_progress(status: str) -> None:
    with pytest.raises(InvalidAttributeValue) as bad:
        check_n_create(n_create(status=status))
    assert bad.value.tags == (0x00400252,)


def test_n_set_rules() -> None:
    stored, status = n_create(), PerformedStepStatus.IN_PROGRESS
    merged, after = apply_n_set(stored, status, n_set())
    assert after is PerformedStepStatus.COMPLETED
    assert merged.PerformedSeriesSequence[0].SeriesInstanceUID == "1.2.3.4.1"
    assert merged.PatientID == "P1"  # what N-SET does not name is kept
    # Still in progress: no final-state requirements yet.
    still, same = apply_n_set(stored, status, n_set("IN PROGRESS", series=False, end=False))
    assert same is PerformedStepStatus.IN_PROGRESS
    # DISCONTINUED needs the end, not a series.
    assert apply_n_set(stored, status, n_set("DISCONTINUED", series=False))[1].final
    with pytest.raises(MissingAttribute, match="PerformedSeriesSequence") as no_series:
        apply_n_set(stored, status, n_set(series=False))
    assert no_series.value.tags == (0x00400340,)
    with pytest.raises(MissingAttribute, match="PerformedProcedureStepEndDate"):
        apply_n_set(stored, status, n_set(end=False))
    with pytest.raises(InvalidAttributeValue, match="not IN PROGRESS, COMPLETED or DISCONTINUED"):
        apply_n_set(stored, status, n_set("DONE"))
    not_allowed = n_set()
    not_allowed.PatientID = "OTHER"
    with pytest.raises(InvalidAttributeValue, match="may not be set by N-SET") as refused:
        apply_n_set(stored, status, not_allowed)
    assert refused.value.tags == (0x00100020,)
    unknown = n_set()
    unknown.Rows = 512  # an image attribute: not in the MPPS IOD
    with pytest.raises(NoSuchAttribute) as no_such:
        apply_n_set(stored, status, unknown)
    assert no_such.value.tags == (0x00280010,)
    for final in (PerformedStepStatus.COMPLETED, PerformedStepStatus.DISCONTINUED):
        with pytest.raises(PerformedStepFinal, match="may no longer be updated"):
            apply_n_set(merged, final, n_set("IN PROGRESS", series=False, end=False))


def test_n_response_carries_the_attribute_identifier_list() -> None:
    raw = M.encode_n_response(
        M.N_SET_RSP, 7, "1.2.840.10008.3.1.2.3.3", "1.2.3", 0x0106,
        error_comment="bad", attribute_identifier_list=(0x00400252, 0x00100020),
    )  # fmt: skip
    command = _command_set(raw)
    assert command.Status == 0x0106 and command.ErrorComment == "bad"
    assert command.AffectedSOPInstanceUID == "1.2.3"
    assert [int(t) for t in command.AttributeIdentifierList] == [0x00400252, 0x00100020]
    # A success carries neither.
    ok = _command_set(M.encode_n_response(M.N_SET_RSP, 7, None, None, 0, attribute_identifier_list=(1,)))
    assert "AttributeIdentifierList" not in ok and ok.Status == 0


def _command_set(raw: bytes) -> Dataset:
    # Command sets are implicit VR little endian (PS3.7 6.3.1); pydicom reads them as a peer would.
    return read_dataset(BytesIO(raw), is_implicit_VR=True, is_little_endian=True)


# ---------------------------------------------------------------- the service


@pytest.fixture
def services(tmp_path: Path) -> tuple[MppsService, OrderService]:
    engine = connect_engine(f"sqlite:///{tmp_path / 'index.db'}")
    migrate(engine)
    orders = OrderService(OrderRepository(engine))
    orders.place_order(
        Order(
            "ACC1",
            PatientRef("P1", "HOSP"),
            placer_order_number="PL1",
            filler_order_number="FL1",
            patient_name="Doe^Jane^^Dr",
            procedures=(RequestedProcedure("RP1", steps=(ScheduledProcedureStep("SPS1", "CT"),)),),
        ),
        Caller.cli(),
    )
    return MppsService(MppsRepository(engine), orders, "127.0.0.1:1", "ARCH"), orders


def _status(orders: OrderService, accession: str = "ACC1") -> StepStatus:
    return orders.order(OrderKey(accession_number=accession), Caller.cli()).status


def test_the_order_moves_with_the_performed_step(services: tuple[MppsService, OrderService]) -> None:
    mpps, orders = services
    step = mpps.create(n_create(), "1.2.3.100", MODALITY)
    assert step.status is PerformedStepStatus.IN_PROGRESS and step.linked_orders
    assert _status(orders) is StepStatus.IN_PROGRESS
    with pytest.raises(DuplicatePerformedStep):
        mpps.create(n_create(), "1.2.3.100", MODALITY)
    assert mpps.set("1.2.3.100", n_set(), MODALITY).status is PerformedStepStatus.COMPLETED
    assert _status(orders) is StepStatus.COMPLETED
    with pytest.raises(PerformedStepFinal):
        mpps.set("1.2.3.100", n_set(), MODALITY)
    with pytest.raises(NotFound):
        mpps.set("1.2.3.999", n_set(), MODALITY)
    stored = mpps.get("1.2.3.100").dataset()
    assert stored.PerformedSeriesSequence[0].SeriesInstanceUID == "1.2.3.4.1"
    # One ORC-5 per change, in order: IP then CM, for the order system's ids.
    queued = [entry.message.message for entry in mpps.repo.pending()]
    assert len(queued) == 2
    parsed = [hl7.parse(text) for text in queued]
    assert [str(m.segment("ORC")[5]) for m in parsed] == ["IP", "CM"]
    first = parsed[0]
    assert str(first.segment("MSH")[9]) == "ORM^O01" and str(first.segment("ORC")[1]) == "SC"
    assert str(first.segment("ORC")[2]) == "PL1" and str(first.segment("OBR")[18]) == "ACC1"
    assert str(first.segment("OBR")[20]) == "SPS1" and str(first.segment("MSH")[3]) == "ARCH"
    assert str(first.segment("PID")[5]) == "Doe^Jane^^^Dr"


def test_discontinued_and_unscheduled(services: tuple[MppsService, OrderService]) -> None:
    mpps, orders = services
    mpps.create(n_create(), "1.2.3.1", MODALITY)
    mpps.set("1.2.3.1", n_set("DISCONTINUED", series=False), MODALITY)
    assert _status(orders) is StepStatus.DISCONTINUED
    # No order with this Accession Number: kept, unlinked, nothing sent.
    before = len(mpps.repo.pending())
    made = mpps.create(n_create(accession="NOPE"), None, MODALITY)
    assert made.sop_instance_uid.startswith("2.25.") and made.linked_orders == ()
    assert len(mpps.repo.pending()) == before
    assert [s.sop_instance_uid for s in mpps.steps(Caller.cli(), linked=False)] == [made.sop_instance_uid]
    assert [s.status for s in mpps.steps(Caller.cli(), status=[PerformedStepStatus.DISCONTINUED])] == [
        PerformedStepStatus.DISCONTINUED
    ]


def test_delivery_retries_in_order_until_accepted(services: tuple[MppsService, OrderService]) -> None:
    mpps, _orders = services
    mpps.create(n_create(), "1.2.3.5", MODALITY)
    mpps.set("1.2.3.5", n_set(), MODALITY)
    sent: list[str] = []

    def down(destination: str, message: str) -> None:
        sent.append(message)
        raise ConnectionRefusedError("nobody listens")

    def up(destination: str, message: str) -> None:
        assert destination == "127.0.0.1:1"
        sent.append(message)

    # The IN PROGRESS message fails; the COMPLETED one waits behind it.
    assert mpps.deliver_due(down) == 1
    newest, oldest = mpps.repo.outbox()
    assert oldest["state"] == "pending" and oldest["attempts"] == 1
    assert "nobody listens" in str(oldest["last_error"]) and newest["attempts"] == 0
    sent.clear()
    assert mpps.deliver_due(up) == 0  # not due yet: it waits before the next attempt
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    assert mpps.deliver_due(up, now=later) == 2
    assert [hl7.parse(m).segment("ORC")[5][0] for m in sent] == ["IP", "CM"]
    assert [m["state"] for m in mpps.repo.outbox()] == ["delivered", "delivered"]
    # A step the order cannot start again (COMPLETED): linked, nothing moves, nothing is sent.
    again = mpps.create(n_create(), "1.2.3.6", MODALITY)
    assert again.linked_orders and len(mpps.repo.pending()) == 0
    # Given up after the retry window: it no longer holds the destination back.
    mpps.orders.place_order(
        Order(
            "ACC2",
            PatientRef("P1", "HOSP"),
            procedures=(RequestedProcedure("RP1", steps=(ScheduledProcedureStep("SPS1"),)),),
        ),
        Caller.cli(),
    )
    mpps.create(n_create(accession="ACC2"), "1.2.3.7", MODALITY)
    assert mpps.deliver_due(down, now=later + dt.timedelta(days=4)) == 1
    assert mpps.repo.outbox()[0]["state"] == "gave-up"


# ---------------------------------------------------------------- the provider


def test_each_refusal_has_its_status() -> None:
    from dicomhub.dimse.providers.mpps import _refusal

    cases = [
        (MissingAttribute("m", (0x00400241,)), 0x0120, (0x00400241,)),
        (InvalidAttributeValue("i", (0x00400252,)), 0x0106, (0x00400252,)),
        (NoSuchAttribute("n", (0x00280010,)), 0x0105, (0x00280010,)),
        (DuplicatePerformedStep("d"), 0x0111, None),
        (PerformedStepFinal("Performed Procedure Step Object may no longer be updated"), 0x0110, None),
        (NotFound("no step"), 0x0112, None),
    ]
    for exc, status, tags in cases:
        response = _refusal(exc)
        assert (response.status, response.attribute_identifier_list) == (status, tags), exc
        assert response.error_comment == str(exc)[:64]


def test_the_provider_is_registered_and_negotiated(services: tuple[MppsService, OrderService]) -> None:
    from dicomhub.config import Settings
    from dicomhub.dimse.acse import acceptor_contexts
    from dicomhub.dimse.association import default_providers, provider_table
    from dicomhub.dimse.providers.mpps import ModalityPerformedProcedureStepProvider
    from dicomhub.dimse.server import association_config

    config = association_config(Settings())
    assert MODALITY_PERFORMED_PROCEDURE_STEP in {str(c.abstract_syntax) for c in acceptor_contexts(config)}
    table = provider_table(default_providers(config, lambda request: None, mpps=services[0]))  # type: ignore[arg-type,return-value]
    assert isinstance(table[MODALITY_PERFORMED_PROCEDURE_STEP], ModalityPerformedProcedureStepProvider)


def test_a_peer_without_the_store_role_may_not_report(services: tuple[MppsService, OrderService]) -> None:
    from types import SimpleNamespace

    from dicomhub.dimse.providers.mpps import ModalityPerformedProcedureStepProvider
    from dicomhub.services.access import Forbidden

    mpps, orders = services

    def refuse() -> None:
        raise Forbidden("peer VIEWER does not have the role store")

    assoc = SimpleNamespace(calling_ae="VIEWER", host="127.0.0.1")
    request = M.NRequest(M.N_CREATE_RQ, 1, 1, MODALITY_PERFORMED_PROCEDURE_STEP, "1.2.3.200",
                         "1.2.840.10008.1.2.1", n_create())  # fmt: skip
    refused = ModalityPerformedProcedureStepProvider(mpps, refuse).n_create(assoc, request)  # type: ignore[arg-type]
    assert refused.status == 0x0124 and "role store" in (refused.error_comment or "")
    with pytest.raises(NotFound):
        mpps.get("1.2.3.200")  # nothing stored
    assert _status(orders) is StepStatus.SCHEDULED  # and the order did not move
    allowed = ModalityPerformedProcedureStepProvider(mpps, lambda: None).n_create(assoc, request)  # type: ignore[arg-type]
    assert allowed.status == 0x0000 and _status(orders) is StepStatus.IN_PROGRESS
