"""Audit records as DICOM audit messages (PS3.15 Annex A.5) and as JSON lines.

Pure functions over :class:`~dicomhub.model.audit.AuditRecord`: the audit log
stores its own rows; these give them the shapes that audit repositories (an
IHE ATNA Audit Record Repository, a SIEM) read.

The XML follows the schema of PS3.15 A.5.1 (derived from RFC 3881): one
``AuditMessage`` per record with its ``EventIdentification`` (EventID and
EventTypeCode from the DCM coding scheme), the ``ActiveParticipant`` s (the
requestor as Source, 110153, the archive as Destination, 110152, or for an
export the destination AE), ``AuditSourceIdentification`` and one
``ParticipantObjectIdentification`` per study (Study Instance UID, ID type
110180) and per patient (Patient Number, RFC-3881 ID type 2). Coded values
carry the schema's ``csd-code``, ``codeSystemName`` and ``originalText``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from xml.etree import ElementTree as ET

from dicomhub.errors import InvalidRequest
from dicomhub.model.audit import AuditAction, AuditOutcome, AuditRecord
from dicomhub.model.timestamps import as_utc
from dicomhub.services.audit import record_dict

__all__ = [
    "EXPORT_FORMATS",
    "EXPORT_MEDIA_TYPES",
    "dicom_audit_message",
    "dicom_audit_xml",
    "export_lines",
    "json_line",
    "json_lines",
    "parse_audit_time",
]

EXPORT_FORMATS = ("dicom-xml", "jsonl")
# dicom-xml is one AuditMessage document per line (as syslog carries them), not one XML document.
EXPORT_MEDIA_TYPES = {"dicom-xml": "application/xml", "jsonl": "application/x-ndjson"}


@dataclass(frozen=True, slots=True)
class _Code:
    code: str
    scheme: str
    meaning: str


def _dcm(code: str, meaning: str) -> _Code:
    return _Code(code, "DCM", meaning)


# PS3.16 CID 400 Audit Event ID, and the EventActionCode of PS3.15 A.5.3:
# C create, R read, U update, D delete, E execute.
_EVENT: dict[AuditAction, tuple[_Code, str]] = {
    AuditAction.LOGIN: (_dcm("110114", "User Authentication"), "E"),
    AuditAction.QUERY: (_dcm("110112", "Query"), "E"),
    AuditAction.RETRIEVE: (_dcm("110103", "DICOM Instances Accessed"), "R"),
    AuditAction.STORE: (_dcm("110104", "DICOM Instances Transferred"), "C"),
    AuditAction.DELETE: (_dcm("110105", "DICOM Study Deleted"), "D"),
    AuditAction.EXPORT: (_dcm("110106", "Export"), "R"),
    AuditAction.LABEL: (_dcm("110103", "DICOM Instances Accessed"), "U"),
    AuditAction.DEIDENTIFY: (_dcm("110106", "Export"), "E"),
    AuditAction.REIDENTIFY: (_dcm("110103", "DICOM Instances Accessed"), "E"),
    AuditAction.SECURITY_CHANGE: (_dcm("110113", "Security Alert"), "E"),
    # PS3.15 A.5.3.9 / A.5.3.10; the action code (C, U, D) of the change is set below.
    AuditAction.ORDER_RECORD: (_dcm("110109", "Order Record"), "U"),
    AuditAction.PATIENT_RECORD: (_dcm("110110", "Patient Record"), "U"),
    AuditAction.CORRECTION: (_dcm("110103", "DICOM Instances Accessed"), "U"),
}
# PS3.16 CID 401 / 403 event type codes that say more than the event ID.
_EVENT_TYPE: dict[AuditAction, _Code] = {
    AuditAction.LOGIN: _dcm("110122", "Login"),
    AuditAction.SECURITY_CHANGE: _dcm("110137", "User Security Attributes Changed"),
    AuditAction.DEIDENTIFY: _dcm("110142", "Deidentification"),
    AuditAction.REIDENTIFY: _dcm("110143", "Reidentification"),
}
_SOURCE_ROLE = _dcm("110153", "Source Role ID")
_DESTINATION_ROLE = _dcm("110152", "Destination Role ID")
_STUDY_UID = _dcm("110180", "Study Instance UID")
_SOP_CLASS_UID = _dcm("110181", "SOP Class UID")
_PATIENT_NUMBER = _Code("2", "RFC-3881", "Patient Number")
# RFC 3881 audit source type 4: application server process tier.
_APPLICATION_SERVER = _Code("4", "RFC-3881", "Application Server Process")


def _coded(parent: ET.Element, tag: str, code: _Code) -> ET.Element:
    return ET.SubElement(
        parent, tag, {"csd-code": code.code, "codeSystemName": code.scheme, "originalText": code.meaning}
    )


def _access_point(participant: dict[str, str], address: str) -> None:
    if not address:
        return
    participant["NetworkAccessPointID"] = address
    # RFC 3881: 1 machine name, 2 IP address.
    participant["NetworkAccessPointTypeCode"] = "2" if address[:1].isdigit() or ":" in address else "1"


def dicom_audit_message(record: AuditRecord, audit_source_id: str) -> ET.Element:
    """One ``AuditMessage`` element for ``record``; ``audit_source_id``: the archive's AE title."""
    event_id, action_code = _EVENT[record.action]
    if record.action in (AuditAction.ORDER_RECORD, AuditAction.PATIENT_RECORD):
        action_code = str(record.detail.get("action_code") or action_code)
    message = ET.Element("AuditMessage")
    event = ET.SubElement(
        message,
        "EventIdentification",
        {
            "EventActionCode": action_code,
            "EventDateTime": record.at.isoformat(),
            "EventOutcomeIndicator": record.outcome.value,
        },
    )
    _coded(event, "EventID", event_id)
    if record.action in _EVENT_TYPE:
        _coded(event, "EventTypeCode", _EVENT_TYPE[record.action])
    reason = record.detail.get("reason")
    if record.outcome is not AuditOutcome.SUCCESS and reason:
        ET.SubElement(event, "EventOutcomeDescription").text = str(reason)

    requestor = {"UserID": record.principal or "anonymous", "UserIsRequestor": "true"}
    if record.ae_title:
        requestor["AlternativeUserID"] = f"AETITLES={record.ae_title}"
    _access_point(requestor, record.address)
    _coded(ET.SubElement(message, "ActiveParticipant", requestor), "RoleIDCode", _SOURCE_ROLE)
    destination = str(record.detail.get("destination") or "")
    if record.action is AuditAction.EXPORT and destination:
        # The archive sends: it is the source of the data, the move destination receives it.
        receiver = {"UserID": destination, "UserIsRequestor": "false"}
        receiver["AlternativeUserID"] = f"AETITLES={destination}"
        _coded(ET.SubElement(message, "ActiveParticipant", receiver), "RoleIDCode", _DESTINATION_ROLE)
    else:
        archive = {"UserID": audit_source_id, "UserIsRequestor": "false"}
        archive["AlternativeUserID"] = f"AETITLES={audit_source_id}"
        _coded(ET.SubElement(message, "ActiveParticipant", archive), "RoleIDCode", _DESTINATION_ROLE)

    source = ET.SubElement(message, "AuditSourceIdentification", {"AuditSourceID": audit_source_id})
    _coded(source, "AuditSourceTypeCode", _APPLICATION_SERVER)

    sop_class = str(record.detail.get("sop_class_uid") or "")
    if record.action is AuditAction.QUERY and sop_class:
        # PS3.15 A.5.3.12: the query as a SOP class object (role 24, Query) with the keys.
        obj = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": sop_class,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "24",
            },
        )
        _coded(obj, "ParticipantObjectIDTypeCode", _SOP_CLASS_UID)
        keys = json.dumps(record.detail.get("keys") or {}, sort_keys=True, default=_plain)
        ET.SubElement(obj, "ParticipantObjectQuery").text = base64.b64encode(keys.encode()).decode("ascii")

    patients: dict[str, None] = {}
    for study in record.studies:
        # Type 2 system object, role 3 report (PS3.15 A.5.3.2: a study is a "report").
        obj = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": study.study_instance_uid,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
            },
        )
        _coded(obj, "ParticipantObjectIDTypeCode", _STUDY_UID)
        if study.number_of_instances:
            series = len(study.series_instance_uids)
            ET.SubElement(obj, "ParticipantObjectDescription").text = (
                f"{study.number_of_instances} instances" + (f" in {series} series" if series else "")
            )
        if study.patient_id:
            patients[study.patient_id] = None
    for patient_id in patients:
        # Type 1 person, role 1 patient.
        obj = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": patient_id,
                "ParticipantObjectTypeCode": "1",
                "ParticipantObjectTypeCodeRole": "1",
            },
        )
        _coded(obj, "ParticipantObjectIDTypeCode", _PATIENT_NUMBER)
    return message


