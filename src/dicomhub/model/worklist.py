"""Modality Worklist: the C-FIND identifier as matching conditions, and the answers.

PS3.4 Annex K (Basic Worklist Management, Modality Worklist Information Model
- FIND) on the order records of :mod:`dicomhub.model.orders`. One answer per
scheduled procedure step; only steps still SCHEDULED are offered (a step IN
PROGRESS was picked up by a modality already and is not offered again, as in
dcm4chee's default; see docs/orders.md).

Matching (PS3.4 C.2.2.2): single value, list of values, wildcard (``*``,
``?``), list of UIDs and universal matching on the keys in
:data:`MATCHING_KEYS`; range matching on Scheduled Procedure Step Start Date
and Time, which combine into one date-time range (C.2.2.2.5.1: ``20260301-
20260302`` with ``0800-1200`` means 08:00 on the first day to 12:00 on the
second). Person names match case-insensitively. Every other key asked for is
a return key only; a value given for it is not used for matching and the
answers say so with status 0xFF01.

Everything here is pure; :mod:`dicomhub.index.worklist` turns a
:class:`WorklistQuery` into SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time
from functools import lru_cache
from typing import NamedTuple

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from dicomhub.errors import InvalidIdentifier
from dicomhub.model.orders import CodedEntry, StepStatus
from dicomhub.model.query import Matcher, Single, UidList, Universal, ValueList, Wildcard, parse_matcher

__all__ = [
    "AnswerElement",
    "MATCHING_KEYS",
    "MODALITY_WORKLIST_FIND",
    "OFFERED_STATES",
    "StartRange",
    "WorklistEntry",
    "WorklistQuery",
    "answer_dataset",
    "worklist_answer",
    "worklist_query",
]

#: Modality Worklist Information Model - FIND (PS3.4 K.6.1).
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"

#: The states of the steps a worklist offers.
OFFERED_STATES = frozenset({StepStatus.SCHEDULED})

_SPS = "ScheduledProcedureStepSequence"

#: Keys matched on (beyond Scheduled Procedure Step Start Date/Time), and where:
#: ``step.`` keys are Scheduled Procedure Step Sequence items.
MATCHING_KEYS = {
    "PatientName": "PN",
    "PatientID": "LO",
    "IssuerOfPatientID": "LO",
    "AccessionNumber": "SH",
    "RequestedProcedureID": "SH",
    "StudyInstanceUID": "UI",
    "step.Modality": "CS",
    "step.ScheduledStationAETitle": "AE",
    "step.ScheduledPerformingPhysicianName": "PN",
    "step.ScheduledProcedureStepID": "SH",
    "step.ScheduledProcedureStepStatus": "CS",
}

# Return keys with a value of record (top level); see WorklistEntry.
_TOP_RETURN = frozenset(
    {
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "AccessionNumber",
        "RequestedProcedureID",
        "RequestedProcedureDescription",
        "RequestedProcedureCodeSequence",
        "RequestedProcedurePriority",
        "ReferringPhysicianName",
        "ReasonForTheRequestedProcedure",
        "PlacerOrderNumberImagingServiceRequest",
        "FillerOrderNumberImagingServiceRequest",
        _SPS,
    }
)
_STEP_RETURN = (
    "Modality",
    "ScheduledStationAETitle",
    "ScheduledStationName",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepID",
    "ScheduledProcedureStepDescription",
    "ScheduledProtocolCodeSequence",
    "ScheduledProcedureStepLocation",
    "ScheduledProcedureStepStatus",
)
# Return keys of the worklist IODs and the IHE Scheduled Workflow query (RAD TF-2
# Table 4.5-x) that the order records do not hold: answered zero-length, which is
# what a Type 2 return key without a value is (no 0xFF01 for these).
_KNOWN_EMPTY = frozenset(
    {
        "RequestingPhysician",
        "ReferencedStudySequence",
        "ReferencedPatientSequence",
        "OtherPatientIDsSequence",
        "AdmissionID",
        "CurrentPatientLocation",
        "PatientWeight",
        "PatientSize",
        "MedicalAlerts",
        "Allergies",
        "PregnancyStatus",
        "ConfidentialityConstraintOnPatientDataDescription",
        "SpecialNeeds",
        "PatientState",
        "AdditionalPatientHistory",
        "ContrastBolusAgent",
        "PreMedication",
        "RequestedContrastAgent",
        "PatientTransportArrangements",
        "NamesOfIntendedRecipientsOfResults",
        "ImagingServiceRequestComments",
        "RequestedProcedureComments",
        "ScheduledProcedureStepEndDate",
        "ScheduledProcedureStepEndTime",
        "CommentsOnTheScheduledProcedureStep",
        "ScheduledSpecimenSequence",
        "RequestedProcedureLocation",
        "IssuerOfAccessionNumberSequence",
        "IssuerOfPatientIDQualifiersSequence",
        "EthnicGroup",
        "PatientComments",
        "StudyDate",
        "StudyTime",
    }
)
_IGNORED = frozenset({"SpecificCharacterSet", "QueryRetrieveLevel", "TimezoneOffsetFromUTC"})
_DA = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_TM = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?$")


@dataclass(frozen=True, slots=True)
class StartRange:
    """Scheduled Procedure Step Start Date and Time as one range (naive local time).

    ``lower``/``upper`` bound the combined date-time (None: open). With a time
    but no date, ``time_lower``/``time_upper`` bound the time of day on any date.
    """

    lower: datetime | None = None
    upper: datetime | None = None
    time_lower: time | None = None
    time_upper: time | None = None

    def contains(self, value: datetime | None) -> bool:
        if value is None:
            return False
        if self.lower is not None and value < self.lower:
            return False
        if self.upper is not None and value > self.upper:
            return False
        t = value.time()
        if self.time_lower is not None and t < self.time_lower:
            return False
        return not (self.time_upper is not None and t > self.time_upper)


@dataclass(frozen=True, slots=True)
class WorklistQuery:
    """A Modality Worklist C-FIND request: what to match, and what to answer with.

    ``conditions``: key of :data:`MATCHING_KEYS` -> matcher (never universal);
    ``start``: the start date/time range, None for universal matching;
    ``identifier``: the request, whose keys shape every answer;
    ``unsupported``: keys given with a value that is not used for matching, or
    that the worklist does not know (the answers carry 0xFF01).
    """

    conditions: dict[str, Matcher] = field(default_factory=dict)
    start: StartRange | None = None
    identifier: Dataset = field(default_factory=Dataset)
    unsupported: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WorklistEntry:
    """One scheduled procedure step with its requested procedure, order and patient."""

    patient_name: str
    patient_id: str
    issuer_of_patient_id: str
    patient_birth_date: str
    patient_sex: str
    accession_number: str
    placer_order_number: str
    filler_order_number: str
    referring_physician: str
    reason: str
    procedure_id: str
    procedure_description: str
    procedure_code: CodedEntry
    study_instance_uid: str
    priority: str
    step_id: str
    modality: str
    step_description: str
    station_ae_title: str
    station_name: str
    location: str
    start: datetime | None
    performing_physician: str
    protocol_code: CodedEntry
    status: StepStatus


# ---------------------------------------------------------------- request


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip(" \x00")


def _date(text: str, what: str) -> date:
    m = _DA.match(text.strip())
    if m is None:
        raise InvalidIdentifier(f"{what} is not a date (YYYYMMDD): {text!r}")
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        raise InvalidIdentifier(f"{what} is not a date: {text!r}") from None


def _time(text: str, what: str, *, upper: bool) -> time:
    """A TM bound; an upper bound extends to the end of its precision (``10`` -> 10:59:59.999999)."""
    m = _TM.match(text.strip())
    if m is None:
        raise InvalidIdentifier(f"{what} is not a time (HHMMSS.FFFFFF): {text!r}")
    hour = int(m[1])
    fill = 59 if upper else 0
    minute = int(m[2]) if m[2] else fill
    second = int(m[3]) if m[3] else fill
    if m[4]:
        digits = m[4]
        micro = int(digits.ljust(6, "9" if upper else "0"))
    else:
        micro = 999999 if upper else 0
    try:
        return time(hour, minute, second, micro)
    except ValueError:
        raise InvalidIdentifier(f"{what} is not a time: {text!r}") from None


def _bounds(text: str, what: str) -> tuple[str | None, str | None]:
    """(lower, upper) of a DA/TM value: a range ``a-b``, ``a-``, ``-b``, or a single value."""
    if "\\" in text:
        raise InvalidIdentifier(f"{what}: a list of values is not allowed for range matching")
    if "*" in text or "?" in text:
        raise InvalidIdentifier(f"{what}: wildcards are not allowed in dates and times")
    if "-" not in text:
        return text, text
    if text.count("-") != 1:
        raise InvalidIdentifier(f"{what} is not a range: {text!r}")
    lower, upper = (part.strip() for part in text.split("-"))
    return lower or None, upper or None


def _start_range(date_text: str, time_text: str) -> StartRange | None:
    """PS3.4 C.2.2.2.5.1: a date and a time range combine into one date-time range."""
    if not date_text and not time_text:
        return None
    t_lower = t_upper = None
    if time_text:
        lo, hi = _bounds(time_text, "Scheduled Procedure Step Start Time")
        t_lower = None if lo is None else _time(lo, "Scheduled Procedure Step Start Time", upper=False)
        t_upper = None if hi is None else _time(hi, "Scheduled Procedure Step Start Time", upper=True)
    if not date_text:
        return StartRange(time_lower=t_lower, time_upper=t_upper)
    lo, hi = _bounds(date_text, "Scheduled Procedure Step Start Date")
    d_lower = None if lo is None else _date(lo, "Scheduled Procedure Step Start Date")
    d_upper = None if hi is None else _date(hi, "Scheduled Procedure Step Start Date")
    if d_lower is not None and d_upper is not None and d_lower > d_upper:
        raise InvalidIdentifier(f"Start Date range ends before it starts: {date_text!r}")
    lower = None if d_lower is None else datetime.combine(d_lower, t_lower or time.min)
    upper = None if d_upper is None else datetime.combine(d_upper, t_upper or time.max)
    return StartRange(lower, upper)


def _condition(key: str, value: object, conditions: dict[str, Matcher]) -> None:
    vr = MATCHING_KEYS[key]
    matcher = parse_matcher(vr, value)
    if isinstance(matcher, Universal):
        return
    if isinstance(matcher, (Single, ValueList, Wildcard, UidList)):
        conditions[key] = matcher
        return
    raise InvalidIdentifier(f"{key.removeprefix('step.')}: range matching is not defined for {vr}")


def worklist_query(identifier: Dataset) -> WorklistQuery:
    """The :class:`WorklistQuery` of a C-FIND identifier.

    Raises
    ------
    InvalidIdentifier
        A Scheduled Procedure Step Sequence of more than one item, a malformed
        date, time or range, a wildcard where the VR allows none.
    """
    conditions: dict[str, Matcher] = {}
    unsupported: list[str] = []
    start: StartRange | None = None
    for elem in identifier:
        keyword = elem.keyword
        if elem.tag.group in (0x0000, 0x0002) or keyword in _IGNORED:
            continue
        if not keyword or elem.tag.is_private:
            unsupported.append(str(elem.tag))
            continue
        if keyword == _SPS:
            items = elem.value if isinstance(elem.value, Sequence) else None
            if items is None:
                continue
            if len(items) > 1:
                raise InvalidIdentifier("the Scheduled Procedure Step Sequence must have one item")
            if len(items) == 1:
                item = items[0]
                for sub in item:
                    name = sub.keyword
                    if f"step.{name}" in MATCHING_KEYS:
                        _condition(f"step.{name}", sub.value, conditions)
                    elif name in ("ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"):
                        continue
                    elif name not in _STEP_RETURN or _text(sub.value if sub.VR != "SQ" else None):
                        unsupported.append(f"{_SPS}/{name or sub.tag}")
                start = _start_range(
                    _text(item.get("ScheduledProcedureStepStartDate", "")),
                    _text(item.get("ScheduledProcedureStepStartTime", "")),
                )
            continue
        if keyword in MATCHING_KEYS:
            _condition(keyword, elem.value, conditions)
        elif keyword in _TOP_RETURN or keyword in _KNOWN_EMPTY:
            if elem.VR != "SQ" and _text(elem.value):
                unsupported.append(keyword)  # a value to match on that is not matched
        else:
            unsupported.append(keyword)
    return WorklistQuery(conditions, start, identifier, tuple(unsupported))


# ---------------------------------------------------------------- answer


class AnswerElement(NamedTuple):
    """One element of an answer: text, or (VR SQ) its items, each a tuple of elements in tag order.

    Answers are built as these plain tuples rather than pydicom data sets: a broad query
    answers thousands of steps, and the DIMSE layer frames them directly."""

    tag: int
    vr: str
    value: str | tuple[tuple[AnswerElement, ...], ...]


@lru_cache(maxsize=512)
def _tag_vr(keyword: str) -> tuple[int, str]:
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - only the standard's keywords get here
        raise KeyError(keyword)
    return int(tag), dictionary_VR(tag)[:2]


def _element(keyword: str, value: str) -> AnswerElement:
    tag, vr = _tag_vr(keyword)
    return AnswerElement(tag, vr, () if vr == "SQ" else value)


def _item(elements: list[AnswerElement]) -> tuple[AnswerElement, ...]:
    return tuple(sorted(elements, key=lambda e: e.tag))


def _template(value: object) -> Dataset | None:
    """The item of a request's sequence that says which item keys to return (None: all)."""
    return value[0] if isinstance(value, Sequence) and len(value) and len(value[0]) else None


