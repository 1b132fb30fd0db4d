"""The OpenAPI operations of the DICOMweb routes (PS3.18): QIDO-RS searches, WADO-RS
metadata, rendered images and bulk data, WADO-URI, STOW-RS and delete; placed on
their paths by :func:`dicomhub.web.openapi.openapi_document`."""

from __future__ import annotations

from dicomhub.web.openapi_blocks import (
    DICOM_JSON,
    DICOM_XML,
    IMAGE_TYPES,
    OCTET_STREAM,
    SERIES,
    STUDY,
    Json,
    binary,
    error,
    path_param,
    query_param,
    ref,
    scope,
    uid_params,
)
from dicomhub.web.openapi_rejection import include_rejected_parameter

__all__ = [
    "QIDO_SEARCHES",
    "bulk_operation",
    "delete_operation",
    "metadata_operation",
    "qido_operation",
    "rendered_operation",
    "stow_operation",
    "wado_uri_operation",
]


QIDO_SEARCHES = (
    ("/dicomweb/studies", "searchStudies", "Search for studies"),
    ("/dicomweb/series", "searchSeries", "Search for series"),
    ("/dicomweb/instances", "searchInstances", "Search for instances"),
    (STUDY + "/series", "searchStudySeries", "Search for the series of a study"),
    (STUDY + "/instances", "searchStudyInstances", "Search for the instances of a study"),
    (SERIES + "/instances", "searchSeriesInstances", "Search for the instances of a series"),
    ("/dicomweb/patients", "searchPatients", "dicomhub extension: search for patients"),
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
        query_param(
            "limit",
            {"type": "integer", "minimum": 1},
            "Maximum number of results; larger values are capped to the server maximum "
            "(with a Warning header).",
        ),
        query_param("offset", {"type": "integer", "minimum": 0}, "Number of results to skip."),
        query_param(
            "fuzzymatching",
            {"type": "boolean"},
            "Fuzzy (case-insensitive, word) matching of person names.",
        ),
        include_rejected_parameter(),
        # dicomhub's extensions (not PS3.18).
        {
            "name": "label",
            "in": "query",
            "style": "form",
            "explode": True,
            "description": (
                "dicomhub extension: only studies carrying one of these labels (comma-separated "
                "or repeated); inside the caller's grants, never beyond them."
            ),
            "schema": {
                "type": "array",
                "items": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
            },
        },
        query_param(
            "orderby",
            {"type": "string", "pattern": "^[-+]?[A-Za-z]+(,[-+]?[A-Za-z]+)*$"},
            "dicomhub extension: sort the matches (across pages) by StudyDate, PatientName, "
            "PatientID or AccessionNumber, comma-separated, `-` for descending; any other key is "
            "refused (400).",
        ),
        query_param(
            "count",
            {"type": "boolean"},
            "dicomhub extension: `true` adds an X-Total-Count header, the number of matches "
            "regardless of limit and offset.",
        ),
    ]


_TOTAL_COUNT: Json = {
    "description": "With count=true: the number of matches regardless of limit and offset.",
    "schema": {"type": "integer", "minimum": 0},
}


_PATIENTS = (
    "dicomhub extension (PS3.18 has no patient-level QIDO-RS): the patient level of C-FIND "
    "with the matching of PS3.18 10.6, only patients with a study the caller may see, and "
    "NumberOfPatientRelatedStudies/Series/Instances counting only those studies. `label` "
    "filters studies and is refused here (400)."
)


def qido_operation(path: str, operation_id: str, summary: str) -> Json:
    return {
        "get": {
            "tags": ["QIDO-RS"],
            "operationId": operation_id,
            "summary": summary,
            "description": (_PATIENTS if path == "/dicomweb/patients" else "PS3.18 10.6.")
            + (
                ' The multipart/related; type="application/dicom+xml" '
                "representation is also offered (Accept header) but not described here."
            ),
            "parameters": [*uid_params(*scope(path)), *_qido_parameters()],
            "responses": {
                "200": {
                    "description": "The matches.",
                    "headers": {"Warning": ref("headers", "Warning"), "X-Total-Count": _TOTAL_COUNT},
                    "content": {DICOM_JSON: {"schema": ref("schemas", "DicomJsonArray")}},
                },
                "204": {
                    "description": "No match.",
                    "headers": {"Warning": ref("headers", "Warning"), "X-Total-Count": _TOTAL_COUNT},
                },
                "400": ref("responses", "BadRequest"),
                "406": ref("responses", "NotAcceptable"),
                "503": ref("responses", "Unavailable"),
            },
        }
    }


# ---------------------------------------------------------------- WADO-RS


def metadata_operation(path: str, operation_id: str, what: str) -> Json:
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
                *uid_params(*scope(path)),
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
                    "headers": {"ETag": ref("headers", "ETag")},
                    "content": {DICOM_JSON: {"schema": ref("schemas", "DicomJsonArray")}},
                },
                "304": {
                    "description": "Not modified (If-None-Match matched).",
                    "headers": {"ETag": ref("headers", "ETag")},
                },
                "400": ref("responses", "BadRequest"),
                "404": ref("responses", "NotFound"),
                "406": ref("responses", "NotAcceptable"),
                "503": ref("responses", "Unavailable"),
            },
        }
    }


