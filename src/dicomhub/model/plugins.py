"""Which plugins the configuration enables, each with its own settings table.

In the file::

    [plugins]
    enabled = ["example"]

    [plugins.example]
    reject_calling_ae = ["BADMOD"]

A plugin runs only when it is listed in ``enabled``: an installed package alone
never runs code in the archive. Flags and variables give the names only
(``--plugins example``); settings tables come from the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dicomhub.errors import ConfigurationError

__all__ = ["PluginConfig", "parse_plugin_name", "plugins_table"]

# The name is a URL path segment (/plugins/NAME), a cursor name and a destination prefix.
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True, slots=True)
class PluginConfig:
    """One enabled plugin: its entry point's name and its ``[plugins.NAME]`` table."""

    name: str
    # A plain dict (Settings are pickled into the worker processes); the loader hands
    # the plugin a read-only view of it.
    options: Mapping[str, Any] = field(default_factory=dict)


def parse_plugin_name(value: Any) -> PluginConfig:
    """A plugin named on its own (a flag, a variable, an item of ``enabled``)."""
    if isinstance(value, PluginConfig):
        return value
    if not isinstance(value, str) or not _NAME.match(value.strip()):
        raise ConfigurationError(
            f"{value!r} cannot name a plugin (1 to 32 lower-case letters, digits, '_' or '-', a letter first)"
        )
    return PluginConfig(value.strip())


def plugins_table(table: Mapping[str, Any]) -> tuple[PluginConfig, ...]:
    """The ``[plugins]`` table: ``enabled`` names, each with its ``[plugins.NAME]`` table."""
    enabled = table.get("enabled", [])
    if isinstance(enabled, str) or not isinstance(enabled, list):
        raise ConfigurationError("plugins.enabled must be a list of plugin names")
    names = [parse_plugin_name(n).name for n in enabled]
    if len(set(names)) != len(names):
        raise ConfigurationError("plugins.enabled lists a plugin twice")
    for key, value in table.items():
        if key == "enabled":
            continue
        if not isinstance(value, Mapping):
            raise ConfigurationError(
                f"plugins.{key}: expected a [plugins.{key}] table of that plugin's settings"
            )
        if key not in names:
            raise ConfigurationError(
                f"[plugins.{key}] configures a plugin that plugins.enabled does not list"
            )
    return tuple(PluginConfig(n, dict(table.get(n, {}))) for n in names)