def _code_items(code: CodedEntry, asked: object) -> tuple[tuple[AnswerElement, ...], ...]:
    if not code:
        return ()
    values = {"CodeValue": code.value, "CodingSchemeDesignator": code.scheme, "CodeMeaning": code.meaning}
    template = _template(asked)
    keys = [e.keyword for e in template if e.keyword] if template is not None else list(values)
    return (_item([_element(key, values.get(key, "")) for key in keys]),)


def _top_values(e: WorklistEntry) -> dict[str, str]:
    return {
        "PatientName": e.patient_name,
        "PatientID": e.patient_id,
        "IssuerOfPatientID": e.issuer_of_patient_id,
        "PatientBirthDate": e.patient_birth_date,
        "PatientSex": e.patient_sex,
        "StudyInstanceUID": e.study_instance_uid,
        "AccessionNumber": e.accession_number,
        "RequestedProcedureID": e.procedure_id,
        "RequestedProcedureDescription": e.procedure_description,
        "RequestedProcedurePriority": e.priority,
        "ReferringPhysicianName": e.referring_physician,
        "ReasonForTheRequestedProcedure": e.reason,
        "PlacerOrderNumberImagingServiceRequest": e.placer_order_number,
        "FillerOrderNumberImagingServiceRequest": e.filler_order_number,
    }


