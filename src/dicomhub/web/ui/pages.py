"""What the UI's pages share: the Jinja2 environment, page rendering, the static assets."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from dicomhub import __version__
from dicomhub.errors import InvalidRequest
from dicomhub.model.identifiers import is_valid_uid

__all__ = ["STATIC_PREFIX", "page", "static_mount", "uid_param"]

STATIC_PREFIX = "/ui/static"
_STATIC_DIR = Path(__file__).resolve().parent / "static"

_ENV = Environment(
    loader=PackageLoader("dicomhub.web.ui", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def uid_param(request: Request, name: str) -> str:
    """A UID path parameter, refused (400) unless it is a valid UID: it goes into the page."""
    value = str(request.path_params[name])
    if not is_valid_uid(value):
        raise InvalidRequest(f"{name} must be a UID (up to 64 digits and dots)")
    return value


def page(template: str, title: str, script: str, data: Mapping[str, str] | None = None) -> HTMLResponse:
    """Render one page of the UI.

    ``base.html`` gives the header, the log-in form and the page's ``script``
    (a module under ``/ui/static``); ``data`` becomes ``data-*`` attributes of
    ``<main>``, where the script finds the UIDs of its URL.
    """
    html = _ENV.get_template(template).render(
        title=title,
        static=STATIC_PREFIX,
        script=script,
        data=dict(data or {}),
        # The version in asset URLs: a new release is never served yesterday's cached script.
        version=__version__,
    )
    # The shells carry no data but the UIDs in their own URL; scripts come from this server only.
    return HTMLResponse(
        html,
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": (
                "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
            ),
            "X-Content-Type-Options": "nosniff",
        },
    )


def static_mount() -> Mount:
    """The UI's scripts and style sheet (shipped in the wheel, see pyproject's package-data)."""
    return Mount(STATIC_PREFIX, app=StaticFiles(directory=_STATIC_DIR), name="ui-static")
