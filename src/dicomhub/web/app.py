"""The Starlette application: ``create_app(archive)``."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dicomhub import __version__
from dicomhub.services.archive import Archive

__all__ = ["create_app"]


def create_app(archive: Archive, dimse_alive: Callable[[], bool] = lambda: True) -> Starlette:
    """Build the HTTP application on ``archive``.

    ``dimse_alive`` reports whether the DIMSE workers run, so that the health
    check covers the whole server and not only this process.
    """

    def healthz(_request: Request) -> JSONResponse:
        index_ok = archive.index.usable()
        storage_ok = archive.blobs.usable()
        dimse_ok = dimse_alive()
        ok = index_ok and storage_ok and dimse_ok
        body = {
            "status": "ok" if ok else "unavailable",
            "index": index_ok,
            "storage": storage_ok,
            "dimse": dimse_ok,
            "version": __version__,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    return Starlette(routes=[Route("/healthz", healthz, methods=["GET"])])
