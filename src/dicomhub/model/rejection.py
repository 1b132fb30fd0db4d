"""Rejection notes: Key Object Selection documents that reject instances (IHE IOCM).

A Key Object Selection Document (PS3.3 A.35.4) whose Document Title (the
Concept Name Code Sequence of its root content item) is one of the rejection
titles of CID 7011 rejects every instance its Current Requested Procedure
Evidence Sequence references (PS3.3 C.17.2.1): the archive keeps the note,
records the rejection, hides the rejected instances from ordinary queries and
retrievals, and refuses them when they are sent again.

This module reads a note's title and references from a pydicom data set and
builds a note for the instances an operator rejects (``dicomhub reject``,
``POST /studies/{study}/reject``), as dcm4chee-arc's REST reject does.

References
----------
PS3.3 A.35.4 (Key Object Selection Document IOD), C.17.2.1 (Hierarchical
SOP Instance Reference Macro), PS3.16 CID 7011 (Rejected for Quality Reasons
... Data Retention Policy Expired), TID 2010 (Key Object Selection);
IHE RAD TF-1 Imaging Object Change Management (IOCM).
"""

from __future__ import annotations

import enum
import io
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import dcmread
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomhub.errors import InvalidRequest

__all__ = [
    "KEY_OBJECT_SELECTION_DOCUMENT",
    "RejectionNote",
    "RejectionReason",
    "SOPReference",
    "build_rejection_note",
    "part10_bytes",
    "read_rejection_note",
    "rejection_note_of",
    "rejection_reason",
]

#: Key Object Selection Document Storage (PS3.4 B.5).
KEY_OBJECT_SELECTION_DOCUMENT = "1.2.840.10008.5.1.4.1.1.88.59"


class RejectionReason(enum.Enum):
    """The rejection titles of CID 7011, by the short name the CLI and REST take."""

    QUALITY = "quality"
    SAFETY = "safety"
    WORKLIST = "worklist"
    RETENTION = "retention"

    @property
    def code_value(self) -> str:
        return _CODES[self][0]

    @property
    def code_meaning(self) -> str:
        return _CODES[self][1]

    @classmethod
    def parse(cls, text: str) -> RejectionReason:
        """The reason named ``text`` (a short name or a code value).

        Raises
        ------
        InvalidRequest
            For any other text.
        """
        for reason in cls:
            if text.strip().lower() in (reason.value, reason.code_value):
                return reason
        names = ", ".join(r.value for r in cls)
        raise InvalidRequest(f"unknown rejection reason {text!r}: one of {names}")


_CODES: dict[RejectionReason, tuple[str, str]] = {
    RejectionReason.QUALITY: ("113001", "Rejected for Quality Reasons"),
    RejectionReason.SAFETY: ("113037", "Rejected for Patient Safety Reasons"),
    RejectionReason.WORKLIST: ("113038", "Incorrect Modality Worklist Entry"),
    RejectionReason.RETENTION: ("113039", "Data Retention Policy Expired"),
}
_DCM = "DCM"


def rejection_reason(code_value: str, coding_scheme_designator: str) -> RejectionReason | None:
    """The rejection title a coded Document Title is, or None for any other title."""
    if coding_scheme_designator != _DCM:
        return None
    for reason, (value, _meaning) in _CODES.items():
        if value == code_value:
            return reason
    return None


