"""The enabled plugins, wired to the archive: event followers, routing senders, the
caller's view of the archive that plugin routes get.

One :class:`PluginHost` per process (the loader runs once in each: the DIMSE
workers, the HTTP process and the background process each have their instances).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword

from dicomhub.errors import ConfigurationError, InvalidRequest
from dicomhub.model.caller import Caller
from dicomhub.model.identifiers import Level
from dicomhub.model.query import query_from_identifier
from dicomhub.model.records import InstanceRow
from dicomhub.model.routing import PLUGIN_PREFIX, Route
from dicomhub.plugins.api import ArchiveEvent, OutgoingInstance, Plugin, PluginArchive, iter_hooked, overrides
from dicomhub.plugins.receive import ReceiveHooks
from dicomhub.services.plugin_events import EventFollower
from dicomhub.services.search import SearchService

__all__ = ["CallerArchive", "PluginHost", "PluginSender", "split_destination"]

_STUDY_KEYS = (
    "StudyInstanceUID",
    "PatientID",
    "PatientName",
    "StudyDate",
    "StudyDescription",
    "AccessionNumber",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
)
_HOOKS = (("stored", "on_stored"), ("stable_study", "on_stable_study"))


def split_destination(destination: str) -> tuple[str, str]:
    """``plugin:NAME:ARGUMENT`` as (NAME, ARGUMENT)."""
    name, _sep, argument = destination.removeprefix(PLUGIN_PREFIX).partition(":")
    return name, argument


class PluginHost:
    """The enabled plugins of this process and what the archive calls of them."""

    def __init__(self, plugins: Sequence[Plugin]) -> None:
        self.plugins = tuple(plugins)
        self.by_name = {p.name: p for p in self.plugins}
        self.receive = ReceiveHooks(self.plugins)

    def followers(self) -> list[EventFollower]:
        """One change log follower per plugin with an event hook (cursor ``plugin:NAME``)."""
        followers = []
        for plugin in self.plugins:
            events = frozenset(event for event, method in _HOOKS if overrides(plugin, method))
            if events:
                followers.append(EventFollower(f"plugin:{plugin.name}", events, _handler(plugin)))
        return followers

    def check_routes(self, routes: Sequence[Route]) -> None:
        """Every ``plugin:`` destination names an enabled plugin that has ``send``.

        Raises
        ------
        ConfigurationError
        """
        senders = {p.name for p in iter_hooked(self.plugins, "send")}
        for route in routes:
            for destination in route.to:
                if destination.startswith(PLUGIN_PREFIX):
                    name, _argument = split_destination(destination)
                    if name not in senders:
                        raise ConfigurationError(
                            f"[[route]] {route.name}: {destination!r} names no enabled plugin with a "
                            f"routing destination (enabled: {', '.join(self.by_name) or 'none'})"
                        )

    def sender(self, destination: str, read: Callable[[InstanceRow], bytes]) -> PluginSender:
        name, argument = split_destination(destination)
        plugin = self.by_name.get(name)
        if plugin is None or not overrides(plugin, "send"):
            raise ConfigurationError(f"routing destination {destination!r}: no enabled plugin {name!r} sends")
        return PluginSender(plugin, argument, read)


def _handler(plugin: Plugin) -> Callable[[str, Mapping[str, Any]], None]:
    def handle(event: str, row: Mapping[str, Any]) -> None:
        happened = ArchiveEvent(event, int(row["seq"]), str(row["level"]), str(row["uid"]), row["at"])
        if event == "stored":
            plugin.on_stored(happened)
        else:
            plugin.on_stable_study(happened)

    return handle


class PluginSender:
    """A plugin destination as a routing sender (one instance a call, each confirmed)."""

    batch = 1

    def __init__(self, plugin: Plugin, argument: str, read: Callable[[InstanceRow], bytes]) -> None:
        self._plugin = plugin
        self._argument = argument
        self._read = read

    def send(self, rows: Sequence[InstanceRow]) -> dict[str, str]:
        errors: dict[str, str] = {}
        for row in rows:
            instance = OutgoingInstance(
                row.sop_class_uid,
                row.sop_instance_uid,
                row.study_instance_uid,
                row.series_instance_uid,
                row.transfer_syntax_uid,
                functools.partial(self._read, row),
            )
            try:
                self._plugin.send(self._argument, instance)
            except Exception as exc:  # the plugin's failure: retried by the queue
                errors[row.sop_instance_uid] = f"plugin {self._plugin.name}: {type(exc).__name__}: {exc}"
        return errors

    def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class CallerArchive(PluginArchive):
    """The archive as ``caller`` sees it; what plugin routes get instead of the services."""

    _caller: Caller
    _search: SearchService

    @property
    def caller(self) -> Caller:
        return self._caller

    def studies(self, limit: int = 100, **matching: str) -> list[dict[str, Any]]:
        identifier = Dataset()
        for keyword in _STUDY_KEYS:
            setattr(identifier, keyword, "")
        for keyword, value in matching.items():
            tag = tag_for_keyword(keyword)
            if tag is None:
                raise InvalidRequest(f"{keyword!r} is not a DICOM keyword")
            if dictionary_VR(tag) == "SQ":
                raise InvalidRequest(f"{keyword} is a sequence: no matching on it here")
            setattr(identifier, keyword, value)
        try:
            query = replace(query_from_identifier(identifier, Level.STUDY), limit=max(1, min(limit, 1000)))
        except (ValueError, TypeError) as exc:  # a value pydicom refuses for the keyword's VR
            raise InvalidRequest(f"cannot match {sorted(matching)}: {exc}") from exc
        found = []
        for match in self._search.search(query, self._caller):
            found.append({k: _plain(match.get(k)) for k in (*_STUDY_KEYS, *matching)})
        return found


def _plain(value: Any) -> Any:
    """A match's value as JSON: text, a list of text, a number, or None."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_plain(v) for v in value]
    return str(value)
