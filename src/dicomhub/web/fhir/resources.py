"""FHIR Patient and ServiceRequest <-> the order model (docs/orders.md has the table).

Requests are validated with the R4B models of ``fhir.resources`` (R4B is
wire-compatible with R4 for Patient and ServiceRequest), and so is every
resource we answer with, so a reader never gets a resource the models reject.

Only what has a DICOM home is read; other elements are accepted and dropped.
A ServiceRequest is one requested procedure with one scheduled procedure step
(an order from HL7 with several steps is read back with its first step and
cannot be updated over FHIR).

References
----------
HL7 FHIR R4 Patient, ServiceRequest, OperationOutcome; IHE RAD TF-2 Table
4.4-1 (HL7 -> DICOM mapping the HL7 listener follows); v2 table 0203
(identifier types ACSN, PLAC, FILL, MR).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import re
from typing import Any

from dicomhub.errors import InvalidRequest
from dicomhub.model.orders import (
    CodedEntry,
    Order,
    Patient,
    PatientRef,
    RequestedProcedure,
    ScheduledProcedureStep,
    StepStatus,
)

__all__ = [
    "FHIR_ID",
    "ORDER_INTENTS",
    "Unprocessable",
    "fhir_model",
    "fhir_status",
    "operation_outcome",
    "order_from_fhir",
    "order_to_fhir",
    "parse_patient",
    "parse_service_request",
    "patient_from_fhir",
    "patient_to_fhir",
    "subject_of",
]

# FHIR R4 2.24.0.1 (id datatype): what a logical id may be.
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
# DICOM Coding Scheme Designators (PS3.16 8) <-> FHIR code system URIs.
_SCHEMES = {
    "LN": "http://loinc.org",
    "SCT": "http://snomed.info/sct",
    "DCM": _DCM,
    "RADLEX": "http://radlex.org",
    "UCUM": "http://unitsofmeasure.org",
}
_SYSTEMS = {uri: scheme for scheme, uri in _SCHEMES.items()}
# ServiceRequest.intent values that are an order to be performed (the others are plans).
ORDER_INTENTS = frozenset({"order", "original-order", "reflex-order", "filler-order", "instance-order"})
_GENDER = {"male": "M", "female": "F", "other": "O", "unknown": ""}
_SEX = {"M": "male", "F": "female", "O": "other"}
# FHIR request priority <-> Requested Procedure Priority (PS3.3 C.4.11).
_PRIORITY = {"routine": "ROUTINE", "urgent": "HIGH", "asap": "HIGH", "stat": "STAT"}
_PRIORITY_BACK = {
    "ROUTINE": "routine",
    "MEDIUM": "routine",
    "LOW": "routine",
    "HIGH": "urgent",
    "STAT": "stat",
}


class Unprocessable(InvalidRequest):
    """A valid resource the server will not apply: an intent that is not an order, a
    status it cannot move to, a code with no DICOM home (HTTP 422)."""


# ---------------------------------------------------------------- validation


def _validated(model: type[Any], body: dict[str, Any]) -> Any:
    kind = model.__name__.removeprefix("Fhir")
    if body.get("resourceType") != kind:
        raise InvalidRequest(f"resourceType must be {kind!r}, not {body.get('resourceType')!r}")
    try:
        return model.model_validate(body)
    except ValueError as exc:  # pydantic's ValidationError: its message names field and reason
        raise InvalidRequest(f"invalid {kind}: {exc}") from None


def fhir_model(resource_type: str) -> Any:
    """The R4B model class of ``resource_type`` (``"Patient"``, ``"ImagingStudy"``, ...).

    Imported on first use, not with this module: ``fhir.resources`` and pydantic take
    about 15 MB, which a server answering no FHIR request (most of them) need not pay
    in its HTTP process.
    """
    module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    return getattr(module, resource_type)


def parse_patient(body: dict[str, Any]) -> Any:
    """``body`` as a validated R4B Patient; InvalidRequest with the model's message."""
    return _validated(fhir_model("Patient"), body)


