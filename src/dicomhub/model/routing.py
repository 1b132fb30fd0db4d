"""Routing: rules that forward what the archive stores to other systems, as
Orthanc's ``OnStoredInstance`` / ``OnStableStudy`` scripts and dcm4chee's export
rules do.

A rule is a ``[[route]]`` table of the configuration file::

    [[route]]
    name = "ct-to-pacs"                   # letters, digits, . _ - (at most 24)
    on = "stored"                         # or "stable": when the study is stable
    when = { Modality = "CT", calling_ae = "CT1" }
    to = ["pacs", "folder:/srv/export"]   # peer names, folder:ABSOLUTE-PATH, project:NAME
    transfer_syntax = "1.2.840.10008.1.2.1"  # optional: transcode before sending
    deidentify = "study-x"                # optional: de-identify with this project first
    deidentify_options = ["retain-uids"]  # optional: options of the profile (PS3.15 E.1-1)
    max_attempts = 10                     # then the item is dead (manual retry)

``when`` holds conditions that must all hold: an indexed attribute by its DICOM
keyword (``Modality``, ``StudyDescription``, ... of
:mod:`dicomhub.model.attributes`), ``calling_ae`` (the AE title that sent the
object), ``sop_class`` (its SOP Class UID) or ``label`` (one of the study's
labels). A value is matched exactly, or as a DICOM wildcard with ``*`` and ``?``
(PS3.4 C.2.2.2.4), case-sensitively; a list of values matches any of them. A rule
without conditions matches everything.

A ``project:NAME`` destination de-identifies into this archive, as a new study, with
the project's key and mapping: a server-side de-identification run of the project
over the instances (run by the background process).

``deidentify`` is the rule's, not a destination's: ``to`` stays a plain list of
names, and a rule that sends identified to one peer and de-identified to another is
two rules with the same ``when``. What leaves is de-identified with the project's key
and recorded in its mapping, as for a de-identifying C-MOVE destination.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

from dicomhub.errors import ConfigurationError
from dicomhub.model.attributes import BY_KEYWORD
from dicomhub.model.tables import named_tables

__all__ = [
    "FOLDER_PREFIX",
    "PLUGIN_PREFIX",
    "PROJECT_PREFIX",
    "STATES",
    "TRIGGERS",
    "Condition",
    "Route",
    "backoff",
    "parse_routes",
]

TRIGGERS: Final = ("stored", "stable")
#: States of a queue item: waiting (first try or a retry), sent, dead (given up), or
#: skipped (its instance was rejected, deleted or trashed before it went).
STATES: Final = ("queued", "sent", "dead", "skipped")
FOLDER_PREFIX: Final = "folder:"
#: ``plugin:NAME:ARGUMENT``: handed to the enabled plugin NAME's ``send`` (docs/plugins.md).
PLUGIN_PREFIX: Final = "plugin:"
_PLUGIN_DESTINATION = re.compile(r"^plugin:[a-z][a-z0-9_-]{0,31}(:[^\x00]{0,200})?$")
PROJECT_PREFIX: Final = "project:"
#: Keys of ``when`` that are not indexed attributes.
_SPECIAL: Final = ("calling_ae", "sop_class", "label")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,24}$")
_FIELDS: Final = {
    "name", "on", "when", "to", "transfer_syntax", "max_attempts", "deidentify", "deidentify_options",
}  # fmt: skip


def backoff(attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: 1, 2, 4, ... 300."""
    return float(min(300, 2 ** max(0, attempts - 1)))


@functools.lru_cache(maxsize=1024)
def _pattern(value: str) -> re.Pattern[str]:
    # Only * and ? are special (C.2.2.2.4); everything else matches itself.
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value), re.S)


@dataclass(frozen=True, slots=True)
class Condition:
    """``key`` must have one of ``values`` (each exact or a wildcard)."""

    key: str
    values: tuple[str, ...]

    def holds(self, found: Collection[str]) -> bool:
        """Whether any of the values ``found`` for the key matches any pattern."""
        return any(_pattern(p).fullmatch(v) for p in self.values for v in found)


@dataclass(frozen=True, slots=True)
class Route:
    """One configured rule (see the module docstring)."""

    name: str
    on: str
    to: tuple[str, ...]
    when: tuple[Condition, ...] = ()
    transfer_syntax: str = ""
    max_attempts: int = 10
    deidentify: str = ""  # a de-identification project: what leaves is de-identified
    deidentify_options: tuple[str, ...] = ()

    def matches(self, facts: Mapping[str, Collection[str]]) -> bool:
        """Whether an instance with ``facts`` (key -> its values) meets every condition."""
        return all(c.holds(facts.get(c.key, ())) for c in self.when)

    def peers(self) -> tuple[str, ...]:
        """The destinations that name peers (not folders, plugins nor projects)."""
        return tuple(d for d in self.to if not d.startswith((FOLDER_PREFIX, PLUGIN_PREFIX, PROJECT_PREFIX)))

    def projects(self) -> tuple[str, ...]:
        """The de-identification projects of ``project:`` destinations."""
        return tuple(d.removeprefix(PROJECT_PREFIX) for d in self.to if d.startswith(PROJECT_PREFIX))

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "on": self.on,
            "when": {c.key: list(c.values) if len(c.values) > 1 else c.values[0] for c in self.when},
            "to": list(self.to),
            "transfer_syntax": self.transfer_syntax or None,
            "max_attempts": self.max_attempts,
            "deidentify": self.deidentify or None,
            "deidentify_options": list(self.deidentify_options),
        }


