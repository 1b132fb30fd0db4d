"""The patients page (``GET /ui/patients``): patients searched by name and ID.

The page's script (static/patients.js) asks ``/dicomweb/patients``, dicomhub's
patient-level QIDO-RS resource (the patient level of C-FIND): the same matching
as a study search, and only patients with a study the caller may see, each with
the number of those studies.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomhub.web.ui.pages import page

__all__ = ["routes"]


def find_patients(_request: Request) -> Response:
    return page("patients.html", "Patients", "patients.js")


def routes() -> list[BaseRoute]:
    return [Route("/ui/patients", find_patients, methods=["GET"])]
