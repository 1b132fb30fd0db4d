"""``/api/studies/{study}/findings``: what the archive's checks found in one study.

The IOD validation findings and the pixel data decode failures of the instances
held in the study, for the study page of the web UI. Whoever may query the study
may read them (they describe its objects, like its headers); everyone else gets
the 404 of a study that is not there, so the route tells nothing of studies the
caller may not see. The whole-archive lists stay under ``/admin``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomhub.errors import InvalidRequest, NotFound
from dicomhub.model.access import Action
from dicomhub.model.identifiers import is_valid_uid
from dicomhub.services.archive import Archive
from dicomhub.web.auth import caller_of

__all__ = ["routes"]

# A study's page shows its findings; a study with more is a case for /admin/validation.
_MAX_FINDINGS = 1000


def routes(archive: Archive) -> list[BaseRoute]:
    """The routes mounted at ``/api``."""

    def study_findings(request: Request) -> JSONResponse:
        study = str(request.path_params["study"])
        if not is_valid_uid(study):
            raise InvalidRequest("study must be a UID (up to 64 digits and dots)")
        caller = caller_of(request)
        if not archive.access.permits_study(caller.access, Action.QUERY, study):
            raise NotFound(f"no study {study}")
        return JSONResponse(
            {
                "validation": archive.validation.findings(study_instance_uid=study, limit=_MAX_FINDINGS),
                "decode_failures": archive.decode_check.failures(study),
            }
        )

    return [Route("/studies/{study}/findings", study_findings, methods=["GET"])]
