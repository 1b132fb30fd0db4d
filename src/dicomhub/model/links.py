"""Which order a stored study was acquired for (IHE Scheduled Workflow).

A modality that used the Modality Worklist copies the order's keys into the
objects it makes: the Accession Number (with its Issuer when it has one), the
Requested Procedure ID in the Request Attributes Sequence (0040,0275), and the
order's Study Instance UID when the order gave one (PS3.17 Annex B, IHE RAD TF-2
4.8.4.1.3). :func:`match_order` applies them in that order of trust:

1. the Accession Number, which names one order here;
2. else the Requested Procedure ID, when exactly one order has a procedure with it
   (the ID is unique only within its order);
3. else the Study Instance UID, when exactly one order scheduled that study.

Orders here carry no Issuer of Accession Number (HL7 OBR-18 has none), so the
study's issuer cannot disagree with one and the number alone decides. A study
that matches several orders at one step matches none: an operator links it by
hand rather than the archive guessing. Everything here is pure.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

__all__ = ["LinkedStudy", "MatchedBy", "OrderKeys", "StudyKeys", "UnmatchedStudy", "match_order"]


class MatchedBy(enum.Enum):
    """How a study was linked to its order."""

    ACCESSION_NUMBER = "accession"
    REQUESTED_PROCEDURE_ID = "procedure"
    STUDY_INSTANCE_UID = "study"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class StudyKeys:
    """What a study carries that can name its order."""

    study_instance_uid: str
    accession_number: str = ""
    requested_procedure_id: str = ""


@dataclass(frozen=True, slots=True)
class OrderKeys:
    """What names an order: its Accession Number, its Requested Procedure IDs and the
    Study Instance UIDs it scheduled. ``order_pk``: its row, for the index."""

    order_pk: int
    accession_number: str
    procedure_ids: frozenset[str] = frozenset()
    study_instance_uids: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class LinkedStudy:
    """A study linked to an order, as order read-back lists it."""

    study_instance_uid: str
    matched_by: MatchedBy
    linked_by: str
    linked_at: datetime | None = None

    def public(self) -> dict[str, object]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "matched_by": self.matched_by.value,
            "linked_by": self.linked_by,
            "linked_at": None if self.linked_at is None else self.linked_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class UnmatchedStudy:
    """A stored study that matches no order (the reconciliation list)."""

    study_instance_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    study_date: str
    study_description: str
    modalities_in_study: str
    number_of_instances: int

    def public(self) -> dict[str, object]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "patient_id": self.patient_id,
            "patient_name": self.patient_name,
            "accession_number": self.accession_number,
            "study_date": self.study_date,
            "study_description": self.study_description,
            "modalities_in_study": self.modalities_in_study,
            "number_of_instances": self.number_of_instances,
        }


def _one(found: list[OrderKeys]) -> OrderKeys | None:
    unique = {o.order_pk: o for o in found}
    return next(iter(unique.values())) if len(unique) == 1 else None


def match_order(study: StudyKeys, candidates: Sequence[OrderKeys]) -> tuple[OrderKeys, MatchedBy] | None:
    """The order ``study`` belongs to among ``candidates`` and how it matched; None when
    none does, or when a step matches several (see the module docstring).

    A step that finds one order decides; the next step is asked only when this one
    finds none, so a study whose Accession Number names no order can still match by
    its Requested Procedure ID, but one that names two orders' procedures never
    falls through to its Study Instance UID.
    """
    def by_accession(o: OrderKeys) -> bool:
        return bool(study.accession_number) and o.accession_number == study.accession_number

    def by_procedure(o: OrderKeys) -> bool:
        return bool(study.requested_procedure_id) and study.requested_procedure_id in o.procedure_ids

    def by_study(o: OrderKeys) -> bool:
        return study.study_instance_uid in o.study_instance_uids

    steps = (
        (MatchedBy.ACCESSION_NUMBER, by_accession),
        (MatchedBy.REQUESTED_PROCEDURE_ID, by_procedure),
        (MatchedBy.STUDY_INSTANCE_UID, by_study),
    )
    for how, matches in steps:
        found = [o for o in candidates if matches(o)]
        if found:
            one = _one(found)
            return None if one is None else (one, how)
    return None