@dataclass(frozen=True, slots=True)
class SOPReference:
    """One instance a note references (PS3.3 C.17.2.1)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class RejectionNote:
    """What a rejection note says: which note, why, and what it rejects."""

    sop_instance_uid: str
    study_instance_uid: str
    reason: RejectionReason
    references: tuple[SOPReference, ...]


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip(" \x00")


def _items(ds: Dataset, keyword: str) -> list[Dataset]:
    value = ds.get(keyword)
    return list(value) if isinstance(value, DicomSequence) else []


def read_rejection_note(ds: Dataset) -> RejectionNote | None:
    """The rejection note ``ds`` is, or None when it is not one.

    A data set is a rejection note when its SOP class is Key Object Selection
    Document Storage and its Document Title is a rejection title of CID 7011.

    Raises
    ------
    InvalidRequest
        A rejection note that references nothing, or references an instance
        without its UIDs: rejecting it cannot be carried out as asked.
    """
    if _text(ds, "SOPClassUID") != KEY_OBJECT_SELECTION_DOCUMENT:
        return None
    titles = _items(ds, "ConceptNameCodeSequence")
    if not titles:
        return None
    reason = rejection_reason(_text(titles[0], "CodeValue"), _text(titles[0], "CodingSchemeDesignator"))
    if reason is None:
        return None
    refs: list[SOPReference] = []
    for study_item in _items(ds, "CurrentRequestedProcedureEvidenceSequence"):
        study_uid = _text(study_item, "StudyInstanceUID")
        for series_item in _items(study_item, "ReferencedSeriesSequence"):
            series_uid = _text(series_item, "SeriesInstanceUID")
            for sop in _items(series_item, "ReferencedSOPSequence"):
                ref = SOPReference(
                    study_uid,
                    series_uid,
                    _text(sop, "ReferencedSOPClassUID"),
                    _text(sop, "ReferencedSOPInstanceUID"),
                )
                if not (ref.study_instance_uid and ref.series_instance_uid and ref.sop_instance_uid):
                    raise InvalidRequest(
                        "rejection note references an instance without its study, series or SOP Instance UID"
                    )
                refs.append(ref)
    if not refs:
        raise InvalidRequest("rejection note references no instance (Current Requested Procedure Evidence)")
    return RejectionNote(
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        reason=reason,
        references=tuple(dict.fromkeys(refs)),
    )


def rejection_note_of(data: bytes) -> RejectionNote | None:
    """:func:`read_rejection_note` of a Part 10 object's bytes (header only).

    Raises
    ------
    InvalidRequest
        The bytes are not a readable data set, or the note is malformed.
    """
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception as exc:  # pydicom raises many kinds on malformed input
        raise InvalidRequest(f"cannot read the rejection note: {exc}") from exc
    return read_rejection_note(ds)


# Patient and study attributes a note copies from the instances it rejects
# (PS3.3 A.35.4: it is an object of the same study and patient).
_COPIED = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)


def build_rejection_note(
    reason: RejectionReason,
    references: Sequence[SOPReference],
    study: Dataset,
    *,
    content_date: str,
    content_time: str,
    series_number: int = 9999,
) -> Dataset:
    """A rejection note (KOS, TID 2010) rejecting ``references`` for ``reason``.

    Parameters
    ----------
    study : Dataset
        A header of the study (any instance): its patient and study
        attributes are copied into the note.
    content_date, content_time : str
        DA and TM values of when the note was made.

    Raises
    ------
    InvalidRequest
        No references, or references into more than one study.
    """
    if not references:
        raise InvalidRequest("nothing to reject")
    studies = {r.study_instance_uid for r in references}
    if len(studies) != 1:
        raise InvalidRequest("a rejection note rejects instances of one study")
    ds = Dataset()
    for keyword in _COPIED:
        if keyword in study:
            setattr(ds, keyword, study[keyword].value)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    for keyword in ("StudyID", "AccessionNumber", "ReferringPhysicianName"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.StudyInstanceUID = references[0].study_instance_uid
    ds.SOPClassUID = KEY_OBJECT_SELECTION_DOCUMENT
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "KO"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = reason.code_meaning
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence()
    ds.Manufacturer = "dicomhub"
    ds.InstanceNumber = 1
    ds.ContentDate = content_date
    ds.ContentTime = content_time
    ds.ValueType = "CONTAINER"
    title = Dataset()
    title.CodeValue = reason.code_value
    title.CodingSchemeDesignator = _DCM
    title.CodeMeaning = reason.code_meaning
    ds.ConceptNameCodeSequence = DicomSequence([title])
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    ds.ContentTemplateSequence = DicomSequence([template])
    ds.ContinuityOfContent = "SEPARATE"
    evidence = Dataset()
    evidence.StudyInstanceUID = ds.StudyInstanceUID
    by_series: dict[str, list[SOPReference]] = {}
    for ref in references:
        by_series.setdefault(ref.series_instance_uid, []).append(ref)
    series_items = []
    for series_uid, refs in by_series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedSOPSequence = DicomSequence([_sop_item(r) for r in refs])
        series_items.append(item)
    evidence.ReferencedSeriesSequence = DicomSequence(series_items)
    ds.CurrentRequestedProcedureEvidenceSequence = DicomSequence([evidence])
    content = []
    for ref in references:
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "IMAGE" if _is_image(ref.sop_class_uid) else "COMPOSITE"
        item.ReferencedSOPSequence = DicomSequence([_sop_item(ref)])
        content.append(item)
    ds.ContentSequence = DicomSequence(content)
    return ds


def _sop_item(ref: SOPReference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


def _is_image(sop_class_uid: str) -> bool:
    # Image storage classes are the ones under 1.2.840.10008.5.1.4.1.1 other than
    # the structured documents, waveforms and the like: for the content item's
    # value type only (IMAGE or COMPOSITE), which no reader of the note relies on.
    return sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.") and not sop_class_uid.startswith(
        ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.9.", "1.2.840.10008.5.1.4.1.1.104.")
    )


def part10_bytes(ds: Dataset) -> bytes:
    """``ds`` as a Part 10 file in Explicit VR Little Endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
