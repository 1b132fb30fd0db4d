"""DICOMweb: delete a study, series or instance.

``DELETE`` on a study, series or instance resource removes it and everything
below it (into the trash for ``trash_keep``: :mod:`dicomhub.services.trash`); 204
on success, 404 for a resource that is not held. This is the
delete of the DICOMweb dialects of dcm4chee and Orthanc (PS3.18 does not
define one).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomhub.config import Settings
from dicomhub.errors import DicomhubError
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditOutcome
from dicomhub.model.caller import Caller
from dicomhub.services.archive import Archive
from dicomhub.services.delete import DeleteResult
from dicomhub.web.auth import audit, caller_of, outcome_of

__all__ = ["routes"]


def _deleted(
    archive: Archive, request: Request, study: str, remove: Callable[[Caller], DeleteResult]
) -> Response:
    """Run one delete with its one DELETE audit record."""
    caller = caller_of(request)
    try:
        result = remove(caller)
    except DicomhubError as exc:
        audit(
            archive,
            caller,
            AuditAction.DELETE,
            outcome_of(exc),
            [AuditedStudy(study[:64])],
            {"path": request.url.path[:256]},
        )
        raise
    audit(
        archive,
        caller,
        AuditAction.DELETE,
        AuditOutcome.SUCCESS,
        [AuditedStudy(study[:64], "", result.series, len(result.instances))],
        {"path": request.url.path[:256], "patients_removed": list(result.patients), "trash": result.trashed},
    )
    return Response(status_code=204)


def routes(archive: Archive, settings: Settings) -> list[BaseRoute]:
    """The delete routes, relative to the ``/dicomweb`` mount."""

    def delete_study(request: Request) -> Response:
        study = str(request.path_params["study"])
        return _deleted(archive, request, study, lambda c: archive.delete.delete_study(study, c))

    def delete_series(request: Request) -> Response:
        p = request.path_params
        study, series = str(p["study"]), str(p["series"])
        return _deleted(archive, request, study, lambda c: archive.delete.delete_series(study, series, c))

    def delete_instance(request: Request) -> Response:
        p = request.path_params
        study, series, instance = str(p["study"]), str(p["series"]), str(p["instance"])
        return _deleted(
            archive, request, study, lambda c: archive.delete.delete_instance(study, series, instance, c)
        )

    return [
        Route("/studies/{study}", delete_study, methods=["DELETE"]),
        Route("/studies/{study}/series/{series}", delete_series, methods=["DELETE"]),
        Route(
            "/studies/{study}/series/{series}/instances/{instance}",
            delete_instance,
            methods=["DELETE"],
        ),
    ]
