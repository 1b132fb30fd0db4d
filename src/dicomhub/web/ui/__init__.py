"""dicomhub's own web UI: server-rendered pages over the archive's DICOMweb services.

The pages are HTML shells (Jinja2 templates) and a few vanilla JavaScript
modules served from ``/ui/static``; no build step, nothing fetched from a CDN.
The shells hold no archive data: their scripts call QIDO-RS, WADO-RS and the
label routes with the caller's own bearer token, so every page shows exactly
what the same request over DICOMweb would. One module per page group:
``find`` (``/``), ``patients`` (``/ui/patients``), ``study`` (the study page), ``viewer`` and ``admin``
(``/ui/admin/...``, for administrators); ``pages`` holds
what they share (templates, the static mount).
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from dicomhub.web.ui import admin, find, patients, study, studyviewer, viewer
from dicomhub.web.ui.pages import static_mount

__all__ = ["routes"]


def routes() -> list[BaseRoute]:
    """The UI's pages and its static assets, at the root of the application."""
    return [
        *find.routes(),
        *study.routes(),
        *viewer.routes(),
        *studyviewer.routes(),
        *admin.routes(),
        *patients.routes(),
        static_mount(),
    ]
