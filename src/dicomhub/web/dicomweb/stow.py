"""DICOMweb: stow (being written)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from dicomhub.config import Settings
from dicomhub.services.archive import Archive

__all__ = ["routes"]


def routes(archive: Archive, settings: Settings) -> list[BaseRoute]:
    return []