def _condition(key: str, value: Any, where: str) -> Condition:
    if key not in _SPECIAL and key not in BY_KEYWORD:
        known = ", ".join([*_SPECIAL, *sorted(BY_KEYWORD)])
        raise ConfigurationError(f"{where}: unknown condition {key!r} (one of {known})")
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v and len(v) <= 64 for v in values):
        raise ConfigurationError(
            f"{where}: when.{key} must be a text of 1 to 64 characters or a list of them"
        )
    return Condition(key, tuple(values))


def _destination(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            f"{where}: to must list peer names, folder:PATH or project:NAME destinations"
        )
    if value.startswith(FOLDER_PREFIX):
        path = value.removeprefix(FOLDER_PREFIX)
        if not path.startswith("/") or "\x00" in path:
            raise ConfigurationError(f"{where}: {value!r}: a folder destination is folder:ABSOLUTE-PATH")
        return value
    if value.startswith(PLUGIN_PREFIX):
        if not _PLUGIN_DESTINATION.match(value):
            raise ConfigurationError(f"{where}: {value!r}: a plugin destination is plugin:NAME[:ARGUMENT]")
        return value
    if value.startswith(PROJECT_PREFIX):
        project = value.removeprefix(PROJECT_PREFIX)
        if not project.strip() or len(project) > 64 or not project.isprintable():
            raise ConfigurationError(
                f"{where}: {value!r}: a project destination is project:NAME (1 to 64 characters)"
            )
        return value
    if len(value) > 64 or "/" in value or "\\" in value:
        raise ConfigurationError(f"{where}: {value!r} cannot name a peer")
    return value.strip()


def _route(table: Mapping[str, Any], where: str) -> Route:
    unknown = set(table) - _FIELDS
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key {sorted(unknown)[0]!r} (keys: {', '.join(sorted(_FIELDS))})"
        )
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(f"{where}: name must be 1 to 24 letters, digits, '.', '_' or '-'")
    where = f"[[route]] {name}"
    on = table.get("on", "stored")
    if on not in TRIGGERS:
        raise ConfigurationError(f"{where}: on must be one of {', '.join(TRIGGERS)}")
    when = table.get("when", {})
    if not isinstance(when, Mapping):
        raise ConfigurationError(f"{where}: when must be an inline table of conditions")
    to = table.get("to")
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not to:
        raise ConfigurationError(f"{where}: to must list at least one destination")
    destinations = tuple(_destination(d, where) for d in to)
    if len(set(destinations)) != len(destinations):
        raise ConfigurationError(f"{where}: a destination is listed twice")
    syntax = table.get("transfer_syntax", "")
    if not isinstance(syntax, str):
        raise ConfigurationError(f"{where}: transfer_syntax must be a transfer syntax UID or name")
    attempts = table.get("max_attempts", 10)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 100:
        raise ConfigurationError(f"{where}: max_attempts must be an integer from 1 to 100")
    project = table.get("deidentify", "")
    if not isinstance(project, str) or len(project.strip()) > 64 or not project.isprintable():
        raise ConfigurationError(
            f"{where}: deidentify must name a de-identification project (1 to 64 characters)"
        )
    options = table.get("deidentify_options", [])
    if not isinstance(options, list) or not all(isinstance(o, str) and o.strip() for o in options):
        raise ConfigurationError(f"{where}: deidentify_options must be a list of option names")
    into_project = any(d.startswith(PROJECT_PREFIX) for d in destinations)
    if options and not (project.strip() or into_project):
        raise ConfigurationError(
            f'{where}: deidentify_options needs deidentify = "PROJECT" or a project: destination'
        )
    if project.strip() and into_project:
        raise ConfigurationError(
            f"{where}: a project: destination de-identifies with its own project; "
            "deidentify is for peers and folders (write two rules)"
        )
    conditions = tuple(_condition(str(k), v, where) for k, v in when.items())
    return Route(
        name, str(on), destinations, conditions, syntax.strip(), attempts, project.strip(),
        tuple(o.strip() for o in options),
    )  # fmt: skip


def parse_routes(value: Any) -> tuple[Route, ...]:
    """The ``[[route]]`` tables of a configuration file, checked (names unique)."""
    return named_tables(value, Route, _route, "route", "routes")
