"""DICOMweb: delete a study, series or instance.

``DELETE`` on a study, series or instance resource removes it and everything
below it; 204 on success, 404 for a resource that is not held. This is the
delete of the DICOMweb dialects of dcm4chee and Orthanc (PS3.18 does not
define one).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomhub.config import Settings
from dicomhub.model.caller import Caller, Channel
from dicomhub.services.archive import Archive

__all__ = ["routes"]


def _caller(request: Request) -> Caller:
    client = request.client
    return Caller(Channel.HTTP, "", client.host if client else "")


def routes(archive: Archive, settings: Settings) -> list[BaseRoute]:
    """The delete routes, relative to the ``/dicomweb`` mount."""

    def delete_study(request: Request) -> Response:
        archive.delete.delete_study(str(request.path_params["study"]), _caller(request))
        return Response(status_code=204)

    def delete_series(request: Request) -> Response:
        p = request.path_params
        archive.delete.delete_series(str(p["study"]), str(p["series"]), _caller(request))
        return Response(status_code=204)

    def delete_instance(request: Request) -> Response:
        p = request.path_params
        archive.delete.delete_instance(
            str(p["study"]), str(p["series"]), str(p["instance"]), _caller(request)
        )
        return Response(status_code=204)

    return [
        Route("/studies/{study}", delete_study, methods=["DELETE"]),
        Route("/studies/{study}/series/{series}", delete_series, methods=["DELETE"]),
        Route(
            "/studies/{study}/series/{series}/instances/{instance}",
            delete_instance,
            methods=["DELETE"],
        ),
    ]
