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

from starlette.requests import Request
from starlette.responses import JSONResponse

from dicomhub import __version__
from dicomhub.web.changes import change_paths
from dicomhub.web.mpps import mpps_paths
from dicomhub.web.openapi_admin import admin_paths
from dicomhub.web.openapi_blocks import (
    FRAMES,
    INSTANCE,
    SERIES,
    STUDY,
    Json,
    error,
    path_param,
    query_param,
    ref,
)
from dicomhub.web.openapi_corrections import correction_paths
from dicomhub.web.openapi_dicomweb import (
    QIDO_SEARCHES,
    bulk_operation,
    delete_operation,
    metadata_operation,
    qido_operation,
    rendered_operation,
    stow_operation,
    wado_uri_operation,
)
from dicomhub.web.openapi_operate import operate_paths
from dicomhub.web.openapi_orders import order_paths
from dicomhub.web.openapi_patients import patient_paths
from dicomhub.web.openapi_rejection import reject_paths
from dicomhub.web.openapi_ui import ui_paths
from dicomhub.web.printclient import print_request_paths
from dicomhub.web.printing import print_paths
from dicomhub.web.repair import repair_paths
from dicomhub.web.routing import route_paths
from dicomhub.web.studyactions import study_action_paths
from dicomhub.web.trash import trash_paths
from dicomhub.web.webhooks import webhook_paths

__all__ = ["OPENAPI_VERSION", "openapi_document", "openapi_endpoint"]

OPENAPI_VERSION = "3.1.0"

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
            "additionalProperties": ref("schemas", "DicomAttribute"),
        },
        "DicomJsonArray": {
            "type": "array",
            "items": ref("schemas", "DicomJson"),
        },
        "StoreResponse": {
            "allOf": [ref("schemas", "DicomJson")],
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
        "StudyInstanceUID": path_param("study", "Study Instance UID", uid),
        "SeriesInstanceUID": path_param("series", "Series Instance UID", uid),
        "SOPInstanceUID": path_param("instance", "SOP Instance UID", uid),
        "Frame": path_param("frames", "One frame number (from 1).", "^[0-9]+$"),
        "window": query_param(
            "window",
            {"type": "string"},
            "VOI window `center,width[,function]` (PS3.18 8.3.5.1.4); "
            "the function is LINEAR (default), LINEAR_EXACT or SIGMOID. "
            "Default: the window stored in the instance, else the full range.",
        ),
        "viewport": query_param(
            "viewport",
            {"type": "string"},
            "`vw,vh` or `vw,vh,sx,sy,sw,sh` (PS3.18 8.3.5.1.3): output size "
            "(1-8192) and optional source region.",
        ),
        "quality": query_param(
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
        "BadRequest": error("Malformed UID, parameter or value."),
        "NotFound": error("The study, series, instance, frame or element is not held."),
        "NotAcceptable": error("None of the accepted media types can be produced."),
        "Unavailable": error("The index or the storage is unavailable."),
        "Unauthorized": error("Access control is on and the request has no valid token."),
        "Forbidden": error("The token's principal holds no grant for this."),
    }


# ---------------------------------------------------------------- QIDO-RS


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
                        "content": {"application/json": {"schema": ref("schemas", "Health")}},
                    },
                    "503": {
                        "description": "A part is unavailable.",
                        "content": {"application/json": {"schema": ref("schemas", "Health")}},
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
                    query_param(
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
                    "400": ref("responses", "BadRequest"),
                    "404": error("The server was started without a conformance statement."),
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
                                "schema": {"type": "array", "items": ref("schemas", schema)}
                            }
                        },
                    }
                },
            }
        }
    for path, operation_id, summary in QIDO_SEARCHES:
        _merge(paths, path, qido_operation(path, operation_id, summary))
    for path, operation_id, what in (
        (STUDY + "/metadata", "retrieveStudyMetadata", "a study"),
        (SERIES + "/metadata", "retrieveSeriesMetadata", "a series"),
        (INSTANCE + "/metadata", "retrieveInstanceMetadata", "an instance"),
    ):
        _merge(paths, path, metadata_operation(path, operation_id, what))
    for base, name, what in (
        (SERIES, "Series", "a series (its middle instance)"),
        (INSTANCE, "Instance", "an instance (its first frame)"),
        (FRAMES, "Frame", "one frame"),
    ):
        _merge(
            paths,
            base + "/rendered",
            rendered_operation(
                base + "/rendered", f"retrieveRendered{name}", f"Render {what}", thumbnail=False
            ),
        )
        _merge(
            paths,
            base + "/thumbnail",
            rendered_operation(
                base + "/thumbnail", f"retrieve{name}Thumbnail", f"Thumbnail of {what}", thumbnail=True
            ),
        )
    # OHIF asks for a study's thumbnail when it has no series to show.
    _merge(
        paths,
        STUDY + "/thumbnail",
        rendered_operation(
            STUDY + "/thumbnail", "retrieveStudyThumbnail", "Thumbnail of a study (its middle instance)",
            thumbnail=True,
        ),
    )
    _merge(paths, INSTANCE + "/bulk/{tag}", bulk_operation())
    _merge(paths, "/dicomweb/wado", wado_uri_operation())
    _merge(
        paths, "/dicomweb/studies", stow_operation("/dicomweb/studies", "storeInstances", "Store instances")
    )
    _merge(paths, STUDY, stow_operation(STUDY, "storeStudyInstances", "Store instances of one study"))
    _merge(paths, STUDY, delete_operation(STUDY, "deleteStudy", "a study"))
    _merge(paths, SERIES, delete_operation(SERIES, "deleteSeries", "a series"))
    _merge(paths, INSTANCE, delete_operation(INSTANCE, "deleteInstance", "an instance"))
    paths.update(admin_paths())
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
    paths.update(correction_paths())
    paths.update(reject_paths())
    paths.update(ui_paths())
    for path, operations in operate_paths().items():
        _merge(paths, path, operations)
    paths.update(study_action_paths())
    return paths


# ---------------------------------------------------------------- access control


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
            {"name": "Corrections", "description": "Modify, split, merge studies (docs/corrections.md)"},
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
