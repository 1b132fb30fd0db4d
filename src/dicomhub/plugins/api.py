"""The interface a dicomhub plugin implements, and the values it receives and returns.

A plugin is a package with an entry point in the ``dicomhub.plugins`` group; the
entry point's name is the plugin's name, its object a factory (usually the
:class:`Plugin` subclass itself) called once per process with the plugin's
``[plugins.NAME]`` settings table. It overrides the hooks it needs; a hook left
alone costs nothing (the receive hook is not even called per object):

- :meth:`Plugin.on_receive` -- before an object is stored, on every ingest path
  (C-STORE, STOW-RS, import, migration, routing in): :data:`ACCEPT`, :class:`Reject`
  with a DICOM failure status, or :class:`Modify` with attributes to set;
- :meth:`Plugin.on_stored`, :meth:`Plugin.on_stable_study` -- after the commit, from
  the change log, in the background process, at least once;
- :meth:`Plugin.send` -- a routing destination ``plugin:NAME:ARGUMENT``;
- :meth:`Plugin.routes` -- HTTP routes under ``/plugins/NAME/``, each called with
  the authenticated caller and a :class:`PluginArchive` that sees what that caller
  may see and nothing more.

docs/plugins.md describes each contract, the order hooks run in and what a
failing hook does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

from dicomhub.model.caller import Caller
from dicomhub.model.ingest import InstanceOrigin

__all__ = [
    "ACCEPT",
    "Accept",
    "ArchiveEvent",
    "Modify",
    "OutgoingInstance",
    "Plugin",
    "PluginArchive",
    "PluginRequest",
    "PluginResponse",
    "PluginRoute",
    "ReceiveResult",
    "ReceivedObject",
    "Reject",
    "failure_status_allowed",
]

# Attributes a receive hook may not change: they name the object in the request
# (C-STORE's Affected SOP Instance UID, STOW-RS's response) and in its File Meta.
FIXED_ATTRIBUTES: Final = frozenset({"SOPClassUID", "SOPInstanceUID"})


def failure_status_allowed(status: int) -> bool:
    """A C-STORE failure status a plugin may answer with (PS3.4 B.2.3): Refused: Out of
    Resources (0xA7xx), Error: Data Set Does Not Match SOP Class (0xA9xx) or Error:
    Cannot Understand (0xCxxx)."""
    return 0xA700 <= status <= 0xA7FF or 0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF


@dataclass(frozen=True, slots=True)
class Accept:
    """Store the object as received."""


ACCEPT: Final = Accept()


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse the object; nothing is written.

    ``status`` is answered to a C-STORE as is and is the Failure Reason of the
    object in a STOW-RS response (0xA700-0xA7FF, 0xA900-0xA9FF or 0xC000-0xCFFF);
    ``reason`` goes to the log, STOW-RS's Warning header and the import's message.
    """

    status: int
    reason: str

    def __post_init__(self) -> None:
        if not failure_status_allowed(self.status):
            raise ValueError(
                f"0x{self.status:04X} is not a C-STORE failure status a plugin may use "
                "(0xA700-0xA7FF, 0xA900-0xA9FF, 0xC000-0xCFFF)"
            )


@dataclass(frozen=True, slots=True)
class Modify:
    """Store the object with these attributes set (``None``: removed) first.

    Keys are DICOM keywords of the data set (not File Meta); values are what
    pydicom accepts for the keyword's VR. The object is changed before it is
    digested, stored and indexed, so the archive holds only the changed one.
    SOP Class UID and SOP Instance UID cannot be changed.
    """

    attributes: Mapping[str, Any]


ReceiveResult = Accept | Reject | Modify


class ReceivedObject:
    """What a receive hook sees of an object: its attributes (read only), who sent it and how."""

    __slots__ = ("_get", "caller", "origin")

    def __init__(self, get: Callable[[str], Any], origin: InstanceOrigin, caller: Caller) -> None:
        self._get = get
        self.origin = origin
        self.caller = caller

    @property
    def calling_ae_title(self) -> str | None:
        """The calling AE title of a C-STORE association (None on other paths)."""
        return self.origin.calling_ae_title

    def get(self, keyword: str, default: Any = None) -> Any:
        """The value of the attribute ``keyword`` (a copy: changing it changes nothing), or ``default``."""
        value = self._get(keyword)
        return default if value is None else value


