"""The HTTP side of access control: labels, users and tokens, grants, the audit log.

``/users``, ``/grants`` and ``/audit`` need ADMINISTER (checked by the
authentication middleware); labels need LABEL on the study, and reading a
study's labels needs QUERY on it. Every change leaves one audit record.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dicomhub.errors import InvalidRequest, NotFound
from dicomhub.model.access import Action
from dicomhub.model.audit import AuditAction
from dicomhub.model.timestamps import as_utc
from dicomhub.services.administration import SecurityAdministration
from dicomhub.services.archive import Archive
from dicomhub.services.audit import record_dict
from dicomhub.web.auth import AuditBacklog, caller_of
from dicomhub.web.errors import json_object, row_id

__all__ = ["dicomweb_routes", "routes"]

LOGGER = logging.getLogger("dicomhub.web.security")

_MAX_BODY = 64 * 1024


def _string(body: dict[str, Any], key: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{key!r} must be a non-empty string")
    return value


def _days(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest("'expires_days' must be a number of days")
    return float(value)


def _limit(request: Request, default: int, most: int) -> int:
    try:
        return max(1, min(int(request.query_params.get("limit", str(default))), most))
    except ValueError as exc:
        raise InvalidRequest("limit must be an integer") from exc


def _time(request: Request, key: str) -> dt.datetime | None:
    text = request.query_params.get(key)
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidRequest(f"{key} must be an ISO 8601 date or time") from exc
    return as_utc(value)


def dicomweb_routes(archive: Archive) -> list[BaseRoute]:
    """Study labels, relative to the ``/dicomweb`` mount (next to the study resources)."""
    admin = SecurityAdministration(archive.access, archive.audit)

    def put_label(request: Request) -> Response:
        p = request.path_params
        added = admin.add_label(caller_of(request), str(p["study"]), str(p["label"]))
        return Response(status_code=201 if added else 204)

    def delete_label(request: Request) -> Response:
        p = request.path_params
        if not admin.remove_label(caller_of(request), str(p["study"]), str(p["label"])):
            raise NotFound(f"study {p['study']} has no label {p['label']}")
        return Response(status_code=204)

    def study_labels(request: Request) -> JSONResponse:
        study = str(request.path_params["study"])
        caller = caller_of(request)
        if not caller.access.unrestricted:
            facts = archive.access.study_facts(study)
            if facts is None or not caller.access.permits(Action.QUERY, facts):
                raise NotFound(f"no study {study}")
        return JSONResponse(archive.access.labels_of(study))

    def labels(request: Request) -> JSONResponse:
        """Labels in use with their number of studies: all of them for a caller who may
        query the whole archive, else those its grants name."""
        caller = caller_of(request)
        permitted = caller.access.study_filter(Action.QUERY)
        found = archive.access.labels()
        if not permitted.everything:
            found = [item for item in found if item["label"] in permitted.labels]
        return JSONResponse(found)

    return [
        Route("/studies/{study}/labels", study_labels, methods=["GET"]),
        Route("/studies/{study}/labels/{label}", put_label, methods=["PUT"]),
        Route("/studies/{study}/labels/{label}", delete_label, methods=["DELETE"]),
        Route("/labels", labels, methods=["GET"]),
    ]


def routes(archive: Archive, backlog: AuditBacklog | None = None) -> list[BaseRoute]:
    """``/users``, ``/grants`` and ``/audit`` (which first waits for the audit events of
    requests already answered, see :class:`AuditBacklog`)."""
    admin = SecurityAdministration(archive.access, archive.audit)
    access = archive.access

    def list_users(_request: Request) -> JSONResponse:
        return JSONResponse(access.principals())

    async def add_user(request: Request) -> JSONResponse:
        """``{name, kind?, grants?: [{role, scope}], expires_days?}`` -> 201 with the token,
        shown this once."""
        body = await json_object(request, _MAX_BODY)
        grants = body.get("grants", [])
        if not isinstance(grants, list) or not all(isinstance(g, dict) for g in grants):
            raise InvalidRequest("'grants' must be a list of {role, scope} objects")
        pairs = [(_string(g, "role"), _string(g, "scope")) for g in grants]
        created = await run_in_threadpool(
            admin.add_user,
            caller_of(request),
            _string(body, "name"),
            _string(body, "kind", "user"),
            pairs,
            _days(body.get("expires_days")),
        )
        return JSONResponse(created, status_code=201)

    async def new_token(request: Request) -> JSONResponse:
        """``{label?, expires_days?}`` -> 201 with a new token for the user."""
        body = await json_object(request, _MAX_BODY)
        name = str(request.path_params["name"])
        if not await run_in_threadpool(access.principal_exists, name):
            raise NotFound(f"no user {name}")
        label = body.get("label", "")
        if not isinstance(label, str):
            raise InvalidRequest("'label' must be a string")
        created = await run_in_threadpool(
            admin.new_token, caller_of(request), name, label, _days(body.get("expires_days"))
        )
        return JSONResponse(created, status_code=201)

    def list_tokens(request: Request) -> JSONResponse:
        return JSONResponse(access.tokens(str(request.path_params["name"])))

    def revoke(request: Request) -> JSONResponse:
        """Revoke every token of the user, or one (``?token=ID``)."""
        name = str(request.path_params["name"])
        token = request.query_params.get("token")
        token_id = row_id(token, "a token id") if token else None
        return JSONResponse({"revoked": admin.revoke(caller_of(request), name, token_id)})

    def list_grants(request: Request) -> JSONResponse:
        return JSONResponse(access.grants(request.query_params.get("principal") or None))

    async def add_grant(request: Request) -> JSONResponse:
        """``{principal, role, scope}`` -> 201 (new) or 200 (held already)."""
        body = await json_object(request, _MAX_BODY)
        added = await run_in_threadpool(
            admin.grant,
            caller_of(request),
            _string(body, "principal"),
            _string(body, "role"),
            _string(body, "scope"),
        )
        return JSONResponse({"added": added}, status_code=201 if added else 200)

    def remove_grant(request: Request) -> JSONResponse:
        """``?principal=&role=&scope=``; 404 when there was no such grant."""
        q = request.query_params
        removed = admin.revoke_grant(
            caller_of(request),
            _string(dict(q), "principal"),
            _string(dict(q), "role"),
            _string(dict(q), "scope"),
        )
        if not removed:
            raise NotFound("no such grant")
        return JSONResponse({"removed": True})

    def audit_log(request: Request) -> JSONResponse:
        """``?study=&principal=&action=&since=&until=&limit=``, newest first."""
        if backlog is not None and not backlog.wait():
            LOGGER.warning("GET /audit: audit events of answered requests are still being written")
        q = request.query_params
        action = q.get("action") or None
        if action is not None and action not in {a.value for a in AuditAction}:
            raise InvalidRequest(f"action must be one of {', '.join(a.value for a in AuditAction)}")
        records = archive.audit.events(
            study_instance_uid=q.get("study") or None,
            principal=q.get("principal") or None,
            action=action,
            since=_time(request, "since"),
            until=_time(request, "until"),
            limit=_limit(request, 1000, 100000),
        )
        return JSONResponse([record_dict(r) for r in records])

    return [
        Route("/users", list_users, methods=["GET"]),
        Route("/users", add_user, methods=["POST"]),
        Route("/users/{name}/tokens", list_tokens, methods=["GET"]),
        Route("/users/{name}/tokens", new_token, methods=["POST"]),
        Route("/users/{name}/tokens", revoke, methods=["DELETE"]),
        Route("/grants", list_grants, methods=["GET"]),
        Route("/grants", add_grant, methods=["POST"]),
        Route("/grants", remove_grant, methods=["DELETE"]),
        Route("/audit", audit_log, methods=["GET"]),
    ]
