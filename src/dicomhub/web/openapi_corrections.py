"""The OpenAPI description of the correction routes (:mod:`dicomhub.web.corrections`;
merged into :func:`dicomhub.web.openapi.openapi_document`)."""

from __future__ import annotations

from typing import Any

__all__ = ["correction_paths"]

Json = dict[str, Any]

_STRING = {"type": "string"}
_UIDS = {"type": "array", "items": _STRING}
_ERROR: Json = {"$ref": "#/components/schemas/Error"}
_VALUES = {"type": "object", "additionalProperties": _STRING,
           "description": "DICOM keyword -> value (study and Patient module attributes only)."}  # fmt: skip
_RECORD: Json = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "kind": {"type": "string", "enum": ["modify", "split", "merge-studies", "merge-patients"]},
        "study_instance_uid": _STRING,
        "new_study_instance_uid": _STRING,
        "made_by": _STRING,
        "made_at": {"type": "string", "format": "date-time"},
        "reason": _STRING,
        "source": {"type": "string", "enum": ["reject", "keep"]},
        "original_values": {"type": "object"},
        "new_values": {"type": "object"},
        "uid_map": {"type": "object", "additionalProperties": _STRING, "description": "Old UID -> new UID."},
    },
}


def _error(description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _post(operation: str, summary: str, properties: Json, *, study: bool = True) -> Json:
    parameters = (
        [{"name": "study", "in": "path", "required": True, "description": "Study Instance UID.",
          "schema": _STRING}] if study else []
    )  # fmt: skip
    return {
        "post": {
            "tags": ["Corrections"],
            "operationId": operation,
            "summary": summary,
            "parameters": parameters,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object", "properties": properties}}},
            },
            "responses": {
                "200": {
                    "description": "The correction record.",
                    "content": {"application/json": {"schema": _RECORD}},
                },  # fmt: skip
                "400": _error("A malformed UID, an unknown or UID keyword, a value its VR does not allow."),
                "401": {"$ref": "#/components/responses/Unauthorized"},
                "403": _error("Needs the administer action."),
                "404": _error("No such study, or the series is not in it."),
                "409": _error("Studies of different patients (merge without force)."),
            },
        }
    }


def correction_paths() -> Json:
    reason = {"type": "string", "description": "Why (kept in the record)."}
    return {
        "/api/studies/{study}/modify": _post(
            "modifyStudy",
            "Set study and Patient module attributes (in place, or under new UIDs)",
            {
                "set": _VALUES,
                "new_uids": {"type": "boolean"},
                "source": {"type": "string", "enum": ["reject", "keep"]},
                "reason": reason,
            },
        ),  # fmt: skip
        "/api/studies/{study}/split": _post(
            "splitStudy",
            "Move series to a new study (new UIDs; the originals rejected)",
            {"series": _UIDS, "set": _VALUES, "reason": reason},
        ),
        "/api/studies/{study}/merge": _post(
            "mergeStudies",
            "Copy source studies into this study (new UIDs; the sources rejected)",
            {"sources": _UIDS, "force": {"type": "boolean"}, "reason": reason},
        ),
        "/api/patient-merges": _post(
            "mergePatients",
            "File every study of one archive patient under another (as HL7 ADT^A40)",
            {"into": _STRING, "from": _STRING, "reason": reason},
            study=False,
        ),
        "/admin/corrections": {
            "get": {
                "tags": ["Corrections"],
                "operationId": "listCorrections",
                "summary": "The correction records, newest first",
                "parameters": [
                    {
                        "name": "study",
                        "in": "query",
                        "required": False,
                        "schema": _STRING,
                        "description": "Only the corrections that read or wrote this study.",
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The records.",
                        "content": {"application/json": {"schema": {"type": "array", "items": _RECORD}}},
                    },
                    "400": _error("A malformed Study Instance UID."),
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "403": _error("Needs the administer action."),
                },
            }  # fmt: skip
        },
    }
