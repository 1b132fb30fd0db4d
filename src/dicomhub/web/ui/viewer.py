"""The viewer page: one series, drawn on the client from raw pixel values.

Frames come over WADO-RS as uncompressed little-endian octet streams and the
Modality LUT and the VOI window are applied in the page's script
(static/viewer.js), so a window/level drag needs no round trip.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomhub.web.ui.pages import page, uid_param

__all__ = ["routes"]


def view_series(request: Request) -> Response:
    return page(
        "viewer.html",
        "Viewer",
        "viewer.js",
        {"study": uid_param(request, "study"), "series": uid_param(request, "series")},
    )


def routes() -> list[BaseRoute]:
    return [Route("/ui/studies/{study}/series/{series}/viewer", view_series, methods=["GET"])]