def _step_values(e: WorklistEntry) -> dict[str, str]:
    return {
        "Modality": e.modality,
        "ScheduledStationAETitle": e.station_ae_title,
        "ScheduledStationName": e.station_name,
        "ScheduledProcedureStepStartDate": "" if e.start is None else e.start.strftime("%Y%m%d"),
        "ScheduledProcedureStepStartTime": "" if e.start is None else e.start.strftime("%H%M%S"),
        "ScheduledPerformingPhysicianName": e.performing_physician,
        "ScheduledProcedureStepID": e.step_id,
        "ScheduledProcedureStepDescription": e.step_description,
        "ScheduledProcedureStepLocation": e.location,
        "ScheduledProcedureStepStatus": e.status.value,
    }


def _step_item(e: WorklistEntry, asked: Dataset | None) -> tuple[AnswerElement, ...]:
    values = _step_values(e)
    keys: list[tuple[str, DataElement | None]]
    if asked is None:
        keys = [(key, None) for key in _STEP_RETURN]
    else:
        keys = [(sub.keyword, sub) for sub in asked if sub.keyword and not sub.tag.is_private]
    elements = []
    for key, requested in keys:
        if key == "ScheduledProtocolCodeSequence":
            tag, vr = _tag_vr(key)
            template = requested.value if requested is not None else None
            elements.append(AnswerElement(tag, vr, _code_items(e.protocol_code, template)))
        elif key in values:
            elements.append(_element(key, values[key]))
        elif requested is not None:
            # A key of the item not held: zero-length (a sequence: no items).
            elements.append(
                AnswerElement(int(requested.tag), requested.VR, () if requested.VR == "SQ" else "")
            )
    return _item(elements)


