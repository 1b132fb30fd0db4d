"""The study viewer page: a grid of viewports laid out by a hanging protocol.

The page asks ``/api/studies/{study}/hanging`` for the layout (resolved on the
server, see :mod:`dicomhub.model.hanging`) and draws each viewport with the same
client-side pixel pipeline as the series viewer (static/viewport.js): frames over
WADO-RS, Modality LUT and VOI window in the page, cine for multi-frame objects.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomhub.web.ui.pages import page, uid_param

__all__ = ["routes"]


def view_study(request: Request) -> Response:
    return page(
        "study_viewer.html", "Study viewer", "study_viewer.js", {"study": uid_param(request, "study")}
    )


def routes() -> list[BaseRoute]:
    return [Route("/ui/studies/{study}/viewer", view_study, methods=["GET"])]
