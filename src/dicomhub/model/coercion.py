"""Patient (and study) coercion on the way out (PS3.3 C.12.1 Original Attributes Sequence).

When a study is filed under other demographics than its stored objects carry
(a patient update, a merge, an operator's correction), the archive keeps the
objects' bytes as received and corrects the Patient module of each copy that
leaves it: the current values replace the stored ones and the stored ones are
kept in a new item of Original Attributes Sequence (0400,0561), with the
Attribute Modification DateTime, the Modifying System and the Reason for the
Attribute Modification ``CORRECT``.

A study corrected in place by an operator (``dicomhub study modify`` without new
UIDs) leaves the same way with its corrected study attributes
(:attr:`PatientCoercion.study_values`); a coercion of study attributes alone has
``patient`` False and leaves the Patient module as stored.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

__all__ = ["PATIENT_KEYWORDS", "STUDY_KEYWORDS", "PatientCoercion", "coerce_json", "coerce_patient"]

# The Patient module attributes the index holds and a correction replaces.
PATIENT_KEYWORDS = ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex")
_TAGS = {"PatientID": "00100020", "IssuerOfPatientID": "00100021", "PatientName": "00100010",
         "PatientBirthDate": "00100030", "PatientSex": "00100040"}  # fmt: skip
_ORIGINAL_ATTRIBUTES = "04000561"
# General Study module (PS3.3 C.7.2.1) attributes an operator's correction may set
# in place (the study table holds them; see dicomhub.model.correction).
STUDY_KEYWORDS = ("AccessionNumber", "StudyDescription", "StudyID", "StudyDate", "StudyTime",
                  "ReferringPhysicianName")  # fmt: skip
_STUDY_TAGS = ("00080050", "00081030", "00200010", "00080020", "00080030", "00080090")


@dataclasses.dataclass(frozen=True, slots=True)
class PatientCoercion:
    """The patient a study is filed under now. ``reason``: update, merge or set-patient
    (what made it; the DICOM reason is always CORRECT)."""

    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    reason: str
    modifying_system: str
    modified_at: dt.datetime
    # Study attributes corrected in place, as (keyword, value) pairs.
    study_values: tuple[tuple[str, str], ...] = ()
    # False: a study correction alone (the Patient module leaves as stored).
    patient: bool = True

    def values(self) -> dict[str, str]:
        return {"PatientID": self.patient_id, "IssuerOfPatientID": self.issuer_of_patient_id,
                "PatientName": self.patient_name, "PatientBirthDate": self.patient_birth_date,
                "PatientSex": self.patient_sex}  # fmt: skip


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)


def coerce_patient(ds: Dataset, coercion: PatientCoercion) -> bool:
    """Give ``ds`` the Patient module of ``coercion``, recording what it replaced.

    Returns False (``ds`` untouched) when ``ds`` already carries those values, so
    a copy is never marked as modified for nothing. An empty issuer in the
    coercion keeps the object's issuer while the Patient ID stays, and removes
    it when the Patient ID changes (it named the old identifier's issuer).
    """
    wanted = coercion.values() if coercion.patient else {}
    if (
        coercion.patient
        and not coercion.issuer_of_patient_id
        and _text(ds, "PatientID") == coercion.patient_id
    ):
        wanted.pop("IssuerOfPatientID")
    wanted.update(coercion.study_values)
    changed = [
        k for k, v in wanted.items() if _text(ds, k) != v or (k == "IssuerOfPatientID" and not v and k in ds)
    ]
    if not changed:
        return False
    old = Dataset()
    for keyword in changed:
        if keyword in ds:
            old[keyword] = copy.deepcopy(ds[keyword])
    for keyword in changed:
        value = wanted[keyword]
        if keyword == "IssuerOfPatientID" and not value:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    item = Dataset()
    item.SourceOfPreviousValues = ""
    item.AttributeModificationDateTime = coercion.modified_at.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")
    item.ModifyingSystem = coercion.modifying_system[:64]
    item.ReasonForTheAttributeModification = "CORRECT"
    item.ModifiedAttributesSequence = Sequence([old])
    history = ds.get("OriginalAttributesSequence")
    ds.OriginalAttributesSequence = Sequence([*(history or []), item])
    return True


def coerce_json(text: str, coercion: PatientCoercion) -> str:
    """The DICOM JSON header ``text`` with :func:`coerce_patient` applied (for
    WADO-RS metadata, which comes from the index rather than the blob)."""
    doc: dict[str, Any] = json.loads(text)
    patient = {tag: doc[tag] for tag in (*_TAGS.values(), *_STUDY_TAGS, _ORIGINAL_ATTRIBUTES) if tag in doc}
    ds = Dataset.from_json(patient)
    if not coerce_patient(ds, coercion):
        return text
    for tag in (*_TAGS.values(), *_STUDY_TAGS, _ORIGINAL_ATTRIBUTES):
        doc.pop(tag, None)
    doc.update(ds.to_json_dict())
    return json.dumps(dict(sorted(doc.items())), separators=(",", ":"))
