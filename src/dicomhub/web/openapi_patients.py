"""The OpenAPI description of ``PUT /api/studies/{study}/patient`` (merged into
:func:`dicomhub.web.openapi.openapi_document`)."""

from __future__ import annotations

from typing import Any

from dicomhub.web.patients import SET_PATIENT_FIELDS

__all__ = ["patient_paths"]

Json = dict[str, Any]

_STRING = {"type": "string"}
_ERROR: Json = {"$ref": "#/components/schemas/Error"}


def _error(description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def patient_paths() -> Json:
    filed = {"type": "object", "properties": {"study_instance_uid": _STRING,
             **{k: _STRING for k in ("PatientID", "IssuerOfPatientID", "PatientName",
                                     "PatientBirthDate", "PatientSex")}}}  # fmt: skip
    body = {"type": "object", "required": ["patient_id"],
            "properties": {name: _STRING for name in SET_PATIENT_FIELDS}}  # fmt: skip
    return {
        "/api/studies/{study}/patient": {
            "put": {
                "tags": ["Orders"],
                "operationId": "setStudyPatient",
                "summary": "File a stored study under another patient (coerced on the way out)",
                "parameters": [
                    {
                        "name": "study",
                        "in": "path",
                        "required": True,
                        "description": "Study Instance UID.",
                        "schema": _STRING,
                    }  # fmt: skip
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                "responses": {
                    "200": {
                        "description": "The patient the study is now filed under.",
                        "content": {"application/json": {"schema": filed}},
                    },  # fmt: skip
                    "400": _error("A malformed Study Instance UID or field."),
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "403": _error("Needs the administer action."),
                    "404": _error("No such study."),
                },
            }
        }
    }
