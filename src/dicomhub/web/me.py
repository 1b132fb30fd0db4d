"""``GET /api/me``: who the caller is and what its grants let it do.

The web UI asks this to decide what to offer (the Admin menu); it decides
nothing itself, since every route checks the caller's grants again. Without
access control every caller is unrestricted, and the answer says so.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomhub.model.access import Action
from dicomhub.web.auth import caller_of

__all__ = ["routes"]


def me(request: Request) -> JSONResponse:
    caller = caller_of(request)
    access = caller.access
    grants = sorted(
        ({"role": g.role, "scope": str(g.scope)} for g in access.grants),
        key=lambda g: (g["role"], g["scope"]),
    )
    return JSONResponse(
        {
            "name": caller.principal,
            "unrestricted": access.unrestricted,
            "administer": access.may(Action.ADMINISTER),
            "grants": grants,
        },
        headers={"Cache-Control": "no-store"},
    )


def routes() -> list[BaseRoute]:
    """Relative to the ``/api`` mount."""
    return [Route("/me", me, methods=["GET"])]
