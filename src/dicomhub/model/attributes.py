"""The one table of indexed attributes.

Each entry says which level an attribute belongs to, which column holds it and
how it is matched. The index schema, header extraction, C-FIND and
QIDO-RS all read this table, so adding a matching key is a one-line change
plus a migration.

References
----------
PS3.4 C.6.1.1 (Patient Root keys) and C.6.2.1 (Study Root keys).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword

from dicomhub.model.identifiers import Level

__all__ = [
    "COMPUTED",
    "INDEXED",
    "BY_KEYWORD",
    "Attribute",
    "Kind",
    "level_attributes",
]


class Kind(enum.Enum):
    """The role of an attribute in matching (PS3.4 C.2.2.1)."""

    UNIQUE = "U"  # unique key of its level
    REQUIRED = "R"  # required key
    OPTIONAL = "O"  # optional key we index anyway


@dataclass(frozen=True, slots=True)
class Attribute:
    """An indexed attribute: ``keyword`` at ``level`` stored in ``column``."""

    keyword: str
    vr: str
    level: Level
    column: str
    kind: Kind
    integer: bool = False  # IS values are stored as integers for numeric order

    @property
    def tag(self) -> int:
        tag = tag_for_keyword(self.keyword)
        if tag is None:  # pragma: no cover - the table is static
            raise KeyError(self.keyword)
        return int(tag)


_P, _ST, _SE, _IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE
_U, _R, _O = Kind.UNIQUE, Kind.REQUIRED, Kind.OPTIONAL

INDEXED: tuple[Attribute, ...] = (
    Attribute("PatientID", "LO", _P, "patient_id", _U),
    Attribute("PatientName", "PN", _P, "patient_name", _R),
    Attribute("PatientBirthDate", "DA", _P, "patient_birth_date", _O),
    Attribute("PatientSex", "CS", _P, "patient_sex", _O),
    Attribute("StudyInstanceUID", "UI", _ST, "study_instance_uid", _U),
    Attribute("StudyDate", "DA", _ST, "study_date", _R),
    Attribute("StudyTime", "TM", _ST, "study_time", _R),
    Attribute("AccessionNumber", "SH", _ST, "accession_number", _R),
    Attribute("StudyID", "SH", _ST, "study_id", _R),
    Attribute("StudyDescription", "LO", _ST, "study_description", _O),
    Attribute("ReferringPhysicianName", "PN", _ST, "referring_physician_name", _O),
    Attribute("SeriesInstanceUID", "UI", _SE, "series_instance_uid", _U),
    Attribute("Modality", "CS", _SE, "modality", _R),
    Attribute("SeriesNumber", "IS", _SE, "series_number", _R, integer=True),
    Attribute("SeriesDescription", "LO", _SE, "series_description", _O),
    Attribute("BodyPartExamined", "CS", _SE, "body_part_examined", _O),
    Attribute("SeriesDate", "DA", _SE, "series_date", _O),
    Attribute("SeriesTime", "TM", _SE, "series_time", _O),
    Attribute("SOPInstanceUID", "UI", _IM, "sop_instance_uid", _U),
    Attribute("SOPClassUID", "UI", _IM, "sop_class_uid", _O),
    Attribute("InstanceNumber", "IS", _IM, "instance_number", _R, integer=True),
)

# Attributes computed by the index rather than read from one header (PS3.4
# C.6.1.1.x): they are matched or returned from aggregate columns.
COMPUTED: dict[str, tuple[str, Level]] = {
    "ModalitiesInStudy": ("CS", Level.STUDY),
    "NumberOfPatientRelatedStudies": ("IS", Level.PATIENT),
    "NumberOfPatientRelatedSeries": ("IS", Level.PATIENT),
    "NumberOfPatientRelatedInstances": ("IS", Level.PATIENT),
    "NumberOfStudyRelatedSeries": ("IS", Level.STUDY),
    "NumberOfStudyRelatedInstances": ("IS", Level.STUDY),
    "NumberOfSeriesRelatedInstances": ("IS", Level.SERIES),
}

BY_KEYWORD: dict[str, Attribute] = {a.keyword: a for a in INDEXED}


def level_attributes(level: Level) -> tuple[Attribute, ...]:
    """The indexed attributes stored at ``level``."""
    return tuple(a for a in INDEXED if a.level is level)