@dataclass(frozen=True, slots=True)
class ArchiveEvent:
    """One entry of the change log, as a hook receives it (``stored`` or ``stable_study``)."""

    event: str
    seq: int  # the change log's sequence number: the same event may come again (at least once)
    level: str  # "IMAGE" for stored, "STUDY" for stable_study
    uid: str  # the SOP Instance UID, or the Study Instance UID
    at: datetime


@dataclass(frozen=True, slots=True)
class OutgoingInstance:
    """An instance a routing rule hands to a plugin destination."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    read: Callable[[], bytes]  # the Part 10 object, read when called


class PluginArchive(Protocol):
    """The archive as one caller sees it: every call is checked against the caller's grants."""

    @property
    def caller(self) -> Caller: ...

    def studies(self, limit: int = 100, **matching: str) -> list[dict[str, Any]]:
        """Studies the caller may query, newest first by the index's order: each as a
        dict of keywords (StudyInstanceUID, PatientID, PatientName, StudyDate,
        StudyDescription, ModalitiesInStudy, NumberOfStudyRelatedInstances).
        ``matching``: keyword=value conditions (DICOM matching: ``*`` wildcards)."""
        ...


@dataclass(frozen=True, slots=True)
class PluginRequest:
    """An HTTP request to a plugin route, already authenticated."""

    method: str
    path_params: Mapping[str, str]
    query_params: Mapping[str, str]
    body: bytes
    archive: PluginArchive

    @property
    def caller(self) -> Caller:
        return self.archive.caller


@dataclass(frozen=True, slots=True)
class PluginResponse:
    """A plugin route's answer when it is not 200 with a JSON body."""

    status_code: int = 200
    body: Any = None  # JSON-serialisable
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PluginRoute:
    """``path`` below ``/plugins/NAME`` (Starlette path syntax: ``/items/{id}``)."""

    path: str
    handler: Callable[[PluginRequest], Any]  # returns JSON-serialisable data or a PluginResponse
    methods: Sequence[str] = ("GET",)


class Plugin:
    """Base class of a plugin: override the hooks you need.

    The loader sets :attr:`name`. A hook runs on a thread of the server (several
    at once for the receive hook and routes), so state shared between calls needs
    a lock or a store that has its own (a file written atomically, a database).
    """

    name: str = ""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = settings

    def on_receive(self, received: ReceivedObject) -> ReceiveResult:
        """Accept, reject or modify an object before it is stored.

        Runs in the process that received it, before anything is written. An
        exception refuses the object with a processing failure (logged).
        """
        return ACCEPT

    def on_stored(self, event: ArchiveEvent) -> None:
        """An instance was stored (committed). At least once; raise to be called again later."""

    def on_stable_study(self, event: ArchiveEvent) -> None:
        """A study received nothing new for ``stable_age`` seconds. At least once; raise to retry."""

    def send(self, argument: str, instance: OutgoingInstance) -> None:
        """Deliver ``instance`` to the routing destination ``plugin:NAME:ARGUMENT``; raise on failure
        (the routing queue retries, then gives up into its dead letters)."""
        raise NotImplementedError(f"plugin {self.name} has no routing destination")

    def routes(self) -> Sequence[PluginRoute]:
        """HTTP routes mounted under ``/plugins/NAME``."""
        return ()


def overrides(plugin: Plugin, method: str) -> bool:
    """Whether ``plugin`` implements the hook ``method`` (the base class's does nothing)."""
    return getattr(type(plugin), method, None) is not getattr(Plugin, method)


def iter_hooked(plugins: Sequence[Plugin], method: str) -> Iterator[Plugin]:
    """The plugins, in configuration order, that implement ``method``."""
    return (p for p in plugins if overrides(p, method))
