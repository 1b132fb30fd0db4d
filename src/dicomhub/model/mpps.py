"""Modality Performed Procedure Step (PS3.4 Annex F.7): the rules, pure.

A modality reports what it performs: an N-CREATE when a procedure step starts
(status IN PROGRESS), N-SETs while and when it ends (COMPLETED or
DISCONTINUED, after which the step may no longer change). This module says
what an Attribute List (N-CREATE) or a Modification List (N-SET) must and may
hold, after PS3.4 Table F.7.2-1, and raises one exception per DIMSE failure the
SCP answers (the provider maps each to its status):

* :class:`MissingAttribute`: a Type 1 attribute of N-CREATE, or one that the
  final state requires, is absent or empty (0x0120);
* :class:`InvalidAttributeValue`: a Performed Procedure Step Status that is not
  allowed, or an attribute that may not be set by N-SET (0x0106);
* :class:`NoSuchAttribute`: an N-SET of an attribute the IOD does not have
  (0x0105);
* :class:`PerformedStepFinal`: an N-SET on a step already COMPLETED or
  DISCONTINUED (0x0110, PS3.4 F.7.2.2.2).

Each carries the tag(s) concerned, for the response's Attribute Identifier List.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicomhub.errors import Conflict, InvalidRequest
from dicomhub.model.orders import Order

__all__ = [
    "ORDER_STATUS_CODES",
    "DuplicatePerformedStep",
    "Hl7Outgoing",
    "MODALITY_PERFORMED_PROCEDURE_STEP",
    "InvalidAttributeValue",
    "MissingAttribute",
    "MppsViolation",
    "NoSuchAttribute",
    "PerformedProcedureStep",
    "PerformedStepFinal",
    "PerformedStepStatus",
    "ScheduledStepRef",
    "apply_n_set",
    "hl7_status_message",
    "check_n_create",
    "scheduled_step_refs",
]

#: The SOP Class UID (PS3.4 F.7.3) and its well-known name.
MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"


class PerformedStepStatus(enum.Enum):
    """Performed Procedure Step Status (0040,0252), PS3.3 C.4.14."""

    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"

    @property
    def final(self) -> bool:
        return self is not PerformedStepStatus.IN_PROGRESS


class MppsViolation(InvalidRequest):
    """An Attribute or Modification List the rules of PS3.4 F.7.2 refuse."""

    def __init__(self, message: str, tags: Iterable[int] = ()) -> None:
        super().__init__(message)
        self.tags: tuple[int, ...] = tuple(tags)


class MissingAttribute(MppsViolation):
    """A required attribute is absent or empty (DIMSE 0x0120 Missing Attribute)."""


class InvalidAttributeValue(MppsViolation):
    """A value not allowed, or an attribute N-SET may not change (DIMSE 0x0106)."""


class NoSuchAttribute(MppsViolation):
    """An attribute the MPPS IOD does not define (DIMSE 0x0105 No Such Attribute)."""


class DuplicatePerformedStep(Conflict):
    """An N-CREATE for a SOP Instance UID already held (DIMSE 0x0111)."""


class PerformedStepFinal(Conflict):
    """The step is COMPLETED or DISCONTINUED and may no longer be updated (DIMSE 0x0110)."""


def _t(group: int, element: int) -> int:
    return (group << 16) | element


# Tags of Table F.7.2-1, by keyword, so that messages can name them.
STATUS = _t(0x0040, 0x0252)
SCHEDULED_STEP_ATTRIBUTES = _t(0x0040, 0x0270)
PERFORMED_SERIES = _t(0x0040, 0x0340)
END_DATE = _t(0x0040, 0x0250)
END_TIME = _t(0x0040, 0x0251)

# N-CREATE, SCU Type 1 (must be present with a value).
_CREATE_TYPE_1 = (
    SCHEDULED_STEP_ATTRIBUTES,
    _t(0x0040, 0x0253),  # Performed Procedure Step ID
    _t(0x0040, 0x0241),  # Performed Station AE Title
    _t(0x0040, 0x0244),  # Performed Procedure Step Start Date
    _t(0x0040, 0x0245),  # Performed Procedure Step Start Time
    STATUS,
    _t(0x0008, 0x0060),  # Modality
)
# N-CREATE, SCU Type 2 (must be present, may be empty).
_CREATE_TYPE_2 = (
    _t(0x0010, 0x0010),  # Patient's Name
    _t(0x0010, 0x0020),  # Patient ID
    _t(0x0010, 0x0030),  # Patient's Birth Date
    _t(0x0010, 0x0040),  # Patient's Sex
    _t(0x0008, 0x1120),  # Referenced Patient Sequence
    _t(0x0040, 0x0242),  # Performed Station Name
    _t(0x0040, 0x0243),  # Performed Location
    _t(0x0040, 0x0254),  # Performed Procedure Step Description
    _t(0x0040, 0x0255),  # Performed Procedure Type Description
    _t(0x0008, 0x1032),  # Procedure Code Sequence
    END_DATE,
    END_TIME,
    _t(0x0020, 0x0010),  # Study ID
    _t(0x0040, 0x0260),  # Performed Protocol Code Sequence
    PERFORMED_SERIES,
)
# Within each Scheduled Step Attributes Sequence item: Study Instance UID Type 1, the others Type 2.
_SCHEDULED_ITEM_TYPE_1 = (_t(0x0020, 0x000D),)
_SCHEDULED_ITEM_TYPE_2 = (
    _t(0x0008, 0x1110),  # Referenced Study Sequence
    _t(0x0008, 0x0050),  # Accession Number
    _t(0x0040, 0x1001),  # Requested Procedure ID
    _t(0x0032, 0x1060),  # Requested Procedure Description
    _t(0x0040, 0x0009),  # Scheduled Procedure Step ID
    _t(0x0040, 0x0007),  # Scheduled Procedure Step Description
    _t(0x0040, 0x0008),  # Scheduled Protocol Code Sequence
)
# Within each Performed Series Sequence item, final state Type 1.
_SERIES_ITEM_FINAL_1 = (
    _t(0x0020, 0x000E),  # Series Instance UID
)

# N-SET "Not allowed" (Table F.7.2-1): what identifies the step, its patient and schedule.
_NOT_SETTABLE = frozenset(
    {
        SCHEDULED_STEP_ATTRIBUTES,
        _t(0x0040, 0x0253),  # Performed Procedure Step ID
        _t(0x0040, 0x0241),  # Performed Station AE Title
        _t(0x0040, 0x0244),  # Performed Procedure Step Start Date
        _t(0x0040, 0x0245),  # Performed Procedure Step Start Time
        _t(0x0008, 0x0060),  # Modality
        _t(0x0008, 0x0016),  # SOP Class UID
        _t(0x0008, 0x0018),  # SOP Instance UID
        _t(0x0010, 0x0010),
        _t(0x0010, 0x0020),
        _t(0x0010, 0x0021),  # Issuer of Patient ID
        _t(0x0010, 0x0030),
        _t(0x0010, 0x0040),
        _t(0x0010, 0x1000),  # Other Patient IDs
        _t(0x0010, 0x1002),  # Other Patient IDs Sequence
        _t(0x0008, 0x1120),
        _t(0x0038, 0x0010),  # Admission ID
        _t(0x0040, 0x0242),
        _t(0x0040, 0x0243),
        _t(0x0020, 0x0010),
    }
)
# N-SET may set these (Type 3 in the N-SET column), besides the status.
_SETTABLE = frozenset(
    {
        STATUS,
        _t(0x0008, 0x0005),  # Specific Character Set
        _t(0x0040, 0x0254),
        _t(0x0040, 0x0255),
        _t(0x0008, 0x1032),
        END_DATE,
        END_TIME,
        _t(0x0040, 0x0260),
        PERFORMED_SERIES,
        _t(0x0040, 0x0280),  # Comments on the Performed Procedure Step
        _t(0x0040, 0x0281),  # Performed Procedure Step Discontinuation Reason Code Sequence
        _t(0x0040, 0x0441),  # Content Item Modifier Sequence
        _t(0x0040, 0x4051),  # Performed Procedure Step End DateTime
        _t(0x0018, 0x115E),  # Image and Fluoroscopy Area Dose Product
        _t(0x0018, 0x9345),  # CTDIvol
        _t(0x0018, 0x9346),  # CTDI Phantom Type Code Sequence
    }
)


def _settable(tag: int) -> bool:
    group, element = tag >> 16, tag & 0xFFFF
    if group & 1:
        return True  # private attributes: the modality's own business, kept as sent
    # Besides the table's own: the Radiation Dose and the Billing and Material
    # Management modules (PS3.3 C.4.16, C.4.17), all in (0040,0293)-(0040,0324).
    return tag in _SETTABLE or (group == 0x0040 and 0x0293 <= element <= 0x0324)


def _name(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag

    keyword = keyword_for_tag(tag)
    return (
        f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if keyword
        else f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    )


def _empty(ds: Dataset, tag: int) -> bool:
    element = ds.get(Tag(tag))
    return (
        element is None
        or element.value in (None, "", b"", [])
        or (element.VR == "SQ" and len(element.value) == 0)
    )


def _require(ds: Dataset, type_1: Iterable[int], type_2: Iterable[int], where: str) -> None:
    for tag in type_1:
        if _empty(ds, tag):
            raise MissingAttribute(f"{_name(tag)} missing or empty{where}", (tag,))
    for tag in type_2:
        if Tag(tag) not in ds:
            raise MissingAttribute(f"{_name(tag)} missing{where}", (tag,))


def _status(ds: Dataset) -> PerformedStepStatus:
    value = str(ds.get("PerformedProcedureStepStatus", "") or "").strip()
    try:
        return PerformedStepStatus(value)
    except ValueError:
        raise InvalidAttributeValue(
            f"Performed Procedure Step Status {value[:20]!r} is not IN PROGRESS, COMPLETED or DISCONTINUED",
            (STATUS,),
        ) from None


def check_n_create(ds: Dataset) -> None:
    """Refuse an N-CREATE Attribute List the rules do not allow (PS3.4 F.7.2.1).

    Raises
    ------
    MissingAttribute
        A Type 1 attribute absent or empty, or a Type 2 one absent (also
        within the Scheduled Step Attributes Sequence items).
    InvalidAttributeValue
        A status other than IN PROGRESS: a step is created in progress.
    """
    if Tag(STATUS) in ds and not _empty(ds, STATUS):
        status = _status(ds)
        if status is not PerformedStepStatus.IN_PROGRESS:
            raise InvalidAttributeValue(
                f"Performed Procedure Step Status must be IN PROGRESS on N-CREATE, not {status.value}",
                (STATUS,),
            )
    _require(ds, _CREATE_TYPE_1, _CREATE_TYPE_2, "")
    for n, item in enumerate(ds.ScheduledStepAttributesSequence, 1):
        _require(
            item, _SCHEDULED_ITEM_TYPE_1, _SCHEDULED_ITEM_TYPE_2, f" in Scheduled Step Attributes item {n}"
        )


def _check_final(ds: Dataset, status: PerformedStepStatus) -> None:
    """The Final State requirements of Table F.7.2-1 (PS3.4 F.7.2.2): an end date and
    time, and for COMPLETED at least one performed series, each with its UID."""
    for tag in (END_DATE, END_TIME):
        if _empty(ds, tag):
            raise MissingAttribute(f"{_name(tag)} is required to set the step {status.value}", (tag,))
    if status is PerformedStepStatus.COMPLETED:
        if _empty(ds, PERFORMED_SERIES):
            raise MissingAttribute(
                f"{_name(PERFORMED_SERIES)} needs an item to set the step COMPLETED", (PERFORMED_SERIES,)
            )
        for n, item in enumerate(ds.PerformedSeriesSequence, 1):
            _require(item, _SERIES_ITEM_FINAL_1, (), f" in Performed Series item {n}")


def apply_n_set(
    stored: Dataset, status: PerformedStepStatus, modifications: Dataset
) -> tuple[Dataset, PerformedStepStatus]:
    """The attributes and status after an N-SET of ``modifications`` on a step that
    has ``stored`` and is ``status`` (PS3.4 F.7.2.2).

    Raises
    ------
    PerformedStepFinal
        The step is already COMPLETED or DISCONTINUED.
    NoSuchAttribute, InvalidAttributeValue, MissingAttribute
        An attribute the IOD lacks; one N-SET may not change, or a bad status;
        a final state without what it requires.
    """
    if status.final:
        raise PerformedStepFinal(
            f"Performed Procedure Step Object may no longer be updated: it is {status.value}"
        )
    for element in modifications:
        tag = int(element.tag)
        if tag in _NOT_SETTABLE or tag == SCHEDULED_STEP_ATTRIBUTES:
            raise InvalidAttributeValue(f"{_name(tag)} may not be set by N-SET (PS3.4 F.7.2)", (tag,))
        if not _settable(tag):
            raise NoSuchAttribute(f"{_name(tag)} is not an attribute of the MPPS IOD", (tag,))
    new_status = _status(modifications) if Tag(STATUS) in modifications else status
    merged = Dataset()
    merged.update(stored)
    for element in modifications:
        merged[element.tag] = element
    if new_status.final:
        _check_final(merged, new_status)
    return merged, new_status


# ---------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ScheduledStepRef:
    """One Scheduled Step Attributes Sequence item: what links a performed step to
    the order it performs (empty values: unscheduled, IHE's "unscheduled case")."""

    accession_number: str = ""
    requested_procedure_id: str = ""
    scheduled_procedure_step_id: str = ""
    study_instance_uid: str = ""

    def public(self) -> dict[str, str]:
        return {
            "accession_number": self.accession_number,
            "requested_procedure_id": self.requested_procedure_id,
            "scheduled_procedure_step_id": self.scheduled_procedure_step_id,
            "study_instance_uid": self.study_instance_uid,
        }


def scheduled_step_refs(ds: Dataset) -> tuple[ScheduledStepRef, ...]:
    """The items of the Scheduled Step Attributes Sequence as references."""
    return tuple(
        ScheduledStepRef(
            str(item.get("AccessionNumber", "") or "").strip(),
            str(item.get("RequestedProcedureID", "") or "").strip(),
            str(item.get("ScheduledProcedureStepID", "") or "").strip(),
            str(item.get("StudyInstanceUID", "") or "").strip(),
        )
        for item in ds.get("ScheduledStepAttributesSequence", [])
    )


@dataclass(frozen=True, slots=True)
class PerformedProcedureStep:
    """A performed procedure step as the archive keeps it.

    ``attributes``: the whole attribute set as DICOM JSON (PS3.18 F.2), N-SETs
    merged in; ``linked_orders``: the Accession Numbers of the orders it moved
    (empty: unlinked)."""

    sop_instance_uid: str
    status: PerformedStepStatus
    refs: tuple[ScheduledStepRef, ...] = ()
    attributes: str = "{}"
    calling_ae_title: str = ""
    modality: str = ""
    patient_id: str = ""
    linked_orders: tuple[str, ...] = ()
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def dataset(self) -> Dataset:
        return Dataset.from_json(self.attributes)

    def public(self) -> dict[str, object]:
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "status": self.status.value,
            "modality": self.modality,
            "patient_id": self.patient_id,
            "calling_ae_title": self.calling_ae_title,
            "scheduled_steps": [r.public() for r in self.refs],
            "linked_orders": list(self.linked_orders),
            "linked": bool(self.linked_orders),
            "created_at": None if self.created_at is None else self.created_at.isoformat(),
            "updated_at": None if self.updated_at is None else self.updated_at.isoformat(),
        }


