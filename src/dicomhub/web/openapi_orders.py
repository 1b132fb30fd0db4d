"""The OpenAPI description of ``/api/orders``, ``/api/patients`` and ``/fhir``
(merged into :func:`dicomhub.web.openapi.openapi_document`; kept apart so that
module stays readable). The FHIR answers are described loosely (the resource
type and id): the R4B models, not this document, define them.
"""

from __future__ import annotations

from typing import Any

from dicomhub.web.fhir import FHIR_JSON
from dicomhub.web.orders import ORDER_FIELDS, PATIENT_FIELDS

__all__ = ["order_paths"]

Json = dict[str, Any]

_ERROR: Json = {"$ref": "#/components/schemas/Error"}
_STRING = {"type": "string"}
_NULLABLE = {"type": ["string", "null"]}


def _error(description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _json(description: str, schema: Json) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _param(name: str, description: str) -> Json:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": _STRING}


_PATIENT: Json = {
    "type": "object",
    "description": "A patient of record (as `dicomhub patient show --json`).",
    "required": ["id", "patient_id"],
    "properties": {
        "id": _STRING,
        **{name: _STRING for name in PATIENT_FIELDS},
        "other_patient_ids": {"type": "array", "items": _STRING},
        "merged_into": _NULLABLE,
        "updated_at": _NULLABLE,
    },
}
_ORDER: Json = {
    "type": "object",
    "description": "An order with its requested procedures and scheduled steps "
    "(as `dicomhub order show --json`).",
    "required": ["id", "accession_number", "status", "procedures"],
    "properties": {
        "id": _STRING,
        "accession_number": _STRING,
        "status": {
            "type": "string",
            "enum": ["SCHEDULED", "IN PROGRESS", "COMPLETED", "DISCONTINUED", "CANCELLED"],
        },
        "source": _STRING,
        "procedures": {"type": "array", "items": {"type": "object"}},
        "studies": {
            "type": "array",
            "description": "The stored studies linked to the order (read-back only).",
            "items": {
                "type": "object",
                "properties": {
                    "study_instance_uid": _STRING,
                    "matched_by": {"type": "string", "enum": ["accession", "procedure", "study", "manual"]},
                    "linked_by": _STRING,
                    "linked_at": _NULLABLE,
                },
            },
        },
        "created_at": _NULLABLE,
        "updated_at": _NULLABLE,
    },
}
_ORDER_BODY: Json = {
    "type": "object",
    "description": "One requested procedure with one step, as `dicomhub order add`. start: ISO 8601 "
    "(local time when no offset); procedure_id and step_id default to the Accession Number.",
    "required": ["accession_number", "patient_id", "modality"],
    "properties": {
        **{name: _STRING for name in ORDER_FIELDS},
        "code": {
            "type": "object",
            "properties": {"value": _STRING, "scheme": _STRING, "meaning": _STRING},
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
_PATIENT_BODY: Json = {
    "type": "object",
    "required": ["patient_id"],
    "properties": {name: _STRING for name in PATIENT_FIELDS},
    "additionalProperties": False,
}


def _operation(operation_id: str, summary: str, ok: Json, **extra: Any) -> Json:
    return {
        "tags": ["Orders"],
        "operationId": operation_id,
        "summary": summary,
        **extra,
        "responses": {
            **ok,
            "400": _error("A missing or malformed field."),
            "401": {"$ref": "#/components/responses/Unauthorized"},
            "403": _error("Needs the schedule action (writing) or query at the archive scope (reading)."),
            "404": _error("No such order or patient."),
            "409": _error("The order life cycle refuses the change, or the Accession Number is taken."),
        },
    }


def _rest_paths() -> Json:
    order = _param("order", "The order's id, or its Accession Number.")
    patient = _param("patient", "The patient of record's id.")
    body = {"required": True, "content": {"application/json": {"schema": _ORDER_BODY}}}
    status = {
        "name": "status",
        "in": "query",
        "description": "Only orders in this state (repeatable).",
        "schema": {
            "type": "string",
            "enum": ["scheduled", "in_progress", "completed", "discontinued", "cancelled"],
        },
    }
    return {
        "/api/orders": {
            "get": _operation(
                "listOrders",
                "Orders, oldest first",
                {"200": _json("The orders.", {"type": "array", "items": _ORDER})},
                parameters=[
                    status,
                    {
                        "name": "patient_id",
                        "in": "query",
                        "description": "Only this patient's.",
                        "schema": _STRING,
                    },
                    {
                        "name": "issuer",
                        "in": "query",
                        "description": "Issuer of Patient ID.",
                        "schema": _STRING,
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "At most this many (1-10000).",
                        "schema": {"type": "integer"},
                    },
                ],
            ),
            "post": _operation(
                "addOrder", "Schedule an order", {"201": _json("Scheduled.", _ORDER)}, requestBody=body
            ),
        },
        "/api/orders/{order}": {
            "get": _operation(
                "getOrder", "One order", {"200": _json("The order.", _ORDER)}, parameters=[order]
            ),
        },
        "/api/orders/{order}/cancel": {
            "post": _operation(
                "cancelOrder",
                "Cancel an order no step of which started",
                {"200": _json("Cancelled.", _ORDER)},
                parameters=[order],
            ),
        },
        "/api/orders/{order}/discontinue": {
            "post": _operation(
                "discontinueOrder",
                "Stop the order's open steps",
                {"200": _json("Discontinued.", _ORDER)},
                parameters=[order],
            ),
        },
        "/api/patients": {
            "get": _operation(
                "listPatients",
                "Patients of record",
                {"200": _json("The patients.", {"type": "array", "items": _PATIENT})},
            ),
            "post": _operation(
                "addPatient",
                "Create a patient of record, or replace its demographics",
                {"201": _json("Created.", _PATIENT), "200": _json("Replaced.", _PATIENT)},
                requestBody={"required": True, "content": {"application/json": {"schema": _PATIENT_BODY}}},
            ),
        },
        "/api/patients/{patient}": {
            "get": _operation(
                "getPatient",
                "One patient of record",
                {"200": _json("The patient.", _PATIENT)},
                parameters=[patient],
            ),
        },
    }


def _fhir(kind: str) -> Json:
    return {
        "type": "object",
        "description": f"A FHIR R4 {kind} (validated against the R4B models of fhir.resources).",
        "required": ["resourceType"],
        "properties": {"resourceType": {"const": kind}, "id": _STRING},
    }


_OUTCOME: Json = {
    "type": "object",
    "description": "A FHIR OperationOutcome: diagnostics say what was wrong.",
    "required": ["resourceType", "issue"],
    "properties": {
        "resourceType": {"const": "OperationOutcome"},
        "issue": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["severity", "code"],
                "properties": {"severity": _STRING, "code": _STRING, "diagnostics": _STRING},
            },
        },
    },
}


def _fhir_body(kind: str) -> Json:
    return {
        "required": True,
        "content": {FHIR_JSON: {"schema": _fhir(kind)}, "application/json": {"schema": _fhir(kind)}},
    }


def _fhir_operation(operation_id: str, summary: str, ok: dict[str, tuple[str, str]], **extra: Any) -> Json:
    outcome = {"content": {FHIR_JSON: {"schema": _OUTCOME}}}
    responses: Json = {
        status: {"description": description, "content": {FHIR_JSON: {"schema": _fhir(kind)}}}
        for status, (description, kind) in ok.items()
    }
    for status, description in (
        ("400", "Not a valid resource (the models' message), or an unknown subject."),
        ("403", "Needs the schedule action (writing) or query at the archive scope (reading)."),
        ("404", "No resource with this id."),
        ("409", "The order life cycle refuses the change, or an identifier belongs to another resource."),
        ("415", "The body is not application/fhir+json."),
        ("422", "Valid, but not applied: an intent that is not an order, an unsupported status."),
    ):
        responses[status] = {"description": description, **outcome}
    responses["401"] = {"$ref": "#/components/responses/Unauthorized"}
    return {
        "tags": ["FHIR"],
        "operationId": operation_id,
        "summary": summary,
        **extra,
        "responses": responses,
    }


def _fhir_paths() -> Json:
    patient = _param("patient", "The Patient's logical id.")
    order = _param("order", "The ServiceRequest's logical id (the order's id).")
    return {
        "/fhir/metadata": {
            "get": _fhir_operation(
                "fhirCapabilities",
                "The CapabilityStatement",
                {"200": ("What this server does.", "CapabilityStatement")},
            ),
        },
        "/fhir/Patient": {
            "post": _fhir_operation(
                "fhirCreatePatient",
                "Create a Patient (a known identifier updates it)",
                {"201": ("Created.", "Patient"), "200": ("Updated.", "Patient")},
                requestBody=_fhir_body("Patient"),
            ),
        },
        "/fhir/Patient/{patient}": {
            "get": _fhir_operation(
                "fhirReadPatient",
                "Read a Patient",
                {"200": ("The Patient.", "Patient")},
                parameters=[patient],
            ),
            "put": _fhir_operation(
                "fhirUpdatePatient",
                "Update a Patient (or create it at this id)",
                {"200": ("Updated.", "Patient"), "201": ("Created.", "Patient")},
                parameters=[patient],
                requestBody=_fhir_body("Patient"),
            ),
        },
        "/fhir/ServiceRequest": {
            "post": _fhir_operation(
                "fhirCreateServiceRequest",
                "Place an order",
                {"201": ("Created.", "ServiceRequest")},
                requestBody=_fhir_body("ServiceRequest"),
            ),
        },
        "/fhir/ServiceRequest/{order}": {
            "get": _fhir_operation(
                "fhirReadServiceRequest",
                "Read an order",
                {"200": ("The ServiceRequest.", "ServiceRequest")},
                parameters=[order],
            ),
            "put": _fhir_operation(
                "fhirUpdateServiceRequest",
                "Replace an order (active), cancel or discontinue it (revoked), complete it",
                {"200": ("Updated.", "ServiceRequest"), "201": ("Created.", "ServiceRequest")},
                parameters=[order],
                requestBody=_fhir_body("ServiceRequest"),
            ),
        },
    }


def _link_paths() -> Json:
    order = _param("order", "The order's Accession Number, or its id.")
    page = [
        {"name": "offset", "in": "query", "description": "Skip this many.", "schema": {"type": "integer"}},
        {
            "name": "limit",
            "in": "query",
            "description": "At most this many (1-1000).",
            "schema": {"type": "integer"},
        },
    ]
    unmatched = {
        "type": "object",
        "required": ["total", "offset", "limit", "studies"],
        "properties": {
            "total": {"type": "integer"},
            "offset": {"type": "integer"},
            "limit": {"type": "integer"},
            "studies": {"type": "array", "items": {"type": "object"}},
        },
    }
    body = {
        "type": "object",
        "required": ["study_instance_uid"],
        "properties": {"study_instance_uid": _STRING},
        "additionalProperties": False,
    }
    return {
        "/api/orders/unmatched": {
            "get": _operation(
                "listUnmatchedStudies",
                "Stored studies that match no order, oldest first",
                {"200": _json("One page of them, with their total.", unmatched)},
                parameters=page,
            ),
        },
        "/api/orders/{order}/studies": {
            "post": _operation(
                "linkStudy",
                "Link a stored study to the order by hand (audited)",
                {"200": _json("The order with its linked studies.", _ORDER)},
                parameters=[order],
                requestBody={"required": True, "content": {"application/json": {"schema": body}}},
            ),
        },
    }


def order_paths() -> Json:
    """The paths of the order REST API and of ``/fhir``."""
    return {**_rest_paths(), **_link_paths(), **_fhir_paths(), **_imaging_study_paths()}


def _imaging_study_paths() -> Json:
    def query(name: str, description: str, kind: str = "string") -> Json:
        return {"name": name, "in": "query", "description": description, "schema": {"type": kind}}

    search = [
        query("patient", "Patient/<id>: studies of that patient of record."),
        query("patient.identifier", "[system|]Patient ID."),
        query("identifier", "urn:dicom:uid|urn:oid:<Study Instance UID>, or an Accession Number."),
        query("basedon", "ServiceRequest/<id>: the studies linked to that order."),
        query("_id", "The ImagingStudy id (the Study Instance UID)."),
        query("_count", "Page size, 1-100 (default 20).", "integer"),
        query("_offset", "Skip this many.", "integer"),
    ]
    return {
        "/fhir/ImagingStudy": {
            "get": _fhir_operation(
                "fhirSearchImagingStudy",
                "Search the stored studies (a searchset Bundle, paged)",
                {"200": ("The matching studies the caller may query.", "Bundle")},
                parameters=search,
            ),
        },
        "/fhir/ImagingStudy/{study}": {
            "get": _fhir_operation(
                "fhirReadImagingStudy",
                "Read a stored study",
                {"200": ("The ImagingStudy.", "ImagingStudy")},
                parameters=[_param("study", "The Study Instance UID.")],
            ),
        },
    }
