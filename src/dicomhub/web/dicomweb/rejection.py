"""DICOMweb and rejection notes (IHE IOCM): ``includerejected`` and the reject resources.

Instances rejected by a rejection note are hidden from QIDO-RS and WADO-RS.
A caller that wants them adds ``includerejected=true`` to the query (dcm4chee-arc
shows them through separate query/retrieve views, one per AE title; one query
parameter does the same here without another base URL).

``POST /studies/{study}/reject`` (and ``.../series/{series}/reject``,
``.../series/{series}/instances/{instance}/reject``) with ``?reason=quality``
(``safety``, ``worklist``, ``retention``) makes a rejection note for the
resource and stores it, as dcm4chee-arc's REST reject does; the caller needs
the delete right on the study. 201 with the note's UIDs; 404 when there is
nothing (not yet rejected) to reject.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomhub.config import Settings
from dicomhub.errors import DicomhubError, InvalidRequest
from dicomhub.model.audit import AuditAction, AuditedStudy
from dicomhub.services.archive import Archive
from dicomhub.web.auth import audit, caller_of, outcome_of

__all__ = ["INCLUDE_REJECTED", "include_rejected", "include_rejected_value", "routes"]

#: The query parameter that shows rejected instances (QIDO-RS, WADO-RS).
INCLUDE_REJECTED = "includerejected"


def include_rejected_value(text: str) -> bool:
    """The value of ``includerejected``: true or false; :class:`InvalidRequest` else."""
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise InvalidRequest(f"{INCLUDE_REJECTED} must be true or false, not {text!r}")
    return value == "true"


def include_rejected(request: Request) -> bool:
    """Whether ``request`` asks for rejected instances (the last value given decides)."""
    values = [v for k, v in request.query_params.multi_items() if k.lower() == INCLUDE_REJECTED]
    return include_rejected_value(values[-1]) if values else False


def routes(archive: Archive, settings: Settings) -> list[BaseRoute]:
    """The reject routes, relative to the ``/dicomweb`` mount."""

    def reject(request: Request) -> JSONResponse:
        p = request.path_params
        study = str(p["study"])
        series = str(p["series"]) if "series" in p else None
        instance = str(p["instance"]) if "instance" in p else None
        caller = caller_of(request)
        reason = request.query_params.get("reason")
        try:
            if archive.rejection is None:
                raise InvalidRequest("rejection is not available here")
            if not reason:
                raise InvalidRequest("reason is required: quality, safety, worklist or retention")
            stored = archive.rejection.reject(caller, reason, study, series, instance)
        except DicomhubError as exc:
            audit(
                archive,
                caller,
                AuditAction.DELETE,
                outcome_of(exc),
                [AuditedStudy(study[:64])],
                {"path": request.url.path[:256], "rejected": (reason or "")[:16]},
            )
            raise
        return JSONResponse(
            {
                "StudyInstanceUID": stored.study_instance_uid,
                "SeriesInstanceUID": stored.series_instance_uid,
                "SOPInstanceUID": stored.sop_instance_uid,
                "outcome": stored.outcome.value,
            },
            status_code=201,
        )

    return [
        Route("/studies/{study}/reject", reject, methods=["POST"]),
        Route("/studies/{study}/series/{series}/reject", reject, methods=["POST"]),
        Route("/studies/{study}/series/{series}/instances/{instance}/reject", reject, methods=["POST"]),
    ]
