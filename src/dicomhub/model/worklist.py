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

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from dicomhub.errors import InvalidIdentifier
from dicomhub.model.orders import CodedEntry, StepStatus
from dicomhub.model.query import Matcher, Single, UidList, Universal, ValueList, Wildcard, parse_matcher

__all__ = [
    "MATCHING_KEYS",
    "MODALITY_WORKLIST_FIND",
    "OFFERED_STATES",
    "StartRange",
    "WorklistEntry",
    "WorklistQuery",
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
        raise InvalidIdentifier(
            f"Start Date range ends before it starts: {date_text!r}"
        )
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


def _code_item(code: CodedEntry, asked: Dataset | None) -> Dataset:
    item = Dataset()
    values = {"CodeValue": code.value, "CodingSchemeDesignator": code.scheme, "CodeMeaning": code.meaning}
    keys = [e.keyword for e in asked] if asked is not None and len(asked) else list(values)
    for key in keys:
        if key in values:
            setattr(item, key, values[key])
        elif key:
            setattr(item, key, None)
    return item


def _code_sequence(code: CodedEntry, asked: object) -> Sequence:
    if not code:
        return Sequence([])
    template = asked[0] if isinstance(asked, Sequence) and len(asked) else None
    return Sequence([_code_item(code, template)])


def _top_values(e: WorklistEntry) -> dict[str, object]:
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


def _step_values(e: WorklistEntry) -> dict[str, object]:
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


def _step_item(e: WorklistEntry, asked: Dataset | None) -> Dataset:
    item = Dataset()
    values = _step_values(e)
    keys = [sub.keyword for sub in asked] if asked is not None and len(asked) else list(_STEP_RETURN)
    for key in keys:
        if not key:
            continue
        if key == "ScheduledProtocolCodeSequence":
            template = asked.get(key) if asked is not None else None
            item.ScheduledProtocolCodeSequence = _code_sequence(e.protocol_code, template)
        elif key in values:
            setattr(item, key, values[key] or None)
        else:
            # A key of the item not held: zero-length (for a sequence, no items).
            setattr(item, key, Sequence([]) if _is_sequence(asked, key) else None)
    return item


def _is_sequence(ds: Dataset | None, key: str) -> bool:
    return ds is not None and key in ds and ds[key].VR == "SQ"


def worklist_answer(entry: WorklistEntry, query: WorklistQuery) -> Dataset:
    """The C-FIND answer for ``entry``: the keys the request asked for, with their values
    of record (zero-length where none), plus Specific Character Set when a value is not ASCII."""
    answer = Dataset()
    values = _top_values(entry)
    non_ascii = False
    for elem in query.identifier:
        key = elem.keyword
        if elem.tag.group in (0x0000, 0x0002) or key in _IGNORED or not key or elem.tag.is_private:
            continue
        if key == _SPS:
            template = elem.value[0] if isinstance(elem.value, Sequence) and len(elem.value) else None
            item = _step_item(entry, template)
            answer.ScheduledProcedureStepSequence = Sequence([item])
            non_ascii = non_ascii or not all(str(v.value or "").isascii() for v in item if v.VR != "SQ")
        elif key == "RequestedProcedureCodeSequence":
            answer.RequestedProcedureCodeSequence = _code_sequence(entry.procedure_code, elem.value)
        elif key in values:
            value = values[key]
            setattr(answer, key, value or None)
            non_ascii = non_ascii or not str(value).isascii()
        elif elem.VR == "SQ":
            answer[elem.tag] = type(elem)(elem.tag, "SQ", Sequence([]))
        else:
            answer[elem.tag] = type(elem)(elem.tag, elem.VR, None)
    if non_ascii or not all(
        str(c).isascii() for c in (entry.procedure_code.meaning, entry.protocol_code.meaning)
    ):
        answer.SpecificCharacterSet = "ISO_IR 192"
    return answer