def dicom_audit_xml(records: Iterable[AuditRecord], audit_source_id: str) -> Iterator[str]:
    """The records as a stream of ``AuditMessage`` documents, one per line (the
    form syslog transport (RFC 5425) and most repositories take them in)."""
    for record in records:
        yield ET.tostring(dicom_audit_message(record, audit_source_id), encoding="unicode") + "\n"


def _plain(value: object) -> str:
    return str(value)  # a detail value JSON has no type for (a date, a UID object)


def json_line(record: AuditRecord) -> str:
    """One record as one JSON object on one line (the form of ``GET /audit``)."""
    return json.dumps(record_dict(record), sort_keys=True, default=_plain)


def json_lines(records: Iterable[AuditRecord]) -> Iterator[str]:
    for record in records:
        yield json_line(record) + "\n"


def export_lines(records: Iterable[AuditRecord], export_format: str, audit_source_id: str) -> Iterator[str]:
    """The records in ``export_format`` (one of :data:`EXPORT_FORMATS`), a line each."""
    if export_format == "dicom-xml":
        return dicom_audit_xml(records, audit_source_id)
    if export_format == "jsonl":
        return json_lines(records)
    raise InvalidRequest(f"audit export format {export_format[:32]!r}: one of {', '.join(EXPORT_FORMATS)}")


def parse_audit_time(text: str | None) -> dt.datetime | None:
    """An ISO 8601 date or time (UTC when it names no zone); None for none."""
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidRequest(f"{text[:40]!r} is not an ISO 8601 date or time") from exc
    return as_utc(value)
