"""Wiring of the enabled plugins: loaded once per process, their receive hooks put in
front of ingest, their event hooks fed from the change log (the background process),
their routes mounted by the HTTP app and their destinations given to routing."""

from __future__ import annotations

import threading

from sqlalchemy import Engine

from dicomhub.config import Settings
from dicomhub.index import engine as engines
from dicomhub.index.cursors import change_log_position, move_cursor
from dicomhub.index.engine import lease
from dicomhub.index.repository import IndexRepository
from dicomhub.plugins.host import PluginHost
from dicomhub.plugins.loader import load_plugins
from dicomhub.plugins.receive import HookedIngestService
from dicomhub.services.ingest import IngestService
from dicomhub.services.plugin_events import PluginEventService

__all__ = ["hook_ingest", "ingest_class", "plugin_events", "plugin_host"]

_lock = threading.Lock()
_loaded: list[tuple[Settings, PluginHost]] = []


def plugin_host(settings: Settings) -> PluginHost:
    """The plugins ``settings`` enable, loaded and checked once per process.

    Raises
    ------
    ConfigurationError
        A plugin that is not installed or not loadable, or a routing destination
        ``plugin:NAME`` that no enabled plugin serves.
    """
    with _lock:
        for known, host in _loaded:
            if known is settings:
                return host
        host = PluginHost(load_plugins(settings.plugins))
        host.check_routes(settings.routes)
        _loaded[:] = [(settings, host)]  # one Settings per process; tests make many
        return host


def ingest_class(host: PluginHost) -> type[IngestService]:
    """The ingest service to build: with the receive hooks only when a plugin has one,
    so that without them storing costs not one call more."""
    return HookedIngestService if host.receive else IngestService


def hook_ingest(ingest: IngestService, host: PluginHost) -> None:
    if isinstance(ingest, HookedIngestService):
        ingest.hooks = host.receive


def plugin_events(host: PluginHost, engine: Engine, index: IndexRepository) -> PluginEventService:
    """The change log followers of the plugins' event hooks (cursors ``plugin:NAME``)."""

    def move(name: str, position: int) -> None:
        with engines.write(engine) as conn:
            move_cursor(conn, name, position)

    return PluginEventService(
        host.followers(),
        index,
        lambda name: change_log_position(engine, name),
        move,
        claim=lambda name: lease(engine, name),
    )
