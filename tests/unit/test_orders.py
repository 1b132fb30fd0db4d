"""Orders: the state rules of model.orders, the service on a migrated SQLite index,
and the HL7 v2 mapping (messages in, ACKs out) without a socket."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dicomhub.errors import Conflict, NotFound
from dicomhub.hl7.messages import handle
from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.orders import OrderRepository
from dicomhub.model.access import Access, Grant, Scope, ScopeKind
from dicomhub.model.audit import AuditEvent, AuditOutcome
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.orders import (
    IllegalTransition,
    Order,
    PatientRef,
    RequestedProcedure,
    ScheduledProcedureStep,
    StepStatus,
    cancel,
    complete,
    discontinue,
    start,
)
from dicomhub.services.access import Forbidden
from dicomhub.services.orders import OrderKey, OrderService

HL7 = Caller(Channel.HL7, "RIS")


def _order(*steps: str) -> Order:
    return Order(
        "ACC1",
        PatientRef("P1", "HOSP"),
        procedures=(RequestedProcedure("RP1", steps=tuple(ScheduledProcedureStep(s, "CT") for s in steps)),),
    )


def test_step_transitions_follow_the_life_cycle() -> None:
    order = start(_order("S1", "S2"), "S1")
    assert [s.status for s in order.steps] == [StepStatus.IN_PROGRESS, StepStatus.SCHEDULED]
    assert order.status is StepStatus.IN_PROGRESS
    done = complete(order, "S1")
    assert done.steps[0].status is StepStatus.COMPLETED
    with pytest.raises(IllegalTransition, match="COMPLETED: it cannot become IN PROGRESS"):
        start(done, "S1")
    with pytest.raises(IllegalTransition, match="cannot be cancelled"):
        cancel(done)
    stopped = discontinue(done)
    assert [s.status for s in stopped.steps] == [StepStatus.COMPLETED, StepStatus.DISCONTINUED]
    assert stopped.status is StepStatus.COMPLETED
    with pytest.raises(IllegalTransition, match="nothing to discontinue"):
        discontinue(stopped)
    with pytest.raises(IllegalTransition, match="SCHEDULED: it cannot become COMPLETED"):
        complete(_order("S1"), "S1")
    with pytest.raises(IllegalTransition, match="no scheduled procedure step S9"):
        start(_order("S1"), "S9")
    assert cancel(_order("S1")).status is StepStatus.CANCELLED


@pytest.fixture
def service(tmp_path: Path) -> OrderService:
    engine = connect_engine(f"sqlite:///{tmp_path / 'index.db'}")
    migrate(engine)
    return OrderService(OrderRepository(engine))


def _frame(*segments: str) -> bytes:
    return "\r".join(segments).encode("utf-8")


MSH = "MSH|^~\\&|RIS|HOSP|DICOMHUB|ARCH|20260101120000||{type}|{id}|P|2.5.1||||||UNICODE UTF-8"
PID = "PID|||{pid}^^^HOSP^MR||Müller^Jürgen^K^^Dr||19700102|M"


def _ack(reply: bytes) -> tuple[str, str]:
    segments = reply.decode("utf-8").strip("\r").split("\r")
    msa = next(s for s in segments if s.startswith("MSA")).split("|")
    err = next((s for s in segments if s.startswith("ERR")), "")
    return msa[1], err


def _orm(control: str, msg_id: str, accession: str = "ACC1", status: str = "") -> bytes:
    return _frame(
        MSH.format(type="ORM^O01^ORM_O01", id=msg_id),
        PID.format(pid="P1"),
        "PV1||O||||||^Ref^Rita",
        f"ORC|{control}|PL{accession}|FL{accession}||{status}",
        f"OBR|1|PL{accession}|FL{accession}|CTHEAD^CT Head^LOCAL^^CT head plain|||||||||||"
        f"|||{accession}|RP{accession}|SPS{accession}|CTAE|||CT|||^^^20260301101500^^R|||||||^Tech^Tom",
        "ZDS|1.2.3.4.5^DICOMHUB^Application^DICOM",
    )


def test_hl7_orm_life_cycle_through_the_service(service: OrderService) -> None:
    def reply(raw: bytes) -> tuple[str, str]:
        return _ack(handle(raw, service, lambda app: Caller(Channel.HL7, app)))

    assert reply(_orm("NW", "1")) == ("AA", "")
    order = service.order(OrderKey(accession_number="ACC1"), HL7)
    assert order.patient == PatientRef("P1", "HOSP")
    assert order.patient_name == "Müller^Jürgen^K^Dr"
    assert order.referring_physician == "Ref^Rita"
    (rp,) = order.procedures
    assert (rp.procedure_id, rp.study_instance_uid, rp.code.value, rp.code.meaning) == (
        "RPACC1", "1.2.3.4.5", "CTHEAD", "CT Head",
    )  # fmt: skip
    (step,) = rp.steps
    assert (step.step_id, step.modality, step.station_ae_title, step.description) == (
        "SPSACC1", "CT", "CTAE", "CT head plain",
    )  # fmt: skip
    assert step.start is not None and step.start.isoformat() == "2026-03-01T10:15:00"
    assert step.performing_physician == "Tech^Tom"
    assert rp.priority == "ROUTINE"
    code, err = reply(_orm("NW", "2"))  # the same order again
    assert code == "AE" and "|205^" in err and "exists already" in err
    assert reply(_orm("SC", "3", status="IP")) == ("AA", "")
    assert service.order(OrderKey(accession_number="ACC1"), HL7).status is StepStatus.IN_PROGRESS
    code, err = reply(_orm("CA", "4"))
    assert code == "AE" and "cannot be cancelled" in err
    assert reply(_orm("DC", "5")) == ("AA", "")
    assert service.order(OrderKey(accession_number="ACC1"), HL7).status is StepStatus.DISCONTINUED
    code, err = reply(_orm("XO", "6"))
    assert code == "AE" and "cannot change" in err
    code, err = reply(_orm("CA", "7", accession="NOPE"))
    assert code == "AE" and "|204^" in err


def test_hl7_message_with_several_orders_is_applied_whole(tmp_path: Path) -> None:
    """A later ORC group that fails takes the earlier ones back: AE means nothing
    applied (so a corrected resend is accepted), and the audit trail says so."""
    engine = connect_engine(f"sqlite:///{tmp_path / 'index.db'}")
    migrate(engine)
    events: list[AuditEvent] = []

    class Recorder:
        def record(self, event: AuditEvent) -> None:
            events.append(event)

    service = OrderService(OrderRepository(engine), Recorder())
    heard: list[tuple[str, bool]] = []  # what the placed listeners see, and whether it is committed
    elsewhere = OrderRepository(engine)  # its own connections, as the study linker's

    def listener(order: Order) -> None:
        committed = elsewhere.order(accession_number=order.accession_number) is not None
        heard.append((order.accession_number, committed))

    service.placed.append(listener)

    def reply(raw: bytes) -> tuple[str, str]:
        return _ack(handle(raw, service, lambda app: Caller(Channel.HL7, app)))

    def groups(msg_id: str, *accessions: str) -> bytes:
        segments = _orm("NW", msg_id).decode("utf-8").split("\r")
        head, group = segments[:3], segments[3:5]
        body = [seg.replace("ACC1", acc) for acc in accessions for seg in group]
        return _frame(*head, *body)

    assert reply(_orm("NW", "1")) == ("AA", "")
    code, err = reply(groups("2", "ACC2", "ACC1"))  # the second group places ACC1 again
    assert code == "AE" and "|205^" in err
    with pytest.raises(NotFound):
        service.order(OrderKey(accession_number="ACC2"), HL7)
    rolled_back = [e for e in events if "rolled back" in str(e.detail.get("reason", ""))]
    assert len(rolled_back) == 1 and rolled_back[0].outcome is AuditOutcome.MINOR_FAILURE
    assert not [e for e in events[1:] if e.outcome is AuditOutcome.SUCCESS]
    assert reply(groups("3", "ACC2", "ACC3")) == ("AA", "")  # the corrected resend
    assert {o.accession_number for o in service.orders(HL7)} == {"ACC1", "ACC2", "ACC3"}
    assert [e.outcome for e in events[-2:]] == [AuditOutcome.SUCCESS, AuditOutcome.SUCCESS]
    assert heard == [("ACC1", True), ("ACC2", True), ("ACC3", True)]  # never the rolled-back ACC2


def test_hl7_rejects_what_it_cannot_read(service: OrderService) -> None:
    def reply(raw: bytes) -> tuple[str, str]:
        return _ack(handle(raw, service, lambda app: Caller(Channel.HL7, app)))

    code, err = reply(b"GET / HTTP/1.1")
    assert code == "AR" and "does not start with an MSH" in err
    code, err = reply(_frame(MSH.format(type="ORU^R01", id="9"), PID.format(pid="P1")))
    assert code == "AR" and "|200^" in err and "ORU\\S\\R01 is not supported" in err
    code, err = reply(_frame(MSH.format(type="ADT^A02", id="9"), PID.format(pid="P1")))
    assert code == "AR" and "|201^" in err
    bad_charset = MSH.replace("UNICODE UTF-8", "KLINGON").format(type="ADT^A01", id="9")
    code, err = reply(_frame(bad_charset, PID.format(pid="P1")))
    assert code == "AR" and "KLINGON" in err
    ascii_msh = MSH.replace("UNICODE UTF-8", "ASCII").format(type="ADT^A01", id="9")
    code, err = reply(_frame(ascii_msh, PID.format(pid="P1")))  # ü is not ASCII
    assert code == "AR" and "not valid ASCII" in err
    code, err = reply(_frame(MSH.format(type="ADT^A01", id="9"), "PID|||^^^HOSP"))
    assert code == "AE" and "PID-3" in err
    latin = MSH.replace("UNICODE UTF-8", "8859/1").format(type="ADT^A08", id="10")
    assert reply((latin + "\r" + PID.format(pid="P2")).encode("latin-1")) == ("AA", "")
    assert service.patient(HL7, ref=PatientRef("P2", "HOSP")).patient_name == "Müller^Jürgen^K^Dr"


def test_hl7_adt_and_merge(service: OrderService) -> None:
    def reply(raw: bytes) -> tuple[str, str]:
        return _ack(handle(raw, service, lambda app: Caller(Channel.HL7, app)))

    assert reply(_frame(MSH.format(type="ADT^A04", id="1"), PID.format(pid="OLD"))) == ("AA", "")
    assert reply(_orm("NW", "2").replace(b"P1^^^HOSP", b"OLD^^^HOSP")) == ("AA", "")
    assert reply(
        _frame(MSH.format(type="ADT^A40", id="3"), PID.format(pid="NEW").replace("Müller", "Meier"),
               "MRG|OLD^^^HOSP")
    ) == ("AA", "")  # fmt: skip
    assert service.order(OrderKey(accession_number="ACC1"), HL7).patient == PatientRef("NEW", "HOSP")
    assert service.patient(HL7, ref=PatientRef("OLD", "HOSP")).merged_into == PatientRef("NEW", "HOSP")
    (merge,) = service.merges(HL7)
    assert merge.prior == PatientRef("OLD", "HOSP")
    code, err = reply(_frame(MSH.format(type="ADT^A40", id="4"), PID.format(pid="NEW")))
    assert code == "AE" and "MRG-1" in err


def test_writing_orders_needs_schedule(service: OrderService) -> None:
    reader = Caller(Channel.HTTP, "r", access=Access(frozenset({Grant("reader", Scope(ScopeKind.ARCHIVE))})))
    scheduler = Caller(
        Channel.HTTP, "s", access=Access(frozenset({Grant("scheduler", Scope(ScopeKind.ARCHIVE))}))
    )
    with pytest.raises(Forbidden):
        service.place_order(_order("S1"), reader)
    placed = service.place_order(_order("S1"), scheduler)
    assert service.order(OrderKey(order_id=placed.order_id), reader).accession_number == "ACC1"
    labelled = Caller(
        Channel.HTTP, "l", access=Access(frozenset({Grant("reader", Scope(ScopeKind.LABEL, "x"))}))
    )
    with pytest.raises(Forbidden):
        service.orders(labelled)
    with pytest.raises(Conflict):
        service.place_order(dataclasses.replace(_order("S2")), scheduler)
