"""Webhooks: what the archive tells an HTTP endpoint when objects are stored, studies
become stable, or objects are deleted or corrected.

A webhook is a ``[[webhook]]`` table of the configuration file::

    [[webhook]]
    name = "ai-node"                      # letters, digits, . _ - (at most 24)
    url = "https://ai.example.org/hook"
    events = ["stable_study", "deleted"]  # of EVENTS; all of them when left out
    secret = "env:AI_HOOK_SECRET"         # the variable holds the HMAC key
    max_attempts = 10                     # then the delivery is given up (logged)
    timeout = 10                          # seconds per attempt

Each delivery is a JSON body signed with HMAC-SHA256 of the body under the secret,
sent as ``X-Dicomhub-Signature: sha256=HEX`` (GitHub's form), so the receiver can
tell the archive's calls from anyone else's. The events come from the change log
(:mod:`dicomhub.model.changes`), in its order, at least once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from dicomhub.errors import ConfigurationError
from dicomhub.model.tables import named_tables

__all__ = ["EVENTS", "Webhook", "backoff", "event_of", "parse_webhooks", "signature"]

#: Event name per (change type, level) of the change log.
_EVENT_OF: Final[dict[tuple[str, str], str]] = {
    ("created", "IMAGE"): "stored",
    ("stable", "STUDY"): "stable_study",
    ("stable", "SERIES"): "stable_series",
    ("deleted", "PATIENT"): "deleted",
    ("deleted", "STUDY"): "deleted",
    ("deleted", "SERIES"): "deleted",
    ("deleted", "IMAGE"): "deleted",
    ("updated", "STUDY"): "updated",
    ("rejected", "IMAGE"): "rejected",  # by a rejection note (IHE IOCM)
}
EVENTS: Final = frozenset(_EVENT_OF.values())
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,24}$")
_FIELDS: Final = {"name", "url", "events", "secret", "max_attempts", "timeout"}


def event_of(change_type: str, level: str) -> str | None:
    """The webhook event a change log entry is, if any."""
    return _EVENT_OF.get((change_type, level))


def signature(key: bytes, body: bytes) -> str:
    """The ``X-Dicomhub-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def backoff(attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: 1, 2, 4, ... 300."""
    return float(min(300, 2 ** max(0, attempts - 1)))


@dataclass(frozen=True, slots=True)
class Webhook:
    """One configured webhook (see the module docstring)."""

    name: str
    url: str
    secret: str  # "env:VARIABLE": the key itself never is in the configuration
    events: frozenset[str] = EVENTS
    max_attempts: int = 10
    timeout: float = 10.0

    def wants(self, event: str) -> bool:
        return event in self.events

    def key(self, environ: Mapping[str, str]) -> bytes:
        """The HMAC key from the environment; :class:`ConfigurationError` when unset."""
        variable = self.secret.removeprefix("env:")
        value = environ.get(variable, "")
        if not value:
            raise ConfigurationError(f"webhook {self.name}: the secret variable {variable} is not set")
        return value.encode("utf-8")


def _webhook(table: Mapping[str, Any], where: str) -> Webhook:
    unknown = set(table) - _FIELDS
    if unknown:
        raise ConfigurationError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    name, url, secret = table.get("name"), table.get("url"), table.get("secret")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(f"{where}: name must be 1 to 24 letters, digits, '.', '_' or '-'")
    parts = urlsplit(url if isinstance(url, str) else "")
    if not isinstance(url, str) or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"{where}: url must be an http:// or https:// URL")
    if not isinstance(secret, str) or not secret.startswith("env:") or len(secret) < 5:
        raise ConfigurationError(f"{where}: secret must be env:VARIABLE (the variable holds the HMAC key)")
    events = table.get("events", sorted(EVENTS))
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise ConfigurationError(f"{where}: events must be a list of {', '.join(sorted(EVENTS))}")
    if set(events) - EVENTS:
        raise ConfigurationError(f"{where}: unknown event {sorted(set(events) - EVENTS)[0]!r}")
    attempts, timeout = table.get("max_attempts", 10), table.get("timeout", 10.0)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 100:
        raise ConfigurationError(f"{where}: max_attempts must be an integer from 1 to 100")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0.1 <= timeout <= 300:
        raise ConfigurationError(f"{where}: timeout must be 0.1 to 300 seconds")
    return Webhook(name, url, secret, frozenset(events), attempts, float(timeout))


def parse_webhooks(value: Any) -> tuple[Webhook, ...]:
    """The ``[[webhook]]`` tables of a configuration file, checked (names unique)."""
    return named_tables(value, Webhook, _webhook, "webhook", "webhooks")