# ---------------------------------------------------------------- HL7 v2 status out


@dataclass(frozen=True, slots=True)
class Hl7Outgoing:
    """An HL7 v2 message to deliver over MLLP to ``destination`` (``host:port``);
    ``subject``: what it reports (the performed step's SOP Instance UID)."""

    destination: str
    control_id: str
    message: str
    subject: str = ""


def _hl7(value: str) -> str:
    """``value`` with the HL7 delimiters escaped (HL7 v2 2.7: \\E\\ first)."""
    for raw, escaped in (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\")):
        value = value.replace(raw, escaped)
    return value.replace("\r", " ").replace("\n", " ")


#: ORC-5 order status (HL7 table 0038) for each state a step reaches through MPPS.
ORDER_STATUS_CODES = {
    PerformedStepStatus.IN_PROGRESS: "IP",
    PerformedStepStatus.COMPLETED: "CM",
    PerformedStepStatus.DISCONTINUED: "DC",
}


def hl7_status_message(
    order: Order,
    status: PerformedStepStatus,
    control_id: str,
    at: datetime,
    *,
    sending_application: str = "DICOMHUB",
    step_id: str = "",
) -> str:
    """An ORM^O01 status change (ORC-1 ``SC``, ORC-5 ``IP``/``CM``/``DC``) telling the
    order system that ``order`` (its step ``step_id``, else every step) moved;
    segments separated by carriage returns, without the MLLP frame."""
    steps = [s for p in order.procedures for s in p.steps if not step_id or s.step_id == step_id]
    procedure = next(
        (p for p in order.procedures if any(s in p.steps for s in steps)),
        order.procedures[0] if order.procedures else None,
    )
    step = steps[0] if steps else None
    code = (
        ""
        if procedure is None
        else "^".join(
            _hl7(v)
            for v in (
                procedure.code.value,
                procedure.code.meaning or procedure.description,
                procedure.code.scheme,
            )
        )
    )
    # PN is family^given^middle^prefix^suffix, XPN family^given^middle^suffix^prefix.
    pn = (order.patient_name.split("^") + [""] * 5)[:5]
    name = "^".join(_hl7(part) for part in (*pn[:3], pn[4], pn[3])).rstrip("^")
    segments = [
        f"MSH|^~\\&|{_hl7(sending_application)}||||{at:%Y%m%d%H%M%S}||ORM^O01|{_hl7(control_id)}|P|2.5.1",
        f"PID|||{_hl7(order.patient.patient_id)}^^^{_hl7(order.patient.issuer_of_patient_id)}||{name}",
        f"ORC|SC|{_hl7(order.placer_order_number)}|{_hl7(order.filler_order_number)}||"
        f"{ORDER_STATUS_CODES[status]}",
        "|".join(
            [
                "OBR",
                "1",
                _hl7(order.placer_order_number),
                _hl7(order.filler_order_number),
                code,
                *[""] * 13,
                _hl7(order.accession_number),
                "" if procedure is None else _hl7(procedure.procedure_id),
                "" if step is None else _hl7(step.step_id),
                *([""] * 3),
                "" if step is None else _hl7(step.modality),
            ]
        ),
    ]
    return "\r".join(segments)