def parse_service_request(body: dict[str, Any]) -> Any:
    """``body`` as a validated R4B ServiceRequest; InvalidRequest with the model's message."""
    return _validated(fhir_model("ServiceRequest"), body)


def _dumped(resource: Any) -> dict[str, Any]:
    out: dict[str, Any] = resource.model_dump(mode="json", exclude_none=True, by_alias=True)
    return out


def operation_outcome(severity: str, code: str, diagnostics: str) -> dict[str, Any]:
    """An OperationOutcome with one issue (FHIR R4 OperationOutcome; ``code`` from IssueType)."""
    outcome = fhir_model("OperationOutcome").model_validate(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics[:2000]}],
        }
    )
    return _dumped(outcome)


# ---------------------------------------------------------------- Patient


def _type_code(identifier: Any) -> str:
    concept = identifier.type
    if concept is None:
        return ""
    return next((str(c.code) for c in concept.coding or () if c.code), "")


def _pn(name: Any) -> str:
    """HumanName -> DICOM PN (Family^Given^Middle^Prefix^Suffix)."""
    given = list(name.given or ())
    parts = [
        name.family or "",
        given[0] if given else "",
        " ".join(given[1:]),
        " ".join(name.prefix or ()),
        " ".join(name.suffix or ()),
    ]
    text = str(name.text or "")
    for part in (*parts, text):
        # They would shift the components (and groups) of the DICOM name they become.
        if "^" in part or "=" in part:
            raise InvalidRequest(
                f"a name part may not contain '^' or '=' (DICOM name delimiters): {part[:64]!r}"
            )
    pn = "^".join(parts).rstrip("^")
    return pn or text


def _human_name(pn: str) -> dict[str, Any]:
    family, given, middle, prefix, suffix = (pn.split("^") + [""] * 5)[:5]
    name: dict[str, Any] = {}
    text = " ".join(p for p in (prefix, given, middle, family, suffix) if p)
    if text:  # FHIR strings are never empty
        name["text"] = text
    if family:
        name["family"] = family
    if given or middle:
        name["given"] = [g for g in (given, *middle.split()) if g]
    if prefix:
        name["prefix"] = prefix.split()
    if suffix:
        name["suffix"] = suffix.split()
    return name


def patient_from_fhir(resource: Any) -> Patient:
    """A validated FHIR Patient -> the patient of record.

    Patient ID: the identifier of type MR, else the first one; its ``system`` is the
    Issuer of Patient ID. The other identifiers become Other Patient IDs."""
    identifiers = [i for i in resource.identifier or () if i.value]
    if not identifiers:
        raise InvalidRequest("a Patient needs an identifier with a value (it becomes the Patient ID)")
    main = next((i for i in identifiers if _type_code(i) == "MR"), identifiers[0])
    names = list(resource.name or ())
    official = next((n for n in names if n.use == "official"), names[0] if names else None)
    birth = resource.birthDate
    return Patient(
        PatientRef(str(main.value), str(main.system or "")),
        patient_name=_pn(official) if official is not None else "",
        patient_birth_date=birth.strftime("%Y%m%d") if isinstance(birth, dt.date) else "",
        patient_sex=_GENDER.get(str(resource.gender or "unknown"), ""),
        other_patient_ids=tuple(str(i.value) for i in identifiers if i is not main),
    )


def patient_to_fhir(patient: Patient) -> dict[str, Any]:
    """The patient of record as a FHIR Patient (validated)."""
    main: dict[str, Any] = {
        "use": "usual",
        "type": {"coding": [{"system": _V2_0203, "code": "MR"}]},
        "value": patient.ref.patient_id,
    }
    if patient.ref.issuer_of_patient_id:
        main["system"] = patient.ref.issuer_of_patient_id
    body: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient.resource_id,
        "identifier": [main, *({"value": other} for other in patient.other_patient_ids)],
    }
    if patient.updated_at is not None:
        body["meta"] = {"lastUpdated": patient.updated_at.isoformat()}
    name = _human_name(patient.patient_name)
    if name:
        body["name"] = [{"use": "official", **name}]
    if patient.patient_sex in _SEX:
        body["gender"] = _SEX[patient.patient_sex]
    if len(patient.patient_birth_date) == 8:
        d = patient.patient_birth_date
        body["birthDate"] = f"{d[:4]}-{d[4:6]}-{d[6:]}"
    return _dumped(fhir_model("Patient").model_validate(body))


