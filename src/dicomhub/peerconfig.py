"""Peers of the configuration file: ``[[peer]]`` tables, and ``--remote-ae`` as a shorthand.

Kept out of :mod:`dicomhub.config` so that the settings loader only gains a
``peers`` field. A ``[[peer]]`` table has the fields of
:class:`dicomhub.model.peer.Peer`::

    [[peer]]
    name = "PACS"                 # for a DICOM peer, usually its AE title
    ae_title = "PACS"
    host = "10.0.0.9"
    port = 104
    roles = ["store", "query", "retrieve", "move-destination"]

    [[peer]]
    name = "cloud"
    dicomweb_url = "https://pacs.example.org/dicomweb"
    auth = "env:CLOUD_TOKEN"      # the variable holds bearer:TOKEN or basic:USER:PASSWORD
    roles = ["migration-source"]

Such peers are read-only at run time (``dicomhub peer list`` shows their source).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from dicomhub.errors import ConfigurationError
from dicomhub.model.migration import RemoteKind
from dicomhub.model.peer import DIMSE_ROLES, Peer, PeerSource, Role, check_peer, parse_roles

__all__ = ["configured_peers", "parse_peers"]

_FIELDS = {
    "name", "ae_title", "host", "port", "tls", "dicomweb_url", "auth", "folder", "principal",
    "tls_subject", "roles", "migrate_via", "retrieve", "find_limit", "description",
}  # fmt: skip
_ALIASES = {"aet": "ae_title", "url": "dicomweb_url", "path": "folder"}
_TYPES: dict[str, type | tuple[type, ...]] = {
    "port": int, "tls": bool, "find_limit": int, "roles": (list, str),
}  # fmt: skip


class _RemoteAE(Protocol):
    @property
    def ae_title(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


def _peer(table: Mapping[str, Any], where: str) -> Peer:
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = _ALIASES.get(key.replace("-", "_"), key.replace("-", "_"))
        if name not in _FIELDS:
            raise ConfigurationError(f"{where}: unknown key {key!r}")
        wanted = _TYPES.get(name, str)
        if isinstance(value, bool) and wanted is int or not isinstance(value, wanted):
            raise ConfigurationError(f"{where}: {key} has the wrong type")
        values[name] = value
    if "name" not in values:
        if "ae_title" not in values:
            raise ConfigurationError(f"{where}: a peer needs a name (or an AE title)")
        values["name"] = values["ae_title"]
    try:
        values["roles"] = parse_roles(values.get("roles", ()))
        values["migrate_via"] = RemoteKind(values["migrate_via"]) if values.get("migrate_via") else None
        return check_peer(Peer(**values, source=PeerSource.CONFIG))
    except ValueError as exc:
        raise ConfigurationError(f"{where}: {exc}") from exc


def parse_peers(value: Any) -> tuple[Peer, ...]:
    """The ``[[peer]]`` tables of a configuration file, checked.

    Raises
    ------
    ConfigurationError
        For a value that is not a list of tables, an unknown key, a value of the
        wrong type or a peer that :func:`dicomhub.model.peer.check_peer` refuses.
    """
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigurationError("peers are [[peer]] tables of the configuration file")
    return tuple(_peer(t, f"[[peer]] #{i + 1}") for i, t in enumerate(value))


def configured_peers(peers: Iterable[Peer], remote_aes: Iterable[_RemoteAE]) -> list[Peer]:
    """The ``[[peer]]`` peers and, for each ``--remote-ae AET=HOST:PORT``, a peer named
    by its AE title that may store, query and retrieve (``--known-aes-only`` let it
    do all of that before the registry) and is a move destination."""
    out = list(peers)
    for remote in remote_aes:
        out.append(
            Peer(
                remote.ae_title,
                ae_title=remote.ae_title,
                host=remote.host,
                port=remote.port,
                roles=DIMSE_ROLES | {Role.MOVE_DESTINATION},
                description="--remote-ae",
                source=PeerSource.CONFIG,
            )
        )
    return out
