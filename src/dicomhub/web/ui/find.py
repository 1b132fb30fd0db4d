"""The find page (``GET /``): studies searched with the QIDO-RS query model.

The form's fields become QIDO-RS parameters in the page's script (static/find.js),
so the search runs the same indexed queries as any QIDO-RS or C-FIND client.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomhub.web.ui.pages import page

__all__ = ["routes"]


def find_studies(_request: Request) -> Response:
    return page("find.html", "Studies", "find.js")


def routes() -> list[BaseRoute]:
    return [Route("/", find_studies, methods=["GET"])]
