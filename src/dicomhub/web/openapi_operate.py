"""The OpenAPI description of what the web UI's admin pages added (merged into
:func:`dicomhub.web.openapi.openapi_document`): ``GET /api/me``, ``PATCH`` and the
verification of a peer, and the admin pages themselves."""

from __future__ import annotations

from typing import Any

from dicomhub.web.openapi_blocks import error, path_param, ref

__all__ = ["operate_paths"]

Json = dict[str, Any]

_HTML = {"text/html": {"schema": {"type": "string"}}}


def _json(description: str, schema: Json) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _outcome() -> Json:
    return {
        "type": "object",
        "required": ["ok", "status", "detail", "seconds"],
        "properties": {
            "ok": {"type": "boolean"},
            "status": {"type": "string", "description": "The C-ECHO-RSP Status (0xNNNN) or the HTTP status; "
                       "empty when the peer did not answer."},
            "detail": {"type": "string", "description": "What was tried and, on failure, why it failed."},
            "seconds": {"type": "number"},
        },
    }  # fmt: skip


def _admin_page(operation_id: str, summary: str) -> Json:
    return {
        "get": {
            "tags": ["UI"],
            "operationId": operation_id,
            "summary": summary,
            "responses": {
                "200": {"description": "The page (HTML; its script asks the admin API).", "content": _HTML}
            },
        }
    }


def operate_paths() -> Json:
    """Path items to merge, per path and method, into the document's paths."""
    name = path_param("name", "The peer's name.")
    me = {
        "type": "object",
        "required": ["name", "unrestricted", "administer", "grants"],
        "properties": {
            "name": {
                "type": ["string", "null"],
                "description": "The principal; null without access control.",
            },
            "unrestricted": {"type": "boolean", "description": "True without access control."},
            "administer": {"type": "boolean", "description": "Whether the administration API answers."},
            "grants": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"role": {"type": "string"}, "scope": {"type": "string"}},
                },
            },
        },
    }
    verification = {
        "type": "object",
        "required": ["peer", "ok"],
        "properties": {
            "peer": {"type": "string"},
            "ok": {"type": "boolean", "description": "Whether every probe succeeded."},
            "dimse": {**_outcome(), "description": "C-ECHO, for a peer with an AE title, host and port."},
            "dicomweb": {**_outcome(), "description": "QIDO-RS /studies?limit=1, for a peer with a URL."},
        },
    }
    refusals = {
        "401": ref("responses", "Unauthorized"),
        "403": ref("responses", "Forbidden"),
        "404": error("No such peer."),
    }
    return {
        "/api/me": {
            "get": {
                "tags": ["Admin"],
                "operationId": "whoAmI",
                "summary": "The caller: its name, its grants, and whether it may administer the archive",
                "responses": {"200": _json("The caller.", me), "401": ref("responses", "Unauthorized")},
            }
        },
        "/admin/peers/{name}": {
            "patch": {
                "tags": ["Admin"],
                "operationId": "updatePeer",
                "summary": "Change some fields of a registered peer (the others, credentials included, stay)",
                "parameters": [name],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "200": _json("The peer as changed.", {"type": "object"}),
                    "400": ref("responses", "BadRequest"),
                    **refusals,
                    "409": error("Defined in the configuration file (read-only), or its AE title is taken."),
                },
            }
        },
        "/admin/peers/{name}/echo": {
            "post": {
                "tags": ["Admin"],
                "operationId": "verifyPeer",
                "summary": "Verify a peer: C-ECHO over DIMSE and/or a one-study QIDO-RS over DICOMweb",
                "parameters": [name],
                "responses": {
                    "200": _json(
                        "What each probe found (a peer that did not answer is ok: false).", verification
                    ),
                    "400": error("The peer has neither a DIMSE address nor a DICOMweb URL."),
                    **refusals,
                    "503": error("Peer verification is not wired in this server."),
                },
            }
        },
        "/ui/admin": _admin_page("uiAdminHealth", "The web UI: server, storage and index health (admin)"),
        "/ui/admin/peers": _admin_page("uiAdminPeers", "The web UI: peers (admin)"),
        "/ui/admin/users": _admin_page("uiAdminUsers", "The web UI: users, tokens and grants (admin)"),
        "/ui/admin/jobs": _admin_page(
            "uiAdminJobs", "The web UI: de-identification, migration, print, routing (admin)"
        ),
        "/ui/admin/associations": _admin_page(
            "uiAdminAssociations", "The web UI: recent DIMSE associations (admin)"
        ),
    }
