"""The OpenAPI 3.1 description of the HTTP routes, served at ``GET /openapi.json``.

Every route whose request and response are single-part is described:
``/healthz``, the QIDO-RS searches, WADO-RS metadata, rendered and thumbnail
images, single-part bulk data, WADO-URI and the delete routes. STOW-RS is
described by its response (the request body is ``multipart/related``, which
OpenAPI can only name). Left out are the retrieve routes whose answer is
multipart only: instances of a study, series or instance and frames.

The paths use the route templates of the code (``{study}``, ``{series}``,
``{instance}``, ``{frames}``, ``{tag}``) so that the document and the route
tables can be compared one to one (tests/e2e/test_openapi.py does).

References
----------
OpenAPI Specification 3.1.0; PS3.18 8.3.4 (QIDO-RS query parameters),
8.3.5.1 (rendered parameters), 9 (WADO-URI), 10.4-10.6, F.2 (DICOM JSON).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from dicomhub import __version__
from dicomhub.web.changes import change_paths
from dicomhub.web.mpps import mpps_paths
from dicomhub.web.openapi_orders import order_paths
from dicomhub.web.openapi_patients import patient_paths
from dicomhub.web.openapi_rejection import include_rejected_parameter, reject_paths
from dicomhub.web.openapi_ui import ui_paths
from dicomhub.web.printclient import print_request_paths
from dicomhub.web.printing import print_paths
from dicomhub.web.repair import repair_paths
from dicomhub.web.routing import route_paths
from dicomhub.web.trash import trash_paths
from dicomhub.web.webhooks import webhook_paths

__all__ = ["OPENAPI_VERSION", "openapi_document", "openapi_endpoint"]

OPENAPI_VERSION = "3.1.0"

Json = dict[str, Any]

_DICOM_JSON = "application/dicom+json"
_DICOM_XML = "application/dicom+xml"
_OCTET_STREAM = "application/octet-stream"
_IMAGE_TYPES = ("image/jpeg", "image/png")

_STUDY = "/dicomweb/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"
_FRAMES = _INSTANCE + "/frames/{frames}"


# ---------------------------------------------------------------- building blocks


def _ref(kind: str, name: str) -> Json:
    return {"$ref": f"#/components/{kind}/{name}"}


def _path_param(name: str, description: str, pattern: str | None = None) -> Json:
    schema: Json = {"type": "string"}
    if pattern is not None:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def _query_param(name: str, schema: Json, description: str, *, required: bool = False) -> Json:
    param: Json = {"name": name, "in": "query", "description": description, "schema": schema}
    if required:
        param["required"] = True
    return param


def _error(description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": _ref("schemas", "Error")}}}


def _binary(*media_types: str) -> Json:
    # OpenAPI 3.1 4.8.14.3: binary content is described by its media type alone.
    return {media_type: {} for media_type in media_types}


_UID_PARAMS = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
}


def _uid_params(*names: str) -> list[Json]:
    return [_ref("parameters", _UID_PARAMS[name]) for name in names]


def _scope(path: str) -> list[str]:
    return [name for name in ("study", "series", "instance") if "{" + name + "}" in path]


# ---------------------------------------------------------------- components


def _schemas() -> Json:
    return {
        "DicomAttribute": {
            "type": "object",
            "description": "One attribute of a DICOM JSON data set (PS3.18 F.2.2).",
            "required": ["vr"],
            "properties": {
                "vr": {"type": "string", "pattern": "^[A-Z]{2}$", "description": "Value Representation"},
                "Value": {
                    "type": "array",
                    "description": (
                        "The values: strings, numbers, person name objects "
                        "(Alphabetic/Ideographic/Phonetic) or, for SQ, nested data sets."
                    ),
                    "items": {},
                },
                "BulkDataURI": {"type": "string", "format": "uri-reference"},
                "InlineBinary": {"type": "string", "contentEncoding": "base64"},
            },
            "additionalProperties": False,
        },
        "DicomJson": {
            "type": "object",
            "description": "A DICOM JSON data set: attributes keyed by their tag as 8 hex digits.",
            "propertyNames": {"pattern": "^[0-9A-Fa-f]{8}$"},
            "additionalProperties": _ref("schemas", "DicomAttribute"),
        },
        "DicomJsonArray": {
            "type": "array",
            "items": _ref("schemas", "DicomJson"),
        },
        "StoreResponse": {
            "allOf": [_ref("schemas", "DicomJson")],
            "description": (
                "STOW-RS response (PS3.18 10.5.3): RetrieveURL (00081190), "
                "FailedSOPSequence (00081198) with ReferencedSOPClassUID, "
                "ReferencedSOPInstanceUID and FailureReason (00081197), "
                "ReferencedSOPSequence (00081199) with RetrieveURL and, when present, "
                "WarningReason (00081196)."
            ),
        },
        "Error": {
            "type": "object",
            "required": ["error", "status"],
            "properties": {
                "error": {"type": "string", "description": "Why the request failed."},
                "status": {"type": "integer", "description": "The HTTP status code."},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "index", "storage", "dimse", "version"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unavailable"]},
                "index": {"type": "boolean"},
                "storage": {"type": "boolean"},
                "dimse": {"type": "boolean"},
                "version": {"type": "string"},
            },
        },
        "TransferSyntax": {
            "type": "object",
            "required": [
                "uid",
                "name",
                "title",
                "lossy",
                "encapsulated",
                "can_decode",
                "can_encode",
                "decoders",
                "encoders",
            ],
            "properties": {
                "uid": {"type": "string"},
                "name": {"type": "string", "description": "the name `--compress` rules may use"},
                "title": {"type": "string"},
                "lossy": {"type": "boolean"},
                "encapsulated": {"type": "boolean"},
                "can_decode": {"type": "boolean", "description": "in this install"},
                "can_encode": {"type": "boolean", "description": "in this install"},
                "decoders": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "decoders tried in this order: the pylibjpeg family first, "
                    "gdcm-fallback last; native for uncompressed syntaxes",
                },
                "encoders": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "encoders tried in this order (empty: decode only)",
                },
            },
        },
        "Association": {
            "type": "object",
            "required": [
                "calling_ae_title",
                "called_ae_title",
                "peer_host",
                "outcome",
                "started_at",
                "milliseconds",
                "accepted_contexts",
                "rejected_contexts",
                "operations",
                "bytes_received",
            ],
            "properties": {
                "pk": {"type": "integer"},
                "calling_ae_title": {"type": "string"},
                "called_ae_title": {"type": "string"},
                "peer_host": {"type": "string"},
                "outcome": {"type": "string", "enum": ["released", "aborted", "rejected"]},
                "reason": {"type": ["string", "null"]},
                "started_at": {"type": "string", "format": "date-time"},
                "milliseconds": {"type": "integer"},
                "accepted_contexts": {"type": "integer"},
                "rejected_contexts": {"type": "integer"},
                "contexts": {
                    "type": ["array", "null"],
                    "description": "[abstract syntax, result (PS3.8 Table 9-18), accepted transfer "
                    "syntax, transfer syntaxes proposed (refused contexts only)]",
                },
                "operations": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                    "description": "operation:status class -> count, e.g. store:success",
                },
                "bytes_received": {"type": "integer"},
            },
        },
        "ValidationFinding": {
            "type": "object",
            "required": ["sop_instance_uid", "sop_class_uid", "severity", "message", "checked_at"],
            "properties": {
                "sop_instance_uid": {"type": "string"},
                "sop_class_uid": {"type": "string"},
                "source_ae_title": {"type": ["string", "null"]},
                "severity": {"type": "string", "enum": ["error", "warning"]},
                "code": {"type": ["string", "null"]},
                "module": {"type": ["string", "null"]},
                "attribute": {"type": ["string", "null"]},
                "message": {"type": "string"},
                "rejected": {"type": "boolean"},
                "checked_at": {"type": "string"},
            },
        },
        "ValidationSummary": {
            "type": "object",
            "required": ["source_ae_title", "instances_checked", "instances_with_errors"],
            "properties": {
                "source_ae_title": {"type": ["string", "null"]},
                "instances_checked": {"type": "integer"},
                "instances_with_errors": {"type": "integer"},
                "instances_with_warnings": {"type": "integer"},
                "instances_rejected": {"type": "integer"},
                "last_checked_at": {"type": ["string", "null"]},
                "top_findings": {"type": "array", "items": {"type": "object"}},
            },
        },
        "StorageCommitment": {
            "type": "object",
            "required": ["transaction_uid", "calling_ae_title", "state", "attempts", "items", "created_at"],
            "properties": {
                "transaction_uid": {"type": "string"},
                "calling_ae_title": {"type": "string"},
                "peer_host": {"type": ["string", "null"]},
                "state": {"type": "string", "enum": ["pending", "delivered", "gave-up"]},
                "attempts": {"type": "integer"},
                "items": {"type": "integer", "description": "instances referenced by the request"},
                "next_attempt_at": {"type": "string", "format": "date-time"},
                "last_error": {"type": ["string", "null"]},
                "result": {
                    "type": ["object", "null"],
                    "description": "committed and failed [class, instance(, reason)] lists, once delivered",
                },
                "created_at": {"type": "string", "format": "date-time"},
                "delivered_at": {"type": ["string", "null"], "format": "date-time"},
            },
        },
        "DecodeFailure": {
            "type": "object",
            "required": [
                "sop_instance_uid",
                "series_instance_uid",
                "study_instance_uid",
                "sop_class_uid",
                "transfer_syntax_uid",
                "reason",
                "checked_at",
            ],
            "properties": {
                "sop_instance_uid": {"type": "string"},
                "series_instance_uid": {"type": "string"},
                "study_instance_uid": {"type": "string"},
                "sop_class_uid": {"type": "string"},
                "transfer_syntax_uid": {"type": "string"},
                "reason": {"type": ["string", "null"]},
                "checked_at": {"type": "string", "format": "date-time"},
            },
        },
        "DeidRun": {
            "type": "object",
            "description": "A de-identification run: who, when, why, from which study to which, counts.",
            "required": ["id", "project", "kind", "status", "source_study_uid", "total"],
            "properties": {
                "id": {"type": "integer"},
                "project": {"type": "string"},
                "kind": {"type": "string", "enum": ["archive", "export"]},
                "status": {"type": "string", "enum": ["pending", "running", "done", "failed"]},
                "actor": {"type": "string"},
                "reason": {"type": "string"},
                "source_study_uid": {"type": "string"},
                "source_series_uid": {"type": ["string", "null"]},
                "target_study_uid": {"type": ["string", "null"]},
                "total": {"type": "integer"},
                "stored": {"type": "integer"},
                "already_present": {"type": "integer"},
                "refused": {"type": "integer"},
                "failed": {"type": "integer"},
                "items": {"type": "array", "items": {"type": "object"}},
            },
        },
    }


def _parameters() -> Json:
    uid = "^[0-9]+(\\.[0-9]+)*$"
    return {
        "StudyInstanceUID": _path_param("study", "Study Instance UID", uid),
        "SeriesInstanceUID": _path_param("series", "Series Instance UID", uid),
        "SOPInstanceUID": _path_param("instance", "SOP Instance UID", uid),
        "Frame": _path_param("frames", "One frame number (from 1).", "^[0-9]+$"),
        "window": _query_param(
            "window",
            {"type": "string"},
            "VOI window `center,width[,function]` (PS3.18 8.3.5.1.4); "
            "the function is LINEAR (default), LINEAR_EXACT or SIGMOID. "
            "Default: the window stored in the instance, else the full range.",
        ),
        "viewport": _query_param(
            "viewport",
            {"type": "string"},
            "`vw,vh` or `vw,vh,sx,sy,sw,sh` (PS3.18 8.3.5.1.3): output size "
            "(1-8192) and optional source region.",
        ),
        "quality": _query_param(
            "quality",
            {"type": "integer", "minimum": 1, "maximum": 100},
            "JPEG quality (PS3.18 8.3.5.1.5).",
        ),
        "AcceptRendered": {
            "name": "Accept",
            "in": "header",
            "description": "image/jpeg (the default) or image/png.",
            "schema": {"type": "string"},
        },
    }


def _headers() -> Json:
    return {
        "Warning": {
            "description": '`299 dicomhub "..."` warnings (limit exceeded, more results).',
            "schema": {"type": "string"},
        },
        "ETag": {"description": "Entity tag of the metadata.", "schema": {"type": "string"}},
    }


def _common_responses() -> Json:
    return {
        "BadRequest": _error("Malformed UID, parameter or value."),
        "NotFound": _error("The study, series, instance, frame or element is not held."),
        "NotAcceptable": _error("None of the accepted media types can be produced."),
        "Unavailable": _error("The index or the storage is unavailable."),
        "Unauthorized": _error("Access control is on and the request has no valid token."),
        "Forbidden": _error("The token's principal holds no grant for this."),
    }


# ---------------------------------------------------------------- QIDO-RS


_QIDO = (
    ("/dicomweb/studies", "searchStudies", "Search for studies"),
    ("/dicomweb/series", "searchSeries", "Search for series"),
    ("/dicomweb/instances", "searchInstances", "Search for instances"),
    (_STUDY + "/series", "searchStudySeries", "Search for the series of a study"),
    (_STUDY + "/instances", "searchStudyInstances", "Search for the instances of a study"),
    (_SERIES + "/instances", "searchSeriesInstances", "Search for the instances of a series"),
)


def _qido_parameters() -> list[Json]:
    return [
        {
            "name": "attributes",
            "in": "query",
            "style": "form",
            "explode": True,
            "description": (
                "Attribute matching (PS3.18 8.3.4.1): any number of `{attributeID}={value}` "
                "parameters, where attributeID is a DICOM keyword (`PatientName`), a tag of "
                "8 hex digits (`00100010`) or one level of sequence matching "
                "(`RequestAttributesSequence.RequestedProcedureID`). Values: single value, "
                "wildcards `*` and `?`, UID lists (comma or backslash), DA/TM/DT ranges "
                "(`20200101-20201231`); an empty value is universal matching (the attribute "
                "is returned). The parameter name `attributes` itself is not sent."
            ),
            "schema": {
                "type": "object",
                "propertyNames": {"pattern": "^([A-Za-z][A-Za-z0-9]*|[0-9A-Fa-f]{8})(\\.[A-Za-z0-9]+)?$"},
                "additionalProperties": {"type": "string"},
            },
        },
        {
            "name": "includefield",
            "in": "query",
            "style": "form",
            "explode": True,
            "description": (
                "Additional attributes to return: keywords or tags, comma-separated or "
                "repeated, or `all` for every attribute of the level."
            ),
            "schema": {"type": "array", "items": {"type": "string"}},
        },
        _query_param(
            "limit",
            {"type": "integer", "minimum": 1},
            "Maximum number of results; larger values are capped to the server maximum "
            "(with a Warning header).",
        ),
        _query_param("offset", {"type": "integer", "minimum": 0}, "Number of results to skip."),
        _query_param(
            "fuzzymatching",
            {"type": "boolean"},
            "Fuzzy (case-insensitive, word) matching of person names.",
        ),
        include_rejected_parameter(),
    ]


def _qido_operation(path: str, operation_id: str, summary: str) -> Json:
    return {
        "get": {
            "tags": ["QIDO-RS"],
            "operationId": operation_id,
            "summary": summary,
            "description": (
                'PS3.18 10.6. The multipart/related; type="application/dicom+xml" '
                "representation is also offered (Accept header) but not described here."
            ),
            "parameters": [*_uid_params(*_scope(path)), *_qido_parameters()],
            "responses": {
                "200": {
                    "description": "The matches.",
                    "headers": {"Warning": _ref("headers", "Warning")},
                    "content": {_DICOM_JSON: {"schema": _ref("schemas", "DicomJsonArray")}},
                },
                "204": {
                    "description": "No match.",
                    "headers": {"Warning": _ref("headers", "Warning")},
                },
                "400": _ref("responses", "BadRequest"),
                "406": _ref("responses", "NotAcceptable"),
                "503": _ref("responses", "Unavailable"),
            },
        }
    }


# ---------------------------------------------------------------- WADO-RS


def _metadata_operation(path: str, operation_id: str, what: str) -> Json:
    return {
        "get": {
            "tags": ["WADO-RS"],
            "operationId": operation_id,
            "summary": f"Retrieve the metadata of {what}",
            "description": (
                "PS3.18 10.4.1.1.2. One DICOM JSON data set per instance; BulkDataURIs are "
                "absolute and point at the bulk data route."
            ),
            "parameters": [
                *_uid_params(*_scope(path)),
                include_rejected_parameter(),
                {
                    "name": "If-None-Match",
                    "in": "header",
                    "description": "An ETag from an earlier response.",
                    "schema": {"type": "string"},
                },
            ],
            "responses": {
                "200": {
                    "description": "The metadata.",
                    "headers": {"ETag": _ref("headers", "ETag")},
                    "content": {_DICOM_JSON: {"schema": _ref("schemas", "DicomJsonArray")}},
                },
                "304": {
                    "description": "Not modified (If-None-Match matched).",
                    "headers": {"ETag": _ref("headers", "ETag")},
                },
                "400": _ref("responses", "BadRequest"),
                "404": _ref("responses", "NotFound"),
                "406": _ref("responses", "NotAcceptable"),
                "503": _ref("responses", "Unavailable"),
            },
        }
    }


def _rendered_operation(path: str, operation_id: str, summary: str, *, thumbnail: bool) -> Json:
    params = [*_uid_params(*_scope(path))]
    if "{frames}" in path:
        params.append(_ref("parameters", "Frame"))
    params += [
        _ref("parameters", "window"),
        _ref("parameters", "viewport"),
        _ref("parameters", "quality"),
        _ref("parameters", "AcceptRendered"),
    ]
    description = (
        "PS3.18 10.4.1.1.4. The first frame of an instance, or the middle instance of a series "
        "(or study). The `accept` query parameter, when given, replaces the Accept header."
    )
    if thumbnail:
        description += " Without a viewport the image fits in 128x128."
    image_types: tuple[str, ...] = _IMAGE_TYPES
    if not thumbnail and path.endswith("{instance}/rendered"):
        description += (
            " A video instance renders as its stored stream (video/mpeg, video/mp4) and an "
            "encapsulated PDF as the PDF, when the Accept header allows (*/* does)."
        )
        image_types += ("video/mpeg", "video/mp4", "application/pdf")
    return {
        "get": {
            "tags": ["WADO-RS"],
            "operationId": operation_id,
            "summary": summary,
            "description": description,
            "parameters": params,
            "responses": {
                "200": {"description": "The rendered image.", "content": _binary(*image_types)},
                "400": _ref("responses", "BadRequest"),
                "404": _ref("responses", "NotFound"),
                "406": _ref("responses", "NotAcceptable"),
                "503": _ref("responses", "Unavailable"),
            },
        }
    }


def _bulk_operation() -> Json:
    range_header = {"description": "`bytes first-last/length`", "schema": {"type": "string"}}
    return {
        "get": {
            "tags": ["WADO-RS"],
            "operationId": "retrieveBulkData",
            "summary": "Retrieve the bulk data of one element",
            "description": (
                "The BulkDataURIs of the metadata. `Accept: application/octet-stream` gives the "
                "value as a single part and honours a single `Range`; other Accept values give "
                "multipart/related (not described here). Pixel Data of a compressed object is "
                "given as its frames."
            ),
            "parameters": [
                *_uid_params("study", "series", "instance"),
                _path_param(
                    "tag",
                    "The element's tag as 8 hex digits (top level, else the first nested one).",
                    "^[0-9A-Fa-f]{8}$",
                ),
                {
                    "name": "Accept",
                    "in": "header",
                    "required": True,
                    "description": "application/octet-stream for the single-part representation.",
                    "schema": {"type": "string", "const": _OCTET_STREAM},
                },
                {
                    "name": "Range",
                    "in": "header",
                    "description": "One byte range, `bytes=first-[last]` or `bytes=-suffix`.",
                    "schema": {"type": "string"},
                },
            ],
            "responses": {
                "200": {
                    "description": "The whole value.",
                    "headers": {"Accept-Ranges": {"schema": {"type": "string", "const": "bytes"}}},
                    "content": _binary(_OCTET_STREAM),
                },
                "206": {
                    "description": "The requested byte range.",
                    "headers": {"Content-Range": range_header},
                    "content": _binary(_OCTET_STREAM),
                },
                "400": _ref("responses", "BadRequest"),
                "404": _ref("responses", "NotFound"),
                "406": _ref("responses", "NotAcceptable"),
                "416": {
                    "description": "The range lies outside the value.",
                    "headers": {
                        "Content-Range": {"description": "`bytes */length`", "schema": {"type": "string"}}
                    },
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "503": _ref("responses", "Unavailable"),
            },
        }
    }


def _wado_uri_operation() -> Json:
    uid = {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)*$"}
    positive = {"type": "integer", "minimum": 1}
    return {
        "get": {
            "tags": ["WADO-URI"],
            "operationId": "wadoUri",
            "summary": "WADO-URI retrieve of one instance",
            "description": "PS3.18 9: the instance as application/dicom, or rendered.",
            "parameters": [
                _query_param(
                    "requestType", {"type": "string", "const": "WADO"}, "Always WADO.", required=True
                ),
                _query_param("studyUID", uid, "Study Instance UID", required=True),
                _query_param("seriesUID", uid, "Series Instance UID", required=True),
                _query_param("objectUID", uid, "SOP Instance UID", required=True),
                _query_param(
                    "contentType",
                    {"type": "string"},
                    "application/dicom, image/jpeg (default) or image/png (comma-separated "
                    "preferences; image/* and */* give image/jpeg).",
                ),
                _query_param(
                    "transferSyntax",
                    {"type": "string"},
                    "Transfer syntax UID of an application/dicom answer (default: as stored).",
                ),
                _query_param("windowCenter", {"type": "number"}, "Window center (with windowWidth)."),
                _query_param(
                    "windowWidth", {"type": "number", "minimum": 1}, "Window width (with windowCenter)."
                ),
                _query_param("rows", positive, "Output height."),
                _query_param("columns", positive, "Output width."),
                _query_param("frameNumber", positive, "The frame to render (default 1)."),
                _query_param(
                    "imageQuality", {"type": "integer", "minimum": 1, "maximum": 100}, "JPEG quality."
                ),
            ],
            "responses": {
                "200": {
                    "description": "The instance or its rendered image.",
                    "headers": {
                        "Content-Disposition": {
                            "description": '`attachment; filename="{SOPInstanceUID}.dcm"`',
                            "schema": {"type": "string"},
                        }
                    },
                    "content": _binary("application/dicom", *_IMAGE_TYPES),
                },
                "400": _ref("responses", "BadRequest"),
                "404": _ref("responses", "NotFound"),
                "406": _ref("responses", "NotAcceptable"),
                "503": _ref("responses", "Unavailable"),
            },
        }
    }


# ---------------------------------------------------------------- STOW-RS and delete


def _stow_operation(path: str, operation_id: str, summary: str) -> Json:
    store_response = {
        _DICOM_JSON: {"schema": _ref("schemas", "StoreResponse")},
        _DICOM_XML: {"schema": {"type": "string", "description": "PS3.19 Native DICOM Model."}},
    }
    warning = {"Warning": _ref("headers", "Warning")}
    return {
        "post": {
            "tags": ["STOW-RS"],
            "operationId": operation_id,
            "summary": summary,
            "description": (
                'PS3.18 10.5. The body is multipart/related; type="application/dicom" with one '
                "Part 10 instance per part (JSON/XML metadata with bulk data is not supported). "
                "The response is DICOM JSON unless Accept prefers application/dicom+xml."
            ),
            "parameters": _uid_params(*_scope(path)),
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/related": {
                        "schema": {
                            "type": "string",
                            "description": (
                                "Parts of application/dicom; the Content-Type has "
                                'type="application/dicom" (or no type) and a boundary.'
                            ),
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "Every instance was stored.",
                    "headers": warning,
                    "content": store_response,
                },
                "202": {
                    "description": "Some instances were stored, others failed or have warnings.",
                    "headers": warning,
                    "content": store_response,
                },
                "400": _ref("responses", "BadRequest"),
                "406": _ref("responses", "NotAcceptable"),
                "409": {
                    "description": "No instance was stored (see FailedSOPSequence).",
                    "headers": warning,
                    "content": store_response,
                },
                "415": _error("The body is not multipart/related of application/dicom parts."),
                "503": _ref("responses", "Unavailable"),
            },
        }
    }


def _delete_operation(path: str, operation_id: str, what: str) -> Json:
    return {
        "delete": {
            "tags": ["Delete"],
            "operationId": operation_id,
            "summary": f"Delete {what} and everything below it",
            "parameters": _uid_params(*_scope(path)),
            "responses": {
                "204": {"description": "Deleted."},
                "400": _ref("responses", "BadRequest"),
                "404": _ref("responses", "NotFound"),
                "503": _ref("responses", "Unavailable"),
            },
        }
    }


# ---------------------------------------------------------------- document


def _merge(paths: Json, path: str, operations: Json) -> None:
    paths.setdefault(path, {}).update(operations)


def _paths() -> Json:
    paths: Json = {
        "/healthz": {
            "get": {
                "tags": ["Server"],
                "operationId": "healthz",
                "summary": "Health of the index, the storage and the DIMSE workers",
                "responses": {
                    "200": {
                        "description": "Everything works.",
                        "content": {"application/json": {"schema": _ref("schemas", "Health")}},
                    },
                    "503": {
                        "description": "A part is unavailable.",
                        "content": {"application/json": {"schema": _ref("schemas", "Health")}},
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "tags": ["Server"],
                "operationId": "metrics",
                "summary": "Prometheus metrics: associations, DIMSE operations, archive gauges",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "tags": ["Server"],
                "operationId": "openapi",
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "The OpenAPI description.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/conformance": {
            "get": {
                "tags": ["Server"],
                "operationId": "conformanceStatement",
                "summary": "The DICOM conformance statement (PS3.2) of this server, from its configuration",
                "parameters": [
                    _query_param(
                        "format",
                        {"type": "string", "enum": ["html", "markdown"]},
                        "`html` (default) or `markdown`; without it, `Accept: text/markdown` gives Markdown.",
                    )
                ],
                "responses": {
                    "200": {
                        "description": "The conformance statement.",
                        "content": {
                            "text/html": {"schema": {"type": "string"}},
                            "text/markdown": {"schema": {"type": "string"}},
                        },
                    },
                    "400": _ref("responses", "BadRequest"),
                    "404": _error("The server was started without a conformance statement."),
                },
            }
        },
    }
    for path, operation_id, summary, schema in (
        ("/admin/codecs", "listCodecs", "Transfer syntaxes this install reads and writes", "TransferSyntax"),
        (
            "/admin/decode-failures",
            "listDecodeFailures",
            "Stored instances whose pixel data did not decode (the decode check)",
            "DecodeFailure",
        ),
        (
            "/admin/associations",
            "listAssociations",
            "Recent DIMSE associations: calling AE, proposed contexts and their results, operations",
            "Association",
        ),
        (
            "/admin/validation",
            "listValidationFindings",
            "IOD validation findings of stored objects (?source=AET, ?limit=)",
            "ValidationFinding",
        ),
        (
            "/admin/validation/summary",
            "summariseValidation",
            "IOD validation per source AE: instances checked, with errors or warnings, rejected",
            "ValidationSummary",
        ),
        (
            "/admin/storage-commitments",
            "listStorageCommitments",
            "Storage Commitment transactions, newest first, with their delivery state",
            "StorageCommitment",
        ),
    ):
        paths[path] = {
            "get": {
                "tags": ["Admin"],
                "operationId": operation_id,
                "summary": summary,
                "responses": {
                    "200": {
                        "description": summary + ".",
                        "content": {
                            "application/json": {
                                "schema": {"type": "array", "items": _ref("schemas", schema)}
                            }
                        },
                    }
                },
            }
        }
    for path, operation_id, summary in _QIDO:
        _merge(paths, path, _qido_operation(path, operation_id, summary))
    for path, operation_id, what in (
        (_STUDY + "/metadata", "retrieveStudyMetadata", "a study"),
        (_SERIES + "/metadata", "retrieveSeriesMetadata", "a series"),
        (_INSTANCE + "/metadata", "retrieveInstanceMetadata", "an instance"),
    ):
        _merge(paths, path, _metadata_operation(path, operation_id, what))
    for base, name, what in (
        (_SERIES, "Series", "a series (its middle instance)"),
        (_INSTANCE, "Instance", "an instance (its first frame)"),
        (_FRAMES, "Frame", "one frame"),
    ):
        _merge(
            paths,
            base + "/rendered",
            _rendered_operation(
                base + "/rendered", f"retrieveRendered{name}", f"Render {what}", thumbnail=False
            ),
        )
        _merge(
            paths,
            base + "/thumbnail",
            _rendered_operation(
                base + "/thumbnail", f"retrieve{name}Thumbnail", f"Thumbnail of {what}", thumbnail=True
            ),
        )
    # OHIF asks for a study's thumbnail when it has no series to show.
    _merge(
        paths,
        _STUDY + "/thumbnail",
        _rendered_operation(
            _STUDY + "/thumbnail", "retrieveStudyThumbnail", "Thumbnail of a study (its middle instance)",
            thumbnail=True,
        ),
    )
    _merge(paths, _INSTANCE + "/bulk/{tag}", _bulk_operation())
    _merge(paths, "/dicomweb/wado", _wado_uri_operation())
    _merge(
        paths, "/dicomweb/studies", _stow_operation("/dicomweb/studies", "storeInstances", "Store instances")
    )
    _merge(paths, _STUDY, _stow_operation(_STUDY, "storeStudyInstances", "Store instances of one study"))
    _merge(paths, _STUDY, _delete_operation(_STUDY, "deleteStudy", "a study"))
    _merge(paths, _SERIES, _delete_operation(_SERIES, "deleteSeries", "a series"))
    _merge(paths, _INSTANCE, _delete_operation(_INSTANCE, "deleteInstance", "an instance"))
    paths.update(_deid_paths())
    paths.update(_migration_paths())
    paths.update(_audit_paths())
    paths.update(_security_paths())
    paths.update(_peer_paths())
    paths.update(order_paths())
    paths.update(mpps_paths())
    paths.update(print_paths())
    paths.update(change_paths())
    paths.update(webhook_paths())
    paths.update(route_paths())
    paths.update(repair_paths())
    paths.update(trash_paths())
    paths.update(print_request_paths())
    paths.update(patient_paths())
    paths.update(reject_paths())
    paths.update(ui_paths())
    return paths


# ---------------------------------------------------------------- access control


def _security_operation(tag: str, operation_id: str, summary: str, ok: dict[str, Json], **extra: Any) -> Json:
    return {
        "tags": [tag],
        "operationId": operation_id,
        "summary": summary,
        **extra,
        "responses": {
            **ok,
            "400": _ref("responses", "BadRequest"),
            "401": _ref("responses", "Unauthorized"),
            "403": _ref("responses", "Forbidden"),
            "404": _ref("responses", "NotFound"),
        },
    }


def _json_ok(status: str, description: str, schema: Json) -> dict[str, Json]:
    return {status: {"description": description, "content": {"application/json": {"schema": schema}}}}


def _security_paths() -> Json:
    label = _path_param(
        "label", "A label: 1-64 letters, digits and . _ -.", "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    )
    name = _path_param("name", "A user or service name.")
    strings = {"type": "array", "items": {"type": "string"}}
    objects = {"type": "array", "items": {"type": "object"}}
    grant = {
        "type": "object",
        "required": ["principal", "role", "scope"],
        "properties": {
            "principal": {"type": "string"},
            "role": {"type": "string"},
            "scope": {
                "type": "string",
                "description": "archive, label:NAME, patient:ID, study:UID, project:NAME",
            },
        },
    }
    token = _json_ok("201", "The token, shown this once.", {"type": "object"})
    no_body = {"201": {"description": "Added."}, "204": {"description": "Done (nothing to add)."}}
    return {
        _STUDY + "/labels": {
            "get": _security_operation(
                "Labels",
                "listStudyLabels",
                "The labels of a study",
                _json_ok("200", "The labels.", strings),
                parameters=_uid_params("study"),
            )
        },
        _STUDY + "/labels/{label}": {
            "put": _security_operation(
                "Labels",
                "addStudyLabel",
                "Label a study (needs label)",
                no_body,
                parameters=[*_uid_params("study"), label],
            ),
            "delete": _security_operation(
                "Labels",
                "removeStudyLabel",
                "Remove a label from a study (needs label)",
                {"204": {"description": "Removed."}},
                parameters=[*_uid_params("study"), label],
            ),
        },
        "/dicomweb/labels": {
            "get": _security_operation(
                "Labels",
                "listLabels",
                "Labels in use and their number of studies",
                _json_ok("200", "The labels.", objects),
            )
        },
        "/users": {
            "get": _security_operation(
                "Access control",
                "listUsers",
                "Users and services with their grants (needs administer)",
                _json_ok("200", "The principals.", objects),
            ),
            "post": _security_operation(
                "Access control",
                "addUser",
                "Add a user with grants and a first token (needs administer)",
                token,
                requestBody=_json_body(
                    {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string"},
                            "kind": {"type": "string", "enum": ["user", "service"]},
                            "grants": {"type": "array", "items": {"type": "object"}},
                            "expires_days": {"type": "number"},
                        },
                    },
                    "The user, its grants ({role, scope}) and the lifetime of its token.",
                ),
            ),
        },
        "/users/{name}/tokens": {
            "get": _security_operation(
                "Access control",
                "listTokens",
                "A user's tokens (never the tokens themselves)",
                _json_ok("200", "The tokens.", objects),
                parameters=[name],
            ),
            "post": _security_operation(
                "Access control",
                "createToken",
                "A new token for a user",
                token,
                parameters=[name],
                requestBody={
                    "required": False,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
            ),
            "delete": _security_operation(
                "Access control",
                "revokeTokens",
                "Revoke a user's tokens (all, or ?token=ID)",
                _json_ok("200", "How many were revoked.", {"type": "object"}),
                parameters=[name, _query_param("token", {"type": "integer"}, "One token's id.")],
            ),
        },
        "/grants": {
            "get": _security_operation(
                "Access control",
                "listGrants",
                "Grants (?principal=)",
                _json_ok("200", "The grants.", objects),
                parameters=[_query_param("principal", {"type": "string"}, "Only this principal's.")],
            ),
            "post": _security_operation(
                "Access control",
                "addGrant",
                "Grant a role at a scope",
                {
                    **_json_ok("201", "Added.", {"type": "object"}),
                    **_json_ok("200", "Held already.", {"type": "object"}),
                },
                requestBody=_json_body(grant, "The grant."),
            ),
            "delete": _security_operation(
                "Access control",
                "removeGrant",
                "Remove a grant",
                _json_ok("200", "Removed.", {"type": "object"}),
                parameters=[
                    _query_param("principal", {"type": "string"}, "The principal.", required=True),
                    _query_param("role", {"type": "string"}, "The role.", required=True),
                    _query_param("scope", {"type": "string"}, "The scope.", required=True),
                ],
            ),
        },
        "/audit": {
            "get": _security_operation(
                "Access control",
                "listAuditEvents",
                "The audit log, newest first (needs administer)",
                _json_ok("200", "The events.", objects),
                parameters=[
                    _query_param("study", {"type": "string"}, "Events that touched this study."),
                    _query_param("principal", {"type": "string"}, "Events of this principal."),
                    _query_param("action", {"type": "string"}, "login, query, retrieve, store, delete..."),
                    _query_param("since", {"type": "string"}, "ISO 8601 time, inclusive."),
                    _query_param("until", {"type": "string"}, "ISO 8601 time, exclusive."),
                    _query_param("limit", {"type": "integer", "minimum": 1}, "At most this many."),
                ],
            )
        },
    }


# ---------------------------------------------------------------- de-identification


def _peer_paths() -> Json:
    """``/admin/peers``: the peer registry (docs/peers.md)."""
    roles = {
        "type": "array",
        "items": {
            "type": "string",
            "enum": [
                "store", "query", "retrieve", "move-destination", "migration-source", "migration-target",
            ],
        },
    }  # fmt: skip
    nullable = {"type": ["string", "null"]}
    peer = {
        "type": "object",
        "description": "A peer as the server shows it: never its credentials, only how they are held.",
        "properties": {
            "name": {"type": "string"},
            "ae_title": nullable,
            "host": nullable,
            "port": {"type": ["integer", "null"]},
            "tls": {"type": "boolean"},
            "dicomweb_url": nullable,
            "auth": {**nullable, "description": "bearer, basic or env:VARIABLE; null: none"},
            "folder": nullable,
            "principal": {"type": "string"},
            "tls_subject": nullable,
            "roles": roles,
            "migrate_via": {"type": ["string", "null"], "enum": ["dimse", "dicomweb", "folder", None]},
            "retrieve": {"type": "string"},
            "find_limit": {"type": "integer"},
            "description": {"type": "string"},
            "source": {"type": "string", "enum": ["index", "config"]},
            "created_at": nullable,
        },
    }
    body = {
        "type": "object",
        "description": "The peer's fields (all of them: a PUT replaces the peer). auth: "
        "env:VARIABLE, bearer:TOKEN or basic:USER:PASSWORD.",
        "properties": {
            "ae_title": {"type": "string", "maxLength": 16},
            "host": {"type": "string"},
            "port": {"type": ["integer", "null"], "minimum": 1, "maximum": 65535},
            "tls": {"type": "boolean"},
            "dicomweb_url": {"type": "string"},
            "auth": {"type": "string"},
            "folder": {"type": "string"},
            "principal": {"type": "string"},
            "tls_subject": {"type": "string"},
            "roles": roles,
            "migrate_via": {"type": ["string", "null"], "enum": ["dimse", "dicomweb", "folder", None]},
            "retrieve": {"type": "string", "enum": ["auto", "move", "get"]},
            "find_limit": {"type": "integer", "minimum": 0},
            "description": {"type": "string"},
        },
        "additionalProperties": False,
    }
    name = _path_param("name", "The peer's name (for a DICOM peer usually its AE title).")
    name_schema = {"type": "string"}
    conflict = {"409": _error("Defined in the configuration file (read-only), or its AE title is taken.")}
    return {
        "/admin/peers": {
            "get": _security_operation(
                "Admin", "listPeers", "Every peer, from the index and the configuration file",
                _json_ok("200", "The peers.", {"type": "array", "items": peer}),
            ),
        },
        "/admin/peers/{name}": {
            "get": _security_operation(
                "Admin", "getPeer", "One peer", _json_ok("200", "The peer.", peer), parameters=[name]
            ),
            "put": _security_operation(
                "Admin", "putPeer", "Register a peer, or replace all of its fields",
                {**_json_ok("201", "Registered.", peer), **_json_ok("200", "Replaced.", peer), **conflict},
                parameters=[name], requestBody=_json_body(body, "The peer's fields."),
            ),
            "delete": _security_operation(
                "Admin", "removePeer", "Remove a peer (and its migration inventory and jobs)",
                {
                    **_json_ok("200", "Removed.", {"type": "object", "properties": {"removed": name_schema}}),
                    **conflict,
                },
                parameters=[name],
            ),
        },
    }  # fmt: skip


def _json_body(schema: Json, description: str) -> Json:
    return {"required": True, "description": description, "content": {"application/json": {"schema": schema}}}


def _deid_operation(operation_id: str, summary: str, ok: str, ok_schema: Json, **extra: Any) -> Json:
    return {
        "tags": ["De-identification"],
        "operationId": operation_id,
        "summary": summary,
        "security": [{"bearerToken": []}],
        **extra,
        "responses": {
            ok: {"description": summary + ".", "content": {"application/json": {"schema": ok_schema}}},
            "400": _ref("responses", "BadRequest"),
            "401": _error("No token, or an unknown or revoked one."),
            "403": _error("The token's principal has no grant for this on the project."),
            "404": _error("Unknown run, instance, study or project."),
            "409": _error("The de-identification secret is not the one the project was created with."),
        },
    }


def _audit_paths() -> Json:
    text = {"type": "string"}
    return {
        "/audit/export": {
            "get": {
                "tags": ["Admin"],
                "operationId": "exportAuditLog",
                "summary": "The audit log as DICOM audit messages (PS3.15 A.5) or JSON lines, oldest first "
                "(with access control on: a token of a principal with the administer right)",
                "parameters": [
                    _query_param(
                        "format",
                        {"type": "string", "enum": ["jsonl", "dicom-xml"], "default": "jsonl"},
                        "jsonl: one JSON object per line; dicom-xml: one AuditMessage document per line.",
                    ),
                    _query_param("study", text, "Only events about this Study Instance UID."),
                    _query_param("principal", text, "Only events of this principal."),
                    _query_param("since", text, "Only events from this ISO 8601 time on (UTC if no zone)."),
                    _query_param("until", text, "Only events before this ISO 8601 time."),
                    _query_param(
                        "limit", {"type": "integer", "minimum": 1}, "The newest N events (default 10000)."
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "The events, one per line.",
                        "content": _binary("application/x-ndjson", "application/xml"),
                    },
                    "400": _ref("responses", "BadRequest"),
                    "401": _error("Access control is on and no valid token was given."),
                    "403": _error("The token's principal may not read the audit log."),
                },
            }
        }
    }


def _deid_paths() -> Json:
    words = {
        "type": "array",
        "items": {"type": "string"},
        "description": "Profile options, e.g. retain-uids.",
    }
    run = _ref("schemas", "DeidRun")
    return {
        "/deid/jobs": {
            "post": _deid_operation(
                "startDeidRun",
                "De-identify a stored study or series into a new linked study (needs deidentifier)",
                "202",
                run,
                requestBody=_json_body(
                    {
                        "type": "object",
                        "required": ["project", "reason"],
                        "properties": {
                            "project": {"type": "string"},
                            "study": {"type": "string"},
                            "series": {"type": "string"},
                            "reason": {"type": "string"},
                            "options": words,
                            "burned_in": {"type": "string", "enum": ["refuse", "mask", "allow"]},
                            "mask": {
                                "type": "array",
                                "items": {"type": "array", "items": {"type": "integer"}},
                                "description": "[x, y, width, height] regions blanked under burned_in mask.",
                            },
                        },
                    },
                    "The run: project, source study (or series), reason, options.",
                ),
            ),
            "get": _deid_operation(
                "listDeidRuns", "De-identification runs, newest first", "200", {"type": "array", "items": run}
            ),
        },
        "/deid/jobs/{id}": {
            "get": _deid_operation(
                "getDeidRun",
                "One run with its per-instance outcomes",
                "200",
                run,
                parameters=[_path_param("id", "Run id.", "^[0-9]+$")],
            )
        },
        "/deid/preview": {
            "post": _deid_operation(
                "previewDeidentification",
                "Dry run on one stored instance: what each attribute would become (needs deidentifier)",
                "200",
                {"type": "object"},
                requestBody=_json_body(
                    {
                        "type": "object",
                        "required": ["project", "instance"],
                        "properties": {
                            "project": {"type": "string"},
                            "instance": {"type": "string"},
                            "options": words,
                        },
                    },
                    "The project, the SOP Instance UID and the options.",
                ),
            )
        },
        "/deid/projects/{project}/reidentify": {
            "post": _deid_operation(
                "reidentify",
                "The originals behind replacement values (needs reidentifier; every attempt is audited)",
                "200",
                {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "object"}}},
                parameters=[_path_param("project", "Project name.")],
                requestBody=_json_body(
                    {
                        "type": "object",
                        "required": ["values"],
                        "properties": {"values": {"type": "array", "items": {"type": "string"}}},
                    },
                    "Replacement values (UIDs, pseudonyms).",
                ),
            )
        },
    }


def _migration_paths() -> Json:
    job = {
        "application/json": {"schema": {"type": "object", "description": "A migration job and its progress"}}
    }
    job_id = _path_param("job_id", "The job's id.", "^[0-9]+$")

    def on_job(operation_id: str, summary: str, method: str) -> Json:
        return {
            method: {
                "tags": ["Migration"],
                "operationId": operation_id,
                "summary": summary,
                "parameters": [job_id],
                "responses": {
                    "200": {"description": "The job.", "content": job},
                    "400": _ref("responses", "BadRequest"),
                    "404": _error("No such job."),
                    "409": _error("The job is not in a state that allows this."),
                },
            }
        }

    return {
        "/migrations": {
            "post": {
                "tags": ["Migration"],
                "operationId": "createMigration",
                "summary": "Queue a migration from a remote archive (run by the server's background worker)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["remote"],
                                "properties": {
                                    "remote": {"type": "string"},
                                    "since": {"type": "string", "pattern": "^[0-9]{8}$"},
                                    "until": {"type": "string", "pattern": "^[0-9]{8}$"},
                                    "modality": {"type": "string"},
                                    "patients": {"type": "array", "items": {"type": "string"}},
                                    "parallel": {"type": "integer", "minimum": 1, "maximum": 32},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": {"description": "The queued job.", "content": job},
                    "400": _ref("responses", "BadRequest"),
                    "404": _error("No remote archive of that name."),
                    "409": _error("A migration from that remote is unfinished."),
                },
            },
            "get": {
                "tags": ["Migration"],
                "operationId": "listMigrations",
                "summary": "Migration jobs, newest first, with their progress",
                "responses": {
                    "200": {
                        "description": "The jobs.",
                        "content": {
                            "application/json": {"schema": {"type": "array", "items": {"type": "object"}}}
                        },
                    }
                },
            },
        },
        "/migrations/{job_id}": on_job("getMigration", "A migration job and its progress", "get"),
        "/migrations/{job_id}/stop": on_job("stopMigration", "Stop a job (resumable)", "post"),
        "/migrations/{job_id}/resume": on_job(
            "resumeMigration", "Queue a stopped or failed job again", "post"
        ),
    }


def openapi_document() -> Json:
    """The OpenAPI 3.1 document (a fresh dict on every call)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "dicomhub",
            "version": __version__,
            "description": (
                "DICOMweb (PS3.18) routes of dicomhub that are not multipart: QIDO-RS, WADO-RS "
                "metadata, rendered images and bulk data, WADO-URI, delete, and the STOW-RS "
                "response. The multipart retrieve routes (studies, series, instances, frames) "
                "are not described."
            ),
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "Server"},
            {"name": "QIDO-RS", "description": "Search (PS3.18 10.6)"},
            {"name": "WADO-RS", "description": "Retrieve (PS3.18 10.4)"},
            {"name": "WADO-URI", "description": "URI retrieve (PS3.18 9)"},
            {"name": "STOW-RS", "description": "Store (PS3.18 10.5)"},
            {"name": "Delete", "description": "Delete (dcm4chee/Orthanc dialect)"},
            {"name": "Admin", "description": "Operations: codecs, decode check"},
            {"name": "De-identification", "description": "Runs, dry runs, re-identification"},
            {"name": "Migration", "description": "Migration jobs from remote archives"},
            {"name": "Labels", "description": "Study labels (grants can name them)"},
            {"name": "Access control", "description": "Users, tokens, grants and the audit log"},
            {"name": "Orders", "description": "Orders and patients of record (docs/orders.md)"},
            {"name": "FHIR", "description": "FHIR R4 Patient and ServiceRequest (JSON)"},
            {"name": "Printing", "description": "Print jobs of the Print SCP (docs/printing.md)"},
            {"name": "UI", "description": "The web UI's pages (docs/ui.md)"},
            {
                "name": "Trash",
                "description": "Deleted studies kept for trash_keep (docs/trash-and-retention.md)",
            },
        ],
        # With access control on (serve --auth) every route but /healthz and this
        # document needs a bearer token; without it, none does.
        "security": [{}, {"bearerToken": []}],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "parameters": _parameters(),
            "headers": _headers(),
            "responses": _common_responses(),
            "securitySchemes": {
                "bearerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token (`dicomhub user add`, `dicomhub user token`) or, with "
                    "OpenID Connect configured, a JWT of the issuer.",
                }
            },
        },
    }


def openapi_endpoint(_request: Request) -> JSONResponse:
    """``GET /openapi.json``."""
    return JSONResponse(openapi_document())
