"""The administration pages under ``/ui/admin``: health, peers, users and grants, jobs,
associations.

Shells like every page of the UI: their scripts (static/admin_*.js) call the
administration API (``/admin/...``, ``/users``, ``/grants``, ``/migrations``,
``/deid/jobs``, ``/print/jobs``) with the caller's token, and those routes
answer 403 to anyone without the administer grant, so a page shows a
non-administrator a "not allowed" message and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomhub.web.ui.pages import page

__all__ = ["PAGES", "routes"]

# path -> (template, title, script): the order of the admin menu.
PAGES: dict[str, tuple[str, str, str]] = {
    "/ui/admin": ("admin_health.html", "Health", "admin_health.js"),
    "/ui/admin/peers": ("admin_peers.html", "Peers", "admin_peers.js"),
    "/ui/admin/users": ("admin_users.html", "Users and grants", "admin_users.js"),
    "/ui/admin/jobs": ("admin_jobs.html", "Jobs", "admin_jobs.js"),
    "/ui/admin/associations": ("admin_associations.html", "Associations", "admin_associations.js"),
}


def _endpoint(template: str, title: str, script: str) -> Callable[[Request], Response]:
    def admin_page(_request: Request) -> Response:
        return page(template, title, script)

    return admin_page


def routes() -> list[BaseRoute]:
    return [
        Route(path, _endpoint(template, title, script), methods=["GET"])
        for path, (template, title, script) in PAGES.items()
    ]
