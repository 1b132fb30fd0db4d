"""DICOMweb (PS3.18) under ``/dicomweb``: QIDO-RS, WADO-RS, STOW-RS, WADO-URI, delete, reject."""

from __future__ import annotations

from starlette.routing import BaseRoute

from dicomhub.config import Settings
from dicomhub.services.archive import Archive
from dicomhub.web.dicomweb import delete, qido, rejection, stow, wado

__all__ = ["routes"]


def routes(archive: Archive, settings: Settings) -> list[BaseRoute]:
    """Every DICOMweb route, relative to the ``/dicomweb`` mount."""
    return [
        *qido.routes(archive, settings),
        *wado.routes(archive, settings),
        *stow.routes(archive, settings),
        *delete.routes(archive, settings),
        *rejection.routes(archive, settings),
    ]