# ---------------------------------------------------------------- ServiceRequest


def subject_of(resource: Any) -> tuple[str, PatientRef | None]:
    """(Patient resource id, or "") and (Patient ID + issuer, or None) the subject names."""
    subject = resource.subject
    if subject is None:  # the model lets an explicit null through
        raise InvalidRequest("invalid ServiceRequest: subject is required (the Patient the order is for)")
    reference = str(subject.reference or "")
    if reference:
        kind, _, rid = reference.rstrip("/").rpartition("/")
        if not kind.endswith("Patient") or not FHIR_ID.match(rid):
            raise InvalidRequest(f"subject {reference!r} is not a reference to a Patient")
        return rid, None
    if subject.identifier is not None and subject.identifier.value:
        return "", PatientRef(str(subject.identifier.value), str(subject.identifier.system or ""))
    raise InvalidRequest("subject must reference a Patient (Patient/<id>) or carry its identifier")


def _coded(concept: Any) -> tuple[CodedEntry, str]:
    """CodeableConcept -> (DICOM code, text)."""
    if concept is None:
        return CodedEntry(), ""
    coding = next((c for c in concept.coding or () if c.code), None)
    text = str(concept.text or "")
    if coding is None:
        return CodedEntry(), text
    system = str(coding.system or "")
    scheme = _SYSTEMS.get(system, system)
    if len(scheme) > 16:
        raise Unprocessable(
            f"code system {system!r} has no DICOM Coding Scheme Designator "
            f"(known: {', '.join(sorted(_SYSTEMS))}; or give a designator of at most 16 characters)"
        )
    display = str(coding.display or "")
    return CodedEntry(str(coding.code), scheme, display or text), text or display


def _concept(code: CodedEntry, text: str) -> dict[str, Any]:
    coding: dict[str, Any] = {"code": code.value}
    if code.scheme:
        coding["system"] = _SCHEMES.get(code.scheme, code.scheme)
    if code.meaning:
        coding["display"] = code.meaning
    out: dict[str, Any] = {"coding": [coding]} if code.value else {}
    if text:
        out["text"] = text
    return out


def _local(value: Any) -> dt.datetime | None:
    """occurrenceDateTime -> the naive local time DICOM DA/TM carry."""
    if isinstance(value, dt.datetime):
        return value.astimezone().replace(tzinfo=None) if value.tzinfo is not None else value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    return None


def _modality(resource: Any) -> str:
    concept = resource.performerType
    if concept is None:
        return ""
    codes = [c for c in concept.coding or () if c.code]
    dcm = next((c for c in codes if c.system == _DCM), codes[0] if codes else None)
    return str(dcm.code) if dcm is not None else str(concept.text or "")


