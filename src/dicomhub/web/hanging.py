"""``/api/studies/{study}/hanging``: how the web UI's study viewer lays one study out.

The hanging protocol that applies (``[[hanging_protocol]]`` tables, then the
built-in ones) and what goes into each viewport, as JSON for the page's script;
resolved on the server (:mod:`dicomhub.services.hanging`) with the caller's own
searches, so it names nothing the caller may not query (404 for a study it may not see).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomhub.config import Settings
from dicomhub.errors import InvalidRequest
from dicomhub.model.identifiers import is_valid_uid
from dicomhub.services.archive import Archive
from dicomhub.services.hanging import HangingService
from dicomhub.web.auth import caller_of

__all__ = ["routes"]


def routes(archive: Archive, settings: Settings) -> list[BaseRoute]:
    """The routes mounted at ``/api``."""
    service = HangingService(archive.search, settings.hanging_protocols)

    def study_layout(request: Request) -> JSONResponse:
        study = str(request.path_params["study"])
        if not is_valid_uid(study):
            raise InvalidRequest("study must be a UID (up to 64 digits and dots)")
        return JSONResponse(service.layout(study, caller_of(request)).as_json())

    return [Route("/studies/{study}/hanging", study_layout, methods=["GET"])]
