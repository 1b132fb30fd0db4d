"""Order context: patients of record, imaging orders and their scheduled steps.

The shape follows the DICOM Modality Worklist model (PS3.4 Annex K) and the
IHE Scheduled Workflow profile: an *imaging service request* (:class:`Order`,
identified by its Accession Number) holds *requested procedures*, each with
*scheduled procedure steps* that a modality performs. A :class:`Patient` is
the demographics record as the order system knows it, keyed by Patient ID and
Issuer of Patient ID; an order keeps a snapshot of them as they were ordered.

A step moves scheduled -> in progress -> completed or discontinued, or is
cancelled before it started (PS3.4 F.7.2.1 for the performed side). The
transitions are the functions below; they refuse an illegal move with
:class:`IllegalTransition` so that every channel (HL7 v2, FHIR, the CLI, and
MPPS later) obeys the same rules. Everything here is pure.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field
from datetime import datetime

from dicomhub.errors import Conflict

__all__ = [
    "CodedEntry",
    "IllegalTransition",
    "Order",
    "Patient",
    "PatientMerge",
    "PatientRef",
    "RequestedProcedure",
    "ScheduledProcedureStep",
    "StepStatus",
    "cancel",
    "check_order",
    "check_patient",
    "complete",
    "discontinue",
    "order_status",
    "start",
]


class StepStatus(enum.Enum):
    """The state of a scheduled procedure step; the values are the DICOM Scheduled
    Procedure Step Status / Performed Procedure Step Status words where one exists."""

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"
    CANCELLED = "CANCELLED"

    @property
    def final(self) -> bool:
        return self in (StepStatus.COMPLETED, StepStatus.DISCONTINUED, StepStatus.CANCELLED)


class IllegalTransition(Conflict):
    """A step (or an order) cannot move from its state to the one asked for."""


# Legal moves: a step is cancelled only before it started (nothing was acquired);
# once started it ends completed or discontinued; a final state never changes.
_MOVES: dict[StepStatus, frozenset[StepStatus]] = {
    StepStatus.SCHEDULED: frozenset({StepStatus.IN_PROGRESS, StepStatus.DISCONTINUED, StepStatus.CANCELLED}),
    StepStatus.IN_PROGRESS: frozenset({StepStatus.COMPLETED, StepStatus.DISCONTINUED}),
    StepStatus.COMPLETED: frozenset(),
    StepStatus.DISCONTINUED: frozenset(),
    StepStatus.CANCELLED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class CodedEntry:
    """A code (Code Value, Coding Scheme Designator, Code Meaning; PS3.3 8.8)."""

    value: str = ""
    scheme: str = ""
    meaning: str = ""

    def __bool__(self) -> bool:
        return bool(self.value or self.meaning)


@dataclass(frozen=True, slots=True)
class PatientRef:
    """Patient ID and Issuer of Patient ID: what names a patient across systems."""

    patient_id: str
    issuer_of_patient_id: str = ""

    def __str__(self) -> str:
        return (
            f"{self.patient_id}^^^{self.issuer_of_patient_id}"
            if self.issuer_of_patient_id
            else self.patient_id
        )


@dataclass(frozen=True, slots=True)
class Patient:
    """Demographics of record. ``patient_name`` is a DICOM PN (``Family^Given^Middle^Prefix^Suffix``),
    ``patient_birth_date`` a DA (``YYYYMMDD``), ``patient_sex`` M, F, O or empty.
    ``resource_id``: the id the REST and FHIR APIs use (given by the index)."""

    ref: PatientRef
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    other_patient_ids: tuple[str, ...] = ()
    resource_id: str = ""
    merged_into: PatientRef | None = None
    updated_at: datetime | None = None

    def public(self) -> dict[str, object]:
        return {
            "id": self.resource_id,
            "patient_id": self.ref.patient_id,
            "issuer_of_patient_id": self.ref.issuer_of_patient_id,
            "patient_name": self.patient_name,
            "patient_birth_date": self.patient_birth_date,
            "patient_sex": self.patient_sex,
            "other_patient_ids": list(self.other_patient_ids),
            "merged_into": None if self.merged_into is None else str(self.merged_into),
            "updated_at": None if self.updated_at is None else self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class ScheduledProcedureStep:
    """One Scheduled Procedure Step Sequence item (PS3.4 K.6.1.2.2) and its state.

    ``start``: the Scheduled Procedure Step Start Date and Time (naive local time,
    as DICOM DA/TM carry it), None when not yet known."""

    step_id: str
    modality: str = ""
    description: str = ""
    station_ae_title: str = ""
    station_name: str = ""
    location: str = ""
    start: datetime | None = None
    performing_physician: str = ""
    protocol_code: CodedEntry = field(default_factory=CodedEntry)
    status: StepStatus = StepStatus.SCHEDULED

    def public(self) -> dict[str, object]:
        return {
            "step_id": self.step_id,
            "modality": self.modality,
            "description": self.description,
            "station_ae_title": self.station_ae_title,
            "station_name": self.station_name,
            "location": self.location,
            "start": None if self.start is None else self.start.isoformat(),
            "performing_physician": self.performing_physician,
            "protocol_code": dataclasses.asdict(self.protocol_code) if self.protocol_code else None,
            "status": self.status.value,
        }


@dataclass(frozen=True, slots=True)
class RequestedProcedure:
    """A Requested Procedure (PS3.4 K.6.1.2.3) with the steps scheduled for it."""

    procedure_id: str
    description: str = ""
    code: CodedEntry = field(default_factory=CodedEntry)
    study_instance_uid: str = ""
    priority: str = ""  # Requested Procedure Priority: STAT, HIGH, ROUTINE, MEDIUM, LOW
    steps: tuple[ScheduledProcedureStep, ...] = ()

    def public(self) -> dict[str, object]:
        return {
            "procedure_id": self.procedure_id,
            "description": self.description,
            "code": dataclasses.asdict(self.code) if self.code else None,
            "study_instance_uid": self.study_instance_uid,
            "priority": self.priority,
            "steps": [s.public() for s in self.steps],
        }


@dataclass(frozen=True, slots=True)
class Order:
    """An imaging service request: identified by its Accession Number (the IHE key
    every system shares), with the placer's and filler's order numbers when known.

    ``patient`` is who it is for; ``patient_name``, ``patient_birth_date`` and
    ``patient_sex`` are the demographics the order carried (a snapshot).
    ``order_id``: the id the CLI, REST and FHIR APIs use (given by the index)."""

    accession_number: str
    patient: PatientRef
    placer_order_number: str = ""
    filler_order_number: str = ""
    referring_physician: str = ""
    reason: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    procedures: tuple[RequestedProcedure, ...] = ()
    order_id: str = ""
    source: str = ""  # hl7, fhir, cli, rest: who created it
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def status(self) -> StepStatus:
        return order_status(self)

    @property
    def steps(self) -> tuple[ScheduledProcedureStep, ...]:
        return tuple(s for p in self.procedures for s in p.steps)

    def public(self) -> dict[str, object]:
        return {
            "id": self.order_id,
            "accession_number": self.accession_number,
            "patient_id": self.patient.patient_id,
            "issuer_of_patient_id": self.patient.issuer_of_patient_id,
            "patient_name": self.patient_name,
            "patient_birth_date": self.patient_birth_date,
            "patient_sex": self.patient_sex,
            "placer_order_number": self.placer_order_number,
            "filler_order_number": self.filler_order_number,
            "referring_physician": self.referring_physician,
            "reason": self.reason,
            "status": self.status.value,
            "source": self.source,
            "procedures": [p.public() for p in self.procedures],
            "created_at": None if self.created_at is None else self.created_at.isoformat(),
            "updated_at": None if self.updated_at is None else self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class PatientMerge:
    """ADT^A40: ``prior`` is merged into ``surviving`` (PS: the archive's studies of
    ``prior`` follow once the archive applies it)."""

    surviving: PatientRef
    prior: PatientRef
    source: str = ""
    at: datetime | None = None


def order_status(order: Order) -> StepStatus:
    """The state of a whole order from its steps: in progress while any step is;
    scheduled while any is scheduled; else completed if any completed, discontinued if
    any was, cancelled when all were. An order without steps is scheduled."""
    states = {s.status for s in order.steps}
    for status in (
        StepStatus.IN_PROGRESS,
        StepStatus.SCHEDULED,
        StepStatus.COMPLETED,
        StepStatus.DISCONTINUED,
    ):
        if status in states:
            return status
    return StepStatus.CANCELLED if states else StepStatus.SCHEDULED


def _move(step: ScheduledProcedureStep, to: StepStatus) -> ScheduledProcedureStep:
    if to not in _MOVES[step.status]:
        raise IllegalTransition(
            f"scheduled procedure step {step.step_id} is {step.status.value}: it cannot become {to.value}"
        )
    return dataclasses.replace(step, status=to)


def _each_step(order: Order, step_id: str | None, to: StepStatus) -> Order:
    procedures = []
    found = False
    for p in order.procedures:
        steps = []
        for s in p.steps:
            if step_id is None or s.step_id == step_id:
                found = True
                s = _move(s, to)
            steps.append(s)
        procedures.append(dataclasses.replace(p, steps=tuple(steps)))
    if step_id is not None and not found:
        raise IllegalTransition(f"order {order.accession_number} has no scheduled procedure step {step_id}")
    return dataclasses.replace(order, procedures=tuple(procedures))


def start(order: Order, step_id: str) -> Order:
    """The step ``step_id`` is being performed (MPPS N-CREATE IN PROGRESS)."""
    return _each_step(order, step_id, StepStatus.IN_PROGRESS)


def complete(order: Order, step_id: str) -> Order:
    """The step ``step_id`` was performed (MPPS N-SET COMPLETED)."""
    return _each_step(order, step_id, StepStatus.COMPLETED)


def discontinue(order: Order, step_id: str | None = None) -> Order:
    """Stop the step ``step_id``, or every step not yet final (HL7 ORC-1 DC). A step
    already final stays as it is when the whole order is discontinued; an order
    whose steps are all final cannot be."""
    if step_id is not None:
        return _each_step(order, step_id, StepStatus.DISCONTINUED)
    if all(s.status.final for s in order.steps) and order.steps:
        raise IllegalTransition(
            f"order {order.accession_number} is {order.status.value}: nothing to discontinue"
        )
    return _final_where_open(order, StepStatus.DISCONTINUED)


def cancel(order: Order) -> Order:
    """Cancel the order (HL7 ORC-1 CA): only while no step has started."""
    started = [s for s in order.steps if s.status is not StepStatus.SCHEDULED]
    if started:
        raise IllegalTransition(
            f"order {order.accession_number} cannot be cancelled: step {started[0].step_id} is "
            f"{started[0].status.value} (discontinue it instead)"
        )
    return _final_where_open(order, StepStatus.CANCELLED)


def _final_where_open(order: Order, to: StepStatus) -> Order:
    return dataclasses.replace(
        order,
        procedures=tuple(
            dataclasses.replace(p, steps=tuple(s if s.status.final else _move(s, to) for s in p.steps))
            for p in order.procedures
        ),
    )


# ---------------------------------------------------------------- checks

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DA = re.compile(r"^\d{8}$")


def _limit(value: str, length: int, what: str) -> None:
    # The lengths are those of the DICOM value representations the worklist answers with.
    if len(value) > length:
        raise ValueError(f"{what} is longer than {length} characters: {value[:80]!r}")
    if "\\" in value:
        raise ValueError(f"{what} may not contain a backslash (the DICOM value separator)")


def check_patient(patient: Patient) -> Patient:
    """``patient`` if its values fit the DICOM attributes they become; ValueError saying which does not."""
    if not patient.ref.patient_id.strip():
        raise ValueError("a patient needs a Patient ID")
    _limit(patient.ref.patient_id, 64, "Patient ID")
    _limit(patient.ref.issuer_of_patient_id, 64, "Issuer of Patient ID")
    _limit(patient.patient_name, 320, "Patient's Name")
    if patient.patient_birth_date and not _DA.match(patient.patient_birth_date):
        raise ValueError(f"Patient's Birth Date {patient.patient_birth_date!r} is not YYYYMMDD")
    if patient.patient_sex not in ("", "M", "F", "O"):
        raise ValueError(f"Patient's Sex {patient.patient_sex!r} is not M, F or O")
    return patient


def check_order(order: Order) -> Order:
    """``order`` if it can be scheduled: an Accession Number, a patient, unique procedure
    and step ids, values that fit their DICOM attributes; ValueError saying what is wrong."""
    if not order.accession_number.strip():
        raise ValueError("an order needs an Accession Number")
    _limit(order.accession_number, 16, "Accession Number")
    check_patient(Patient(order.patient, order.patient_name, order.patient_birth_date, order.patient_sex))
    _limit(order.referring_physician, 320, "Referring Physician's Name")
    _limit(order.placer_order_number, 64, "Placer Order Number")
    _limit(order.filler_order_number, 64, "Filler Order Number")
    seen_procedures: set[str] = set()
    seen_steps: set[str] = set()
    for p in order.procedures:
        if not p.procedure_id:
            raise ValueError("a requested procedure needs a Requested Procedure ID")
        _limit(p.procedure_id, 16, "Requested Procedure ID")
        _limit(p.description, 64, "Requested Procedure Description")
        if p.procedure_id in seen_procedures:
            raise ValueError(f"Requested Procedure ID {p.procedure_id} appears twice")
        seen_procedures.add(p.procedure_id)
        if p.study_instance_uid and (len(p.study_instance_uid) > 64 or not _UID.match(p.study_instance_uid)):
            raise ValueError(f"Study Instance UID {p.study_instance_uid[:80]!r} is not a UID")
        for s in p.steps:
            if not s.step_id:
                raise ValueError("a scheduled procedure step needs a Scheduled Procedure Step ID")
            _limit(s.step_id, 16, "Scheduled Procedure Step ID")
            if s.step_id in seen_steps:
                raise ValueError(f"Scheduled Procedure Step ID {s.step_id} appears twice")
            seen_steps.add(s.step_id)
            _limit(s.modality, 16, "Modality")
            _limit(s.station_ae_title, 16, "Scheduled Station AE Title")
            _limit(s.station_name, 16, "Scheduled Station Name")
            _limit(s.description, 64, "Scheduled Procedure Step Description")
            _limit(s.performing_physician, 320, "Scheduled Performing Physician's Name")
    return order
