"""``/api/studies/{study}/...``: a study as a ZIP, and sending it to a peer.

``GET /api/studies/{study}/archive.zip`` streams the study's Part 10 files as a ZIP
(``?dicomdir=true``: a PS3.10 file-set with its DICOMDIR), see
:mod:`dicomhub.services.studyzip`. It finds the instances exactly as WADO-RS
retrieve does, with the caller's access (a study the caller may not see is not
found, 404) and one RETRIEVE audit record.

``POST /api/studies/{study}/send`` with ``{"to": PEER}`` queues the study for a
peer on the routing service's durable outbound queue (C-STORE or STOW-RS, retried,
listed under ``/admin/routes/queue`` as route ``(send)``) and answers 202;
``GET /api/studies/{study}/send`` gives the peers one may send to and the state of
the study's sends, which the UI polls. Both need the EXPORT right on the study
(404 for a study the caller may not see at all, 403 when it may see but not
export it); the queueing is audited as an EXPORT.

``GET /api/rights`` and ``GET /api/studies/{study}/rights`` tell the UI which
actions to offer (store; retrieve, export, delete on a study, and whether a delete
goes to the trash). They only hide buttons: each action's own route decides.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from dicomhub.errors import DicomhubError, InvalidRequest
from dicomhub.model.access import Action
from dicomhub.model.audit import AuditAction, AuditedStudy
from dicomhub.model.caller import Caller
from dicomhub.model.identifiers import is_valid_uid
from dicomhub.model.records import InstanceRow
from dicomhub.services.access import Forbidden
from dicomhub.services.archive import Archive
from dicomhub.services.studyzip import study_zip
from dicomhub.web.auth import audit, audit_after_response, caller_of, outcome_of
from dicomhub.web.errors import json_object

__all__ = ["routes", "study_action_paths"]

_NO_STORE = {"Cache-Control": "no-store"}
_MAX_BODY = 4096


def _study(request: Request) -> str:
    value = str(request.path_params["study"])
    if not is_valid_uid(value):
        raise InvalidRequest("the Study Instance UID must be a UID (up to 64 digits and dots)")
    return value


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").strip().lower()
    if value not in ("true", "false"):
        raise InvalidRequest(f"{name} must be true or false, not {value!r}")
    return value == "true"


def routes(archive: Archive) -> list[BaseRoute]:
    """The routes, under ``/api``."""

    def visible(request: Request, caller: Caller, study: str, action: AuditAction) -> list[InstanceRow]:
        """The study's instances the caller may retrieve (NotFound if none), audited."""
        detail = {"path": request.url.path[:256]}
        try:
            rows = archive.wado.instances(caller, study)
        except DicomhubError as exc:
            refused = [AuditedStudy(study)]
            audit_after_response(request, archive, caller, action, outcome_of(exc), refused, detail)
            raise
        series = tuple(dict.fromkeys(r.series_instance_uid for r in rows))
        audited = [AuditedStudy(study, "", series, len(rows))]
        audit_after_response(request, archive, caller, action, outcome_of(None), audited, detail)
        return rows

    def archive_zip(request: Request) -> Response:
        study = _study(request)
        dicomdir = _flag(request, "dicomdir")
        rows = visible(request, caller_of(request), study, AuditAction.RETRIEVE)
        name = f"{study}{'-dicomdir' if dicomdir else ''}.zip"
        return StreamingResponse(
            study_zip(archive.wado, rows).prepare(dicomdir),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{name}"', **_NO_STORE},
        )

    def may_export(caller: Caller, study: str) -> None:
        # Seen at all (else 404, as everywhere), then exportable (else 403).
        archive.wado.instances(caller, study)
        if not archive.access.permits_study(caller.access, Action.EXPORT, study):
            raise Forbidden(f"{caller.who} may not send study {study} elsewhere")

    def peers() -> list[dict[str, Any]]:
        return [
            {"name": p.name, "description": p.description}
            for p in archive.peers.list()
            if p.dicomweb_url or (p.host and p.port)
        ]

    def send_state(request: Request) -> JSONResponse:
        study = _study(request)
        may_export(caller_of(request), study)
        body = {"study_instance_uid": study, "peers": peers(), "sends": archive.routing.sends(study)}
        return JSONResponse(body, headers=_NO_STORE)

    async def send(request: Request) -> JSONResponse:
        study = _study(request)
        body = await json_object(request, _MAX_BODY)
        to = body.get("to")
        if not isinstance(to, str) or not to:
            raise InvalidRequest('the body must be {"to": "PEER NAME"}')
        caller = caller_of(request)

        def queue() -> dict[str, Any]:
            detail = {"destination": to[:64], "path": request.url.path[:256]}
            try:
                may_export(caller, study)
                queued = archive.routing.send_study(study, to)
            except DicomhubError as exc:
                audit(archive, caller, AuditAction.EXPORT, outcome_of(exc), [AuditedStudy(study)], detail)
                raise
            audit(archive, caller, AuditAction.EXPORT, outcome_of(None), [AuditedStudy(study)], detail)
            return queued

        queued = await run_in_threadpool(queue)
        location = f"/api/studies/{study}/send"
        return JSONResponse({**queued, "status": location}, status_code=202, headers={"Location": location})

    def rights(request: Request) -> JSONResponse:
        caller = caller_of(request)
        body = {"principal": caller.principal, "store": caller.access.may(Action.STORE)}
        return JSONResponse(body, headers=_NO_STORE)

    def study_rights(request: Request) -> JSONResponse:
        study = _study(request)
        caller = caller_of(request)
        archive.wado.instances(caller, study)  # 404 for a study the caller may not see

        def may(action: Action) -> bool:
            return archive.access.permits_study(caller.access, action, study)

        trash = archive.delete.trash is not None
        body = {
            "study_instance_uid": study,
            "retrieve": may(Action.RETRIEVE),
            "export": may(Action.EXPORT),
            "delete": may(Action.DELETE),
            "trash_keep": archive.trash.keep if trash else 0,
        }
        return JSONResponse(body, headers=_NO_STORE)

    return [
        Route("/rights", rights, methods=["GET"]),
        Route("/studies/{study}/rights", study_rights, methods=["GET"]),
        Route("/studies/{study}/archive.zip", archive_zip, methods=["GET"]),
        Route("/studies/{study}/send", send_state, methods=["GET"]),
        Route("/studies/{study}/send", send, methods=["POST"]),
    ]