def _ascii(elements: tuple[AnswerElement, ...]) -> bool:
    for element in elements:
        if isinstance(element.value, str):
            if not element.value.isascii():
                return False
        elif not all(_ascii(item) for item in element.value):
            return False
    return True


def worklist_answer(entry: WorklistEntry, query: WorklistQuery) -> tuple[AnswerElement, ...]:
    """The C-FIND answer for ``entry``, in tag order: the keys the request asked for, with their
    values of record (zero-length where none), plus Specific Character Set ``ISO_IR 192`` when
    a value is not ASCII (values are sent as UTF-8)."""
    values = _top_values(entry)
    elements: list[AnswerElement] = []
    for elem in query.identifier:
        key = elem.keyword
        if elem.tag.group in (0x0000, 0x0002) or key in _IGNORED or not key or elem.tag.is_private:
            continue
        if key == _SPS:
            tag, vr = _tag_vr(key)
            elements.append(AnswerElement(tag, vr, (_step_item(entry, _template(elem.value)),)))
        elif key == "RequestedProcedureCodeSequence":
            tag, vr = _tag_vr(key)
            elements.append(AnswerElement(tag, vr, _code_items(entry.procedure_code, elem.value)))
        elif key in values:
            elements.append(_element(key, values[key]))
        else:
            elements.append(AnswerElement(int(elem.tag), elem.VR, () if elem.VR == "SQ" else ""))
    answer = _item(elements)
    if not _ascii(answer):
        answer = _item([*answer, _element("SpecificCharacterSet", "ISO_IR 192")])
    return answer


def answer_dataset(answer: tuple[AnswerElement, ...]) -> Dataset:
    """``answer`` as a pydicom data set (for big endian, and for reading in tests)."""
    ds = Dataset()
    for tag, vr, value in answer:
        if isinstance(value, str):
            ds.add(DataElement(tag, vr, value or None))
        else:
            ds.add(DataElement(tag, vr, Sequence([answer_dataset(item) for item in value])))
    return ds
