"""The OpenAPI description of the administrative routes: users, tokens, grants and
labels (access control), peers, the audit log, de-identification runs and migration
jobs; merged into :func:`dicomhub.web.openapi.openapi_document`."""

from __future__ import annotations

from typing import Any

from dicomhub.web.openapi_blocks import (
    STUDY,
    Json,
    binary,
    error,
    path_param,
    query_param,
    ref,
    uid_params,
)

__all__ = ["admin_paths"]


def admin_paths() -> Json:
    """The path items of the administrative routes."""
    paths: Json = {}
    for part in (_deid_paths(), _migration_paths(), _audit_paths(), _security_paths(), _peer_paths()):
        paths.update(part)
    return paths


def _security_operation(tag: str, operation_id: str, summary: str, ok: dict[str, Json], **extra: Any) -> Json:
    return {
        "tags": [tag],
        "operationId": operation_id,
        "summary": summary,
        **extra,
        "responses": {
            **ok,
            "400": ref("responses", "BadRequest"),
            "401": ref("responses", "Unauthorized"),
            "403": ref("responses", "Forbidden"),
            "404": ref("responses", "NotFound"),
        },
    }


def _json_ok(status: str, description: str, schema: Json) -> dict[str, Json]:
    return {status: {"description": description, "content": {"application/json": {"schema": schema}}}}


def _security_paths() -> Json:
    label = path_param(
        "label", "A label: 1-64 letters, digits and . _ -.", "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    )
    name = path_param("name", "A user or service name.")
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
        STUDY + "/labels": {
            "get": _security_operation(
                "Labels",
                "listStudyLabels",
                "The labels of a study",
                _json_ok("200", "The labels.", strings),
                parameters=uid_params("study"),
            )
        },
        STUDY + "/labels/{label}": {
            "put": _security_operation(
                "Labels",
                "addStudyLabel",
                "Label a study (needs label)",
                no_body,
                parameters=[*uid_params("study"), label],
            ),
            "delete": _security_operation(
                "Labels",
                "removeStudyLabel",
                "Remove a label from a study (needs label)",
                {"204": {"description": "Removed."}},
                parameters=[*uid_params("study"), label],
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
                parameters=[name, query_param("token", {"type": "integer"}, "One token's id.")],
            ),
        },
        "/grants": {
            "get": _security_operation(
                "Access control",
                "listGrants",
                "Grants (?principal=)",
                _json_ok("200", "The grants.", objects),
                parameters=[query_param("principal", {"type": "string"}, "Only this principal's.")],
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
                    query_param("principal", {"type": "string"}, "The principal.", required=True),
                    query_param("role", {"type": "string"}, "The role.", required=True),
                    query_param("scope", {"type": "string"}, "The scope.", required=True),
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
                    query_param("study", {"type": "string"}, "Events that touched this study."),
                    query_param("principal", {"type": "string"}, "Events of this principal."),
                    query_param("action", {"type": "string"}, "login, query, retrieve, store, delete..."),
                    query_param("since", {"type": "string"}, "ISO 8601 time, inclusive."),
                    query_param("until", {"type": "string"}, "ISO 8601 time, exclusive."),
                    query_param("limit", {"type": "integer", "minimum": 1}, "At most this many."),
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
    name = path_param("name", "The peer's name (for a DICOM peer usually its AE title).")
    name_schema = {"type": "string"}
    conflict = {"409": error("Defined in the configuration file (read-only), or its AE title is taken.")}
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
            "400": ref("responses", "BadRequest"),
            "401": error("No token, or an unknown or revoked one."),
            "403": error("The token's principal has no grant for this on the project."),
            "404": error("Unknown run, instance, study or project."),
            "409": error("The de-identification secret is not the one the project was created with."),
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
                    query_param(
                        "format",
                        {"type": "string", "enum": ["jsonl", "dicom-xml"], "default": "jsonl"},
                        "jsonl: one JSON object per line; dicom-xml: one AuditMessage document per line.",
                    ),
                    query_param("study", text, "Only events about this Study Instance UID."),
                    query_param("principal", text, "Only events of this principal."),
                    query_param("since", text, "Only events from this ISO 8601 time on (UTC if no zone)."),
                    query_param("until", text, "Only events before this ISO 8601 time."),
                    query_param(
                        "limit", {"type": "integer", "minimum": 1}, "The newest N events (default 10000)."
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "The events, one per line.",
                        "content": binary("application/x-ndjson", "application/xml"),
                    },
                    "400": ref("responses", "BadRequest"),
                    "401": error("Access control is on and no valid token was given."),
                    "403": error("The token's principal may not read the audit log."),
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
    run = ref("schemas", "DeidRun")
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
                parameters=[path_param("id", "Run id.", "^[0-9]+$")],
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
                parameters=[path_param("project", "Project name.")],
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
    job_id = path_param("job_id", "The job's id.", "^[0-9]+$")

    def on_job(operation_id: str, summary: str, method: str) -> Json:
        return {
            method: {
                "tags": ["Migration"],
                "operationId": operation_id,
                "summary": summary,
                "parameters": [job_id],
                "responses": {
                    "200": {"description": "The job.", "content": job},
                    "400": ref("responses", "BadRequest"),
                    "404": error("No such job."),
                    "409": error("The job is not in a state that allows this."),
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
                    "400": ref("responses", "BadRequest"),
                    "404": error("No remote archive of that name."),
                    "409": error("A migration from that remote is unfinished."),
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