def rendered_operation(path: str, operation_id: str, summary: str, *, thumbnail: bool) -> Json:
    params = [*uid_params(*scope(path))]
    if "{frames}" in path:
        params.append(ref("parameters", "Frame"))
    params += [
        ref("parameters", "window"),
        ref("parameters", "viewport"),
        ref("parameters", "quality"),
        ref("parameters", "AcceptRendered"),
    ]
    description = (
        "PS3.18 10.4.1.1.4. The first frame of an instance, or the middle instance of a series "
        "(or study). The `accept` query parameter, when given, replaces the Accept header."
    )
    if thumbnail:
        description += " Without a viewport the image fits in 128x128."
    image_types: tuple[str, ...] = IMAGE_TYPES
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
                "200": {"description": "The rendered image.", "content": binary(*image_types)},
                "400": ref("responses", "BadRequest"),
                "404": ref("responses", "NotFound"),
                "406": ref("responses", "NotAcceptable"),
                "503": ref("responses", "Unavailable"),
            },
        }
    }


def bulk_operation() -> Json:
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
                *uid_params("study", "series", "instance"),
                path_param(
                    "tag",
                    "The element's tag as 8 hex digits (top level, else the first nested one).",
                    "^[0-9A-Fa-f]{8}$",
                ),
                {
                    "name": "Accept",
                    "in": "header",
                    "required": True,
                    "description": "application/octet-stream for the single-part representation.",
                    "schema": {"type": "string", "const": OCTET_STREAM},
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
                    "content": binary(OCTET_STREAM),
                },
                "206": {
                    "description": "The requested byte range.",
                    "headers": {"Content-Range": range_header},
                    "content": binary(OCTET_STREAM),
                },
                "400": ref("responses", "BadRequest"),
                "404": ref("responses", "NotFound"),
                "406": ref("responses", "NotAcceptable"),
                "416": {
                    "description": "The range lies outside the value.",
                    "headers": {
                        "Content-Range": {"description": "`bytes */length`", "schema": {"type": "string"}}
                    },
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "503": ref("responses", "Unavailable"),
            },
        }
    }


def wado_uri_operation() -> Json:
    uid = {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)*$"}
    positive = {"type": "integer", "minimum": 1}
    return {
        "get": {
            "tags": ["WADO-URI"],
            "operationId": "wadoUri",
            "summary": "WADO-URI retrieve of one instance",
            "description": "PS3.18 9: the instance as application/dicom, or rendered.",
            "parameters": [
                query_param(
                    "requestType", {"type": "string", "const": "WADO"}, "Always WADO.", required=True
                ),
                query_param("studyUID", uid, "Study Instance UID", required=True),
                query_param("seriesUID", uid, "Series Instance UID", required=True),
                query_param("objectUID", uid, "SOP Instance UID", required=True),
                query_param(
                    "contentType",
                    {"type": "string"},
                    "application/dicom, image/jpeg (default) or image/png (comma-separated "
                    "preferences; image/* and */* give image/jpeg).",
                ),
                query_param(
                    "transferSyntax",
                    {"type": "string"},
                    "Transfer syntax UID of an application/dicom answer (default: as stored).",
                ),
                query_param("windowCenter", {"type": "number"}, "Window center (with windowWidth)."),
                query_param(
                    "windowWidth", {"type": "number", "minimum": 1}, "Window width (with windowCenter)."
                ),
                query_param("rows", positive, "Output height."),
                query_param("columns", positive, "Output width."),
                query_param("frameNumber", positive, "The frame to render (default 1)."),
                query_param(
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
                    "content": binary("application/dicom", *IMAGE_TYPES),
                },
                "400": ref("responses", "BadRequest"),
                "404": ref("responses", "NotFound"),
                "406": ref("responses", "NotAcceptable"),
                "503": ref("responses", "Unavailable"),
            },
        }
    }


# ---------------------------------------------------------------- STOW-RS and delete


def stow_operation(path: str, operation_id: str, summary: str) -> Json:
    store_response = {
        DICOM_JSON: {"schema": ref("schemas", "StoreResponse")},
        DICOM_XML: {"schema": {"type": "string", "description": "PS3.19 Native DICOM Model."}},
    }
    warning = {"Warning": ref("headers", "Warning")}
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
            "parameters": uid_params(*scope(path)),
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
                "400": ref("responses", "BadRequest"),
                "406": ref("responses", "NotAcceptable"),
                "409": {
                    "description": "No instance was stored (see FailedSOPSequence).",
                    "headers": warning,
                    "content": store_response,
                },
                "415": error("The body is not multipart/related of application/dicom parts."),
                "503": ref("responses", "Unavailable"),
            },
        }
    }


def delete_operation(path: str, operation_id: str, what: str) -> Json:
    return {
        "delete": {
            "tags": ["Delete"],
            "operationId": operation_id,
            "summary": f"Delete {what} and everything below it",
            "parameters": uid_params(*scope(path)),
            "responses": {
                "204": {"description": "Deleted."},
                "400": ref("responses", "BadRequest"),
                "404": ref("responses", "NotFound"),
                "503": ref("responses", "Unavailable"),
            },
        }
    }


# ---------------------------------------------------------------- document
