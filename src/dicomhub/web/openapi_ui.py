"""The OpenAPI description of the web UI's routes (merged into
:func:`dicomhub.web.openapi.openapi_document`).

The pages are HTML shells, public like ``/healthz``: they carry no archive data,
and their scripts call the DICOMweb routes with the caller's token. The static
assets under ``/ui/static`` are files, not operations, and are not described.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ui_paths"]

Json = dict[str, Any]

_HTML = {"text/html": {"schema": {"type": "string"}}}
_ERROR: Json = {"$ref": "#/components/schemas/Error"}


def _uid(name: str, what: str) -> Json:
    return {"name": name, "in": "path", "required": True, "description": what, "schema": {"type": "string"}}


def _page(operation_id: str, summary: str, *parameters: Json) -> Json:
    responses: Json = {"200": {"description": "The page (HTML; its script asks DICOMweb).", "content": _HTML}}
    if parameters:
        responses["400"] = {
            "description": "A malformed UID in the path.",
            "content": {"application/json": {"schema": _ERROR}},
        }
    operation: Json = {
        "tags": ["UI"],
        "operationId": operation_id,
        "summary": summary,
        "responses": responses,
    }
    if parameters:
        operation["parameters"] = list(parameters)
    return {"get": operation}


def ui_paths() -> Json:
    study = _uid("study", "Study Instance UID.")
    series = _uid("series", "Series Instance UID.")
    return {
        "/": _page("uiFindStudies", "The web UI: find studies"),
        "/ui/studies/{study}": _page("uiStudy", "The web UI: one study (series, labels, headers)", study),
        "/ui/studies/{study}/series/{series}/viewer": _page(
            "uiViewer", "The web UI: the viewer of one series", study, series
        ),
        "/ui/dictionary.json": {
            "get": {
                "tags": ["UI"],
                "operationId": "uiDictionary",
                "summary": "The DICOM data dictionary the UI's tag tree names attributes with",
                "responses": {
                    "200": {
                        "description": "Tag (8 hex digits) -> [keyword, name].",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": {
                                        "type": "array",
                                        "items": {"type": "string"},
                                        "minItems": 2,
                                        "maxItems": 2,
                                    },
                                }
                            }
                        },
                    }
                },
            }
        },
        "/api/studies/{study}/findings": _study_findings(study),
        "/ui/studies/{study}/viewer": _page(
            "uiStudyViewer", "The web UI: one study laid out by a hanging protocol", study
        ),
        "/api/studies/{study}/hanging": _hanging(study),
        "/ui/patients": _page("uiPatients", "The web UI: find patients"),
        **_login_paths(),
    }


def _login_paths() -> Json:
    """Log-in through the OpenID Connect provider (web/ui/login.py)."""
    not_configured = {
        "description": "Log-in through OpenID Connect is not configured (oidc_ui_client_id).",
        "content": {"application/json": {"schema": _ERROR}},
    }
    failed = {"description": "The log-in failed: a page saying why.", "content": _HTML}

    def operation(operation_id: str, summary: str, responses: Json, *query: str) -> Json:
        op: Json = {"tags": ["UI"], "operationId": operation_id, "summary": summary, "responses": responses}
        if query:
            op["parameters"] = [
                {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                for name in query
            ]
        return {"get": op}

    return {
        "/ui/login/options": operation(
            "uiLoginOptions",
            "What the log-in form offers besides a token: the OpenID Connect provider, if any",
            {
                "200": {
                    "description": "oidc: null when not configured.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["oidc"],
                                "properties": {
                                    "oidc": {
                                        "type": ["object", "null"],
                                        "required": ["name", "url"],
                                        "properties": {"name": {"type": "string"}, "url": {"type": "string"}},
                                    }
                                },
                            }
                        }
                    },
                }
            },
        ),
        "/ui/login/oidc": operation(
            "uiLoginOidc",
            "Start a log-in through the OpenID Connect provider (authorization code flow with PKCE)",
            {
                "302": {"description": "To the provider's authorization endpoint (sets the state cookie)."},
                "404": not_configured,
                "502": {**failed, "description": "The provider's discovery document cannot be read."},
            },
        ),
        "/ui/login/callback": operation(
            "uiLoginCallback",
            "Where the provider sends the browser back: the code is exchanged and the token checked",
            {
                "200": {"description": "A page whose script keeps the access token.", "content": _HTML},
                "400": failed,
                "404": not_configured,
            },
            "code",
            "state",
            "error",
            "error_description",
        ),
    }


def _hanging(study: Json) -> Json:
    display = {
        "type": ["object", "null"],
        "description": "What hangs in the viewport (null: empty): a series, or one image of it.",
        "properties": {
            "study": {"type": "string"},
            "series": {"type": "string"},
            "instance": {"type": ["string", "null"]},
            "modality": {"type": "string"},
            "description": {"type": "string"},
            "laterality": {"type": "string"},
            "view": {"type": "string"},
            "images": {"type": "integer"},
            "prior": {"type": "boolean"},
        },
    }
    return {
        "get": {
            "tags": ["UI"],
            "operationId": "studyHanging",
            "summary": "The hanging protocol for one study and what goes into each viewport",
            "description": "Built from the caller's own searches: 404 for a study the caller may not query.",
            "parameters": [study],
            "responses": {
                "200": {
                    "description": "The protocol's name, its grid and the viewports row by row.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["protocol", "rows", "columns", "viewports"],
                                "properties": {
                                    "protocol": {"type": "string"},
                                    "rows": {"type": "integer", "minimum": 1},
                                    "columns": {"type": "integer", "minimum": 1},
                                    "viewports": {"type": "array", "items": display},
                                },
                            }
                        }
                    },
                },
                "400": {
                    "description": "A malformed UID.",
                    "content": {"application/json": {"schema": _ERROR}},
                },
                "404": {
                    "description": "No such study, or not one the caller may query.",
                    "content": {"application/json": {"schema": _ERROR}},
                },
            },
        }
    }


def _study_findings(study: Json) -> Json:
    return {
        "get": {
            "tags": ["UI"],
            "operationId": "studyFindings",
            "summary": "The validation findings and decode failures of one study (its page shows them)",
            "description": "For whoever may query the study; 404 for everyone else.",
            "parameters": [study],
            "responses": {
                "200": {
                    "description": "`validation`: IOD findings (as /admin/validation); "
                    "`decode_failures`: instances whose pixel data did not decode.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["validation", "decode_failures"],
                                "properties": {
                                    "validation": {"type": "array", "items": {"type": "object"}},
                                    "decode_failures": {"type": "array", "items": {"type": "object"}},
                                },
                            }
                        }
                    },
                },
                "400": {
                    "description": "A malformed UID.",
                    "content": {"application/json": {"schema": _ERROR}},
                },
                "404": {
                    "description": "No such study, or not one the caller may query.",
                    "content": {"application/json": {"schema": _ERROR}},
                },
            },
        }
    }
