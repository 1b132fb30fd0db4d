"""``GET /audit/export``: the audit log as DICOM audit messages or JSON lines.

With access control on, :class:`dicomhub.web.auth.AuthMiddleware` lets only
principals with the administer right reach it (``/audit`` is an administration
prefix); without it the route is open like the other operator routes.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dicomhub.config import Settings
from dicomhub.errors import InvalidRequest
from dicomhub.services.archive import Archive
from dicomhub.services.auditexport import EXPORT_MEDIA_TYPES, export_lines, parse_audit_time
from dicomhub.web.auth import AuditBacklog

__all__ = ["routes"]

LOGGER = logging.getLogger("dicomhub.web.audit")

_DEFAULT_LIMIT = 10000
_MAX_LIMIT = 100000


def routes(archive: Archive, settings: Settings, backlog: AuditBacklog | None = None) -> list[BaseRoute]:
    def export(request: Request) -> Response:
        # The audit events of requests already answered are still being written: wait for them.
        if backlog is not None and not backlog.wait():
            LOGGER.warning("GET /audit/export: audit events of answered requests are still being written")
        params = request.query_params
        export_format = params.get("format", "jsonl")
        try:
            limit = max(1, min(int(params.get("limit", str(_DEFAULT_LIMIT))), _MAX_LIMIT))
            records = archive.audit.events(
                study_instance_uid=params.get("study") or None,
                principal=params.get("principal") or None,
                since=parse_audit_time(params.get("since")),
                until=parse_audit_time(params.get("until")),
                limit=limit,
            )[::-1]  # oldest first, as a log reads
            body = "".join(export_lines(records, export_format, settings.aet))
        except (InvalidRequest, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return Response(body, media_type=EXPORT_MEDIA_TYPES[export_format])

    return [Route("/audit/export", export, methods=["GET"])]