def order_from_fhir(resource: Any, patient: Patient, existing: Order | None = None) -> Order:
    """A validated ServiceRequest for ``patient`` -> an order (states all SCHEDULED;
    the service keeps the states of ``existing`` on an update). What FHIR does not
    carry (station, location, Study Instance UID, ...) is kept from ``existing``."""
    if str(resource.intent) not in ORDER_INTENTS:
        raise Unprocessable(
            f"intent {resource.intent!r} is not an order ({', '.join(sorted(ORDER_INTENTS))})"
        )
    by_type: dict[str, str] = {}
    for identifier in resource.identifier or ():
        kind = _type_code(identifier)
        if kind in ("ACSN", "PLAC", "FILL") and identifier.value and kind not in by_type:
            by_type[kind] = str(identifier.value)
    accession = by_type.get("ACSN", "")
    if not accession:
        raise InvalidRequest(
            "a ServiceRequest needs an identifier of type ACSN (system "
            + _V2_0203
            + "): the Accession Number"
        )
    code, text = _coded(resource.code)
    reasons = list(resource.reasonCode or ())
    reason = _coded(reasons[0])[1] if reasons else ""
    priority = _PRIORITY.get(str(resource.priority or ""), "")
    requester = resource.requester
    procedure = RequestedProcedure(accession, steps=(ScheduledProcedureStep(accession),))
    if existing is not None:
        if len(existing.procedures) != 1 or len(existing.procedures[0].steps) != 1:
            raise Unprocessable(
                f"order {existing.accession_number} has several procedures or steps: "
                "change it over HL7 or the CLI"
            )
        procedure = existing.procedures[0]
    step = dataclasses.replace(
        procedure.steps[0],
        modality=_modality(resource),
        description=text[:64],
        start=_local(resource.occurrenceDateTime),
        status=StepStatus.SCHEDULED,
    )
    procedure = dataclasses.replace(
        procedure, description=text[:64], code=code, priority=priority, steps=(step,)
    )
    return Order(
        accession_number=accession,
        patient=patient.ref,
        placer_order_number=by_type.get("PLAC", ""),
        filler_order_number=by_type.get("FILL", ""),
        referring_physician=str(requester.display or "") if requester is not None else "",
        reason=reason,
        patient_name=patient.patient_name,
        patient_birth_date=patient.patient_birth_date,
        patient_sex=patient.patient_sex,
        procedures=(procedure,),
        order_id=existing.order_id if existing is not None else "",
        source="fhir",
    )


def fhir_status(order: Order) -> str:
    """ServiceRequest.status of an order: FHIR has no in-progress request, so a
    scheduled or started order is ``active``; a cancelled or discontinued one ``revoked``."""
    return {
        StepStatus.SCHEDULED: "active",
        StepStatus.IN_PROGRESS: "active",
        StepStatus.COMPLETED: "completed",
        StepStatus.DISCONTINUED: "revoked",
        StepStatus.CANCELLED: "revoked",
    }[order.status]


def _identifier(kind: str, value: str) -> dict[str, Any]:
    return {"type": {"coding": [{"system": _V2_0203, "code": kind}]}, "value": value}


def order_to_fhir(order: Order, patient_resource_id: str) -> dict[str, Any]:
    """The order as a FHIR ServiceRequest (validated); its first procedure and step."""
    identifiers = [_identifier("ACSN", order.accession_number)]
    if order.placer_order_number:
        identifiers.append(_identifier("PLAC", order.placer_order_number))
    if order.filler_order_number:
        identifiers.append(_identifier("FILL", order.filler_order_number))
    subject: dict[str, Any] = (
        {"reference": f"Patient/{patient_resource_id}"}
        if patient_resource_id
        else {"identifier": {"value": order.patient.patient_id, **(
            {"system": order.patient.issuer_of_patient_id} if order.patient.issuer_of_patient_id else {})}}
    )  # fmt: skip
    body: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": order.order_id,
        "identifier": identifiers,
        "status": fhir_status(order),
        "intent": "order",
        "subject": subject,
    }
    if order.updated_at is not None:
        body["meta"] = {"lastUpdated": order.updated_at.isoformat()}
    if order.referring_physician:
        body["requester"] = {"display": order.referring_physician}
    if order.reason:
        body["reasonCode"] = [{"text": order.reason}]
    if order.procedures:
        procedure = order.procedures[0]
        concept = _concept(procedure.code, procedure.description)
        if concept:
            body["code"] = concept
        if procedure.priority in _PRIORITY_BACK:
            body["priority"] = _PRIORITY_BACK[procedure.priority]
        if procedure.steps:
            step = procedure.steps[0]
            if step.modality:
                body["performerType"] = {"coding": [{"system": _DCM, "code": step.modality}]}
            if step.start is not None:
                body["occurrenceDateTime"] = step.start.astimezone().isoformat()
    return _dumped(fhir_model("ServiceRequest").model_validate(body))