# ---------------------------------------------------------------- OpenAPI

_ERROR = {"$ref": "#/components/schemas/Error"}
_STUDY = {
    "name": "study",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The Study Instance UID.",
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def study_action_paths() -> dict[str, Any]:
    """The OpenAPI path items of the study ZIP and sends."""
    sends = {
        "type": "object",
        "properties": {
            "study_instance_uid": {"type": "string"},
            "peers": {
                "type": "array",
                "items": {"type": "object", "properties": {"name": {"type": "string"}}},
                "description": "The peers with a DIMSE address or DICOMweb URL.",
            },
            "sends": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "to": {"type": "string"},
                        "queued": {"type": "integer"},
                        "sent": {"type": "integer"},
                        "dead": {"type": "integer"},
                        "skipped": {"type": "integer"},
                        "last_error": {"type": "string"},
                        "updated_at": {"type": "string", "format": "date-time"},
                    },
                },
            },
        },
    }
    flag = {"type": "boolean"}
    return {
        "/api/rights": {
            "get": {
                "tags": ["UI"],
                "operationId": "callerRights",
                "summary": "Whether the caller may store at all (the UI shows its upload to those who may).",
                "responses": {
                    "200": {
                        "description": "The caller's study-blind rights.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"principal": {"type": ["string", "null"]}, "store": flag},
                                }
                            }
                        },
                    }
                },
            }
        },
        "/api/studies/{study}/rights": {
            "get": {
                "tags": ["UI"],
                "operationId": "studyRights",
                "summary": "What the caller may do with a study (the UI shows those buttons only).",
                "parameters": [_STUDY],
                "responses": {
                    "200": {
                        "description": "The rights, and the trash's keep time in seconds (0: no trash).",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "study_instance_uid": {"type": "string"},
                                        "retrieve": flag,
                                        "export": flag,
                                        "delete": flag,
                                        "trash_keep": {"type": "number"},
                                    },
                                }
                            }
                        },
                    },
                    "400": _error("Not a UID."),
                    "404": _error("No such study, or one the caller may not see."),
                },
            }
        },
        "/api/studies/{study}/archive.zip": {
            "get": {
                "tags": ["UI"],
                "operationId": "downloadStudyZip",
                "summary": "The study's Part 10 files as a streamed ZIP (entries stored, as kept).",
                "parameters": [
                    _STUDY,
                    {
                        "name": "dicomdir",
                        "in": "query",
                        "schema": {"type": "boolean", "default": False},
                        "description": "Name the files per PS3.10 (PT/ST/SE/IM folders) and add a DICOMDIR.",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The ZIP.",
                        "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "400": _error("Not a UID, or a bad dicomdir value."),
                    "401": _error("No valid credentials."),
                    "404": _error("No such study, or one the caller may not retrieve."),
                    "409": _error("With dicomdir: the study cannot be written as a PS3.10 file-set."),
                },
            }
        },
        "/api/studies/{study}/send": {
            "get": {
                "tags": ["UI"],
                "operationId": "studySends",
                "summary": "The peers one may send the study to, and the state of its sends.",
                "parameters": [_STUDY],
                "responses": {
                    "200": {
                        "description": "Peers and sends.",
                        "content": {"application/json": {"schema": sends}},
                    },
                    "403": _error("The caller may see the study but not export it."),
                    "404": _error("No such study, or one the caller may not see."),
                },
            },
            "post": {
                "tags": ["UI"],
                "operationId": "sendStudy",
                "summary": "Queue the study for a peer (C-STORE or STOW-RS through the routing queue).",
                "parameters": [_STUDY],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["to"],
                                "properties": {"to": {"type": "string", "description": "A peer name."}},
                            }
                        }
                    },
                },
                "responses": {
                    "202": {"description": "Queued; poll the Location for the outcome."},
                    "400": _error("No such peer, a peer with no address, or a bad body."),
                    "403": _error("The caller may see the study but not export it."),
                    "404": _error("No such study, or one the caller may not see."),
                },
            },
        },
    }
