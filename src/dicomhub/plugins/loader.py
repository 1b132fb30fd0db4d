"""Loading the enabled plugins from the ``dicomhub.plugins`` entry points.

Only plugins the configuration lists are imported: an installed package that
nobody enabled never runs code in the archive. A name with no entry point, an
entry point that cannot be imported, a factory that raises or returns no
:class:`~dicomhub.plugins.api.Plugin`: each is a :class:`ConfigurationError`
naming the plugin, at ``serve`` and at ``dicomhub config check``.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Sequence
from types import MappingProxyType

from dicomhub.errors import ConfigurationError
from dicomhub.model.plugins import PluginConfig
from dicomhub.plugins.api import Plugin

__all__ = ["ENTRY_POINT_GROUP", "load_plugins"]

ENTRY_POINT_GROUP = "dicomhub.plugins"

EntryPoints = Callable[[], Iterable[importlib.metadata.EntryPoint]]


def _installed() -> Iterable[importlib.metadata.EntryPoint]:
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def load_plugins(
    configs: Sequence[PluginConfig], entry_points: EntryPoints = _installed
) -> tuple[Plugin, ...]:
    """The enabled plugins, instantiated with their settings, in configuration order.

    Raises
    ------
    ConfigurationError
        A plugin that is not installed or cannot be loaded (the message names it).
    """
    if not configs:
        return ()  # nothing enabled: not even the entry points are read
    found = {ep.name: ep for ep in entry_points()}
    plugins = []
    for config in configs:
        ep = found.get(config.name)
        if ep is None:
            installed = ", ".join(sorted(found)) or "none"
            raise ConfigurationError(
                f"plugin {config.name!r} is enabled but not installed "
                f"(no {ENTRY_POINT_GROUP} entry point of that name; installed: {installed})"
            )
        try:
            factory = ep.load()
        except Exception as exc:
            raise ConfigurationError(
                f"plugin {config.name!r} cannot be imported ({ep.value}): {type(exc).__name__}: {exc}"
            ) from exc
        try:
            plugin = factory(MappingProxyType(dict(config.options)))
        except Exception as exc:
            raise ConfigurationError(
                f"plugin {config.name!r} refused its settings: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(plugin, Plugin):
            raise ConfigurationError(
                f"plugin {config.name!r}: {ep.value} made a {type(plugin).__name__}, "
                "not a dicomhub.plugins.api.Plugin"
            )
        plugin.name = config.name
        plugins.append(plugin)
    return tuple(plugins)
