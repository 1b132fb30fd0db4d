"""Peers: every remote system dicomhub talks to, in one registry.

A peer is known by ``name`` (for a DICOM peer usually its AE title) and has
whatever ways to reach it apply: a DIMSE address (``ae_title``, ``host``,
``port``, ``tls``), a DICOMweb base URL with its credentials, or a folder.
Its ``roles`` say what it may do: send us objects, query, retrieve, receive
C-MOVE sub-operations and Storage Commitment reports, be a migration source
or target. Peers come from the index (managed by CLI and REST) or from the
configuration file (read-only at run time); :attr:`Peer.source` tells which.

This replaces three overlapping registries: ``--remote-ae`` destinations,
registered application entities (``dicomhub ae``) and remote archives
(``dicomhub remote``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from dicomhub.model.applicationentity import ApplicationEntity, check_ae_title
from dicomhub.model.migration import RemoteArchive, RemoteKind

__all__ = [
    "DIMSE_ROLES",
    "Peer",
    "PeerSource",
    "Role",
    "check_name",
    "check_peer",
    "parse_roles",
]


class Role(enum.Enum):
    """What a peer may do, or what it is used for."""

    STORE = "store"  # may send us objects (C-STORE, and ask for Storage Commitment)
    QUERY = "query"  # may query us (C-FIND)
    RETRIEVE = "retrieve"  # may retrieve from us (C-MOVE, C-GET)
    MOVE_DESTINATION = "move-destination"  # receives C-MOVE sub-operations and commitment reports
    MIGRATION_SOURCE = "migration-source"  # inventory / reconcile / migrate pulls from it
    MIGRATION_TARGET = "migration-target"  # migrate --to pushes to it


#: The roles of a DICOM peer that calls us for everything (what ``dicomhub ae add``
#: and ``--remote-ae`` register: before the peer registry they were not limited).
DIMSE_ROLES = frozenset({Role.STORE, Role.QUERY, Role.RETRIEVE})


class PeerSource(enum.Enum):
    INDEX = "index"  # managed by `dicomhub peer` and /admin/peers
    CONFIG = "config"  # [[peer]] in the configuration file or --remote-ae: read-only


# A peer's name: letters, digits, spaces and punctuation of an AE title, but no
# slash or backslash and no leading dot or dash (it appears in file names, URLs
# and command lines), at most 64 characters.
_NAME = re.compile(r"^[A-Za-z0-9_][\x20-\x2e\x30-\x5b\x5d-\x7e]{0,63}$")
_AUTH = re.compile(r"^(bearer:\S+|basic:[^:\s]+:\S*|env:[A-Za-z_][A-Za-z0-9_]*)$")
_RETRIEVE = ("auto", "move", "get")


def check_name(name: str) -> str:
    """``name`` stripped, or ValueError when it cannot name a peer."""
    stripped = name.strip()
    if not _NAME.match(stripped):
        raise ValueError(
            f"peer name {name!r}: 1-64 characters, starting with a letter, digit or '_', "
            "no slash or backslash"
        )
    return stripped


def parse_roles(roles: Iterable[str] | str) -> frozenset[Role]:
    """Roles from their names (``store,query`` or a list); ValueError for an unknown one."""
    items = roles.split(",") if isinstance(roles, str) else list(roles)
    out = set()
    for item in items:
        text = str(item).strip().lower().replace("_", "-")
        if not text:
            continue
        try:
            out.add(Role(text))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise ValueError(f"unknown peer role {item!r} (one of {known})") from None
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Peer:
    """One remote system. ``auth``: ``bearer:TOKEN``, ``basic:USER:PASSWORD`` or
    ``env:VARIABLE`` (the variable holds one of the other two, read when used)."""

    name: str
    ae_title: str = ""
    host: str = ""
    port: int | None = None
    tls: bool = False
    dicomweb_url: str = ""
    auth: str = ""
    folder: str = ""
    principal: str = ""  # whose grants it acts with; "": its AE title (or name)
    tls_subject: str = ""  # the Common Name its client certificate must carry
    roles: frozenset[Role] = field(default_factory=frozenset)
    migrate_via: RemoteKind | None = None  # None: DICOMweb if a URL, else a folder if one, else DIMSE
    retrieve: str = "auto"
    find_limit: int = 0
    description: str = ""
    source: PeerSource = PeerSource.INDEX
    created_at: datetime | None = None

    @property
    def principal_name(self) -> str:
        return self.principal or self.ae_title or self.name

    @property
    def dimse(self) -> bool:
        """Whether it can be called over DIMSE (an AE title, a host and a port)."""
        return bool(self.ae_title and self.host and self.port)

    @property
    def via(self) -> RemoteKind:
        if self.migrate_via is not None:
            return self.migrate_via
        if self.dicomweb_url:
            return RemoteKind.DICOMWEB
        if self.folder:
            return RemoteKind.FOLDER
        return RemoteKind.DIMSE

    def may(self, role: Role) -> bool:
        return role in self.roles

    def entity(self) -> ApplicationEntity:
        """As the registered application entity it was before the peer registry."""
        return ApplicationEntity(
            self.ae_title,
            self.host,
            self.port,
            self.principal,
            self.tls_subject,
            self.description,
            self.created_at,
        )

    def remote(self, auth: str | None = None) -> RemoteArchive:
        """As the remote archive a migration talks to (``auth``: the resolved credentials)."""
        return RemoteArchive(
            self.name,
            self.via,
            ae_title=self.ae_title,
            host=self.host,
            port=self.port or 0,
            url=self.dicomweb_url,
            auth=self.auth if auth is None else auth,
            path=self.folder,
            retrieve=self.retrieve,
            find_limit=self.find_limit,
            tls=self.tls,
        )

    def public(self) -> dict[str, Any]:
        """As JSON, without the credentials: only how they are held."""
        return {
            "name": self.name,
            "ae_title": self.ae_title or None,
            "host": self.host or None,
            "port": self.port,
            "tls": self.tls,
            "dicomweb_url": self.dicomweb_url or None,
            "auth": _auth_kind(self.auth),
            "folder": self.folder or None,
            "principal": self.principal_name,
            "tls_subject": self.tls_subject or None,
            "roles": sorted(r.value for r in self.roles),
            "migrate_via": self.via.value if self.migration_peer else None,
            "retrieve": self.retrieve,
            "find_limit": self.find_limit,
            "description": self.description,
            "source": self.source.value,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }

    @property
    def migration_peer(self) -> bool:
        return bool(self.roles & {Role.MIGRATION_SOURCE, Role.MIGRATION_TARGET})

    def describe(self) -> str:
        """One line for ``peer list`` (never the credentials)."""
        parts = []
        if self.ae_title:
            address = f"{self.host}:{self.port}" if self.port else f"{self.host} (calling only)"
            parts.append(f"{self.ae_title}@{address}" + (" tls" if self.tls else ""))
        if self.dicomweb_url:
            kind = _auth_kind(self.auth)
            parts.append(self.dicomweb_url + (f" ({kind} auth)" if kind else ""))
        if self.folder:
            parts.append(f"folder {self.folder}")
        return " ".join(parts)


def _auth_kind(auth: str) -> str | None:
    """How the credentials are held: bearer, basic, env:VARIABLE (the name is no secret)."""
    if not auth:
        return None
    kind, _, rest = auth.partition(":")
    return f"env:{rest}" if kind == "env" else kind


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username
        or parts.password
        or parts.query
        or parts.fragment
        or any(c.isspace() for c in url)
    ):
        raise ValueError(
            f"DICOMweb URL {url!r}: an absolute http(s) URL without credentials, query or fragment "
            "(give credentials with --auth)"
        )
    return url.rstrip("/")


def check_peer(peer: Peer) -> Peer:
    """``peer`` normalised, or ValueError naming what is wrong with it."""
    name = check_name(peer.name)
    ae_title = check_ae_title(peer.ae_title) if peer.ae_title.strip() else ""
    host = peer.host.strip().strip("[]")
    if host and (len(host) > 255 or any(c.isspace() or c in "/\\@" for c in host)):
        raise ValueError(f"host {peer.host!r}: a host name or address")
    if peer.port is not None and not 0 < peer.port < 65536:
        raise ValueError(f"port {peer.port}: 1-65535")
    if ae_title and not host:
        raise ValueError(f"peer {name}: an AE title needs a host (the one it connects from or listens on)")
    if peer.port is not None and not (ae_title and host):
        raise ValueError(f"peer {name}: a port needs an AE title and a host")
    url = _check_url(peer.dicomweb_url.strip()) if peer.dicomweb_url.strip() else ""
    if peer.auth and not _AUTH.match(peer.auth):
        raise ValueError("auth: bearer:TOKEN, basic:USER:PASSWORD or env:VARIABLE")
    if peer.auth and not url:
        raise ValueError(f"peer {name}: credentials are for a DICOMweb URL, and it has none")
    if len(peer.principal) > 128 or len(peer.tls_subject) > 255 or len(peer.folder) > 4096:
        raise ValueError("principal: at most 128 characters; TLS subject: at most 255")
    if peer.retrieve not in _RETRIEVE:
        raise ValueError("retrieve is auto, move or get")
    if peer.find_limit < 0:
        raise ValueError("find limit: 0 (unknown) or more")
    if not (ae_title or url or peer.folder):
        raise ValueError(f"peer {name}: give an AE title and host, a DICOMweb URL or a folder")
    checked = Peer(
        name,
        ae_title,
        host,
        peer.port,
        peer.tls,
        url,
        peer.auth,
        peer.folder,
        peer.principal.strip(),
        peer.tls_subject.strip(),
        peer.roles,
        peer.migrate_via,
        peer.retrieve,
        peer.find_limit,
        peer.description,
        peer.source,
        peer.created_at,
    )
    via = checked.via
    if checked.migration_peer:
        if via is RemoteKind.DIMSE and not checked.dimse:
            raise ValueError(f"peer {name}: a DIMSE migration peer needs an AE title, a host and a port")
        if via is RemoteKind.DICOMWEB and not url:
            raise ValueError(f"peer {name}: migration over DICOMweb needs a DICOMweb URL")
        if via is RemoteKind.FOLDER and not checked.folder:
            raise ValueError(f"peer {name}: migration from a folder needs a folder")
    if Role.MOVE_DESTINATION in checked.roles and not checked.dimse:
        raise ValueError(f"peer {name}: a move destination needs an AE title, a host and a port")
    return checked
