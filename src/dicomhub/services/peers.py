"""The peer registry: the one place dicomhub looks up the remote systems it knows.

Peers come from the configuration file (``[[peer]]`` tables and the
``--remote-ae`` shorthand; read-only at run time) and from the index (managed
by ``dicomhub peer`` and ``/admin/peers``). A name is unique across both, and
so is the AE title of a peer that calls us or receives from us (migration
peers may share one: several names for one remote archive). Everything that needs a peer asks here:

- C-MOVE: :meth:`PeerService.destination` (a peer with the role
  ``move-destination``);
- Storage Commitment: :meth:`PeerService.report_destination` (a peer with an
  AE title, a host and a port);
- ``--known-aes-only``: :meth:`PeerService.known`; with access control on,
  :meth:`PeerService.authenticate` (host, TLS subject) and
  :meth:`PeerService.permits` (its roles, per DIMSE service);
- migration: :meth:`PeerService.remote` (a migration-source or -target).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dicomhub.errors import ConfigurationError, Conflict, DicomhubError, InvalidRequest, NotFound
from dicomhub.index.peers import PeerRepository
from dicomhub.model.audit import AuditAction, AuditEvent, AuditOutcome, AuditRecorder
from dicomhub.model.caller import Caller
from dicomhub.model.migration import RemoteArchive, RemoteKind
from dicomhub.model.peer import DIMSE_ROLES, Peer, PeerSource, Role, check_peer, parse_roles

__all__ = ["UPDATABLE", "AssociationRefused", "PeerService", "coerce"]

# Host names are resolved again after this long: a peer that moves is
# followed within a minute, and an association does not wait on DNS each time.
_RESOLVE_TTL = 60.0

#: The fields ``update`` may change (everything but the name, the source and the time).
UPDATABLE = frozenset(
    f.name for f in dataclasses.fields(Peer) if f.name not in ("name", "source", "created_at")
)


class AssociationRefused(DicomhubError):
    """The calling AE may not associate (unknown, wrong host, wrong certificate)."""


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _identity(peer: Peer) -> bool:
    """Whether the peer speaks for its AE title: it calls us (store, query, retrieve) or
    receives from us (move destination). One peer only may do so per AE title; migration
    peers may share one (several names for one remote archive)."""
    return bool(peer.roles & (DIMSE_ROLES | {Role.MOVE_DESTINATION}))


def _checked(peer: Peer) -> Peer:
    try:
        return check_peer(peer)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc


def coerce(field: str, value: Any) -> Any:
    """A field value from JSON or the CLI, as :class:`Peer` holds it; InvalidRequest
    for a value of the wrong type."""
    if field == "roles":
        try:
            return parse_roles(value if isinstance(value, (str, list, tuple, set, frozenset)) else [])
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
    if field == "migrate_via":
        try:
            return RemoteKind(value) if value else None
        except ValueError:
            raise InvalidRequest("migrate_via is dimse, dicomweb or folder") from None
    if field in ("port",):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest("port must be an integer")
        return value
    if field == "find_limit":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest("find_limit must be an integer")
        return value
    if field == "tls":
        if not isinstance(value, bool):
            raise InvalidRequest("tls must be true or false")
        return value
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string")
    return value


class PeerService:
    """Peers of the configuration (``configured``) and of the index, as one registry.

    ``environ``: where ``env:VARIABLE`` credentials are read (the process
    bootstrap passes the process environment). ``on_remove``: called with the name of a removed
    peer (the migration service forgets its inventory and jobs).
    """

    def __init__(
        self,
        repo: PeerRepository,
        configured: Iterable[Peer] = (),
        audit: AuditRecorder | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.repo = repo
        self.audit = audit
        self.environ: Mapping[str, str] = {} if environ is None else environ
        self.on_remove: list[Callable[[str], None]] = []
        self.configured: dict[str, Peer] = {}
        titles: dict[str, str] = {}
        for peer in configured:
            try:
                peer = check_peer(dataclasses.replace(peer, source=PeerSource.CONFIG))
            except ValueError as exc:
                raise ConfigurationError(f"peer {peer.name!r} in the configuration: {exc}") from exc
            if peer.name in self.configured:
                raise ConfigurationError(f"peer {peer.name!r} is configured twice")
            if peer.ae_title and _identity(peer) and peer.ae_title in titles:
                raise ConfigurationError(
                    f"AE title {peer.ae_title} is configured for two peers: "
                    f"{titles[peer.ae_title]} and {peer.name}"
                )
            if _identity(peer):
                titles[peer.ae_title] = peer.name
            self.configured[peer.name] = peer
        self._resolved: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    # -- the registry ---------------------------------------------------------

    def list(self) -> list[Peer]:
        """Every peer, configured and registered, by name."""
        return sorted([*self.configured.values(), *self.repo.all()], key=lambda p: p.name)

    def get(self, name: str) -> Peer | None:
        name = name.strip()
        return self.configured.get(name) or self.repo.get(name)

    def require(self, name: str) -> Peer:
        peer = self.get(name)
        if peer is None:
            raise NotFound(f"no peer named {name.strip()!r} (see `dicomhub peer list`)")
        return peer

    def by_ae_title(self, ae_title: str) -> Peer | None:
        """The peer with this AE title: the one that speaks for it (see :func:`_identity`)
        if there is one, else a migration peer that uses it."""
        title = ae_title.strip()
        if not title:
            return None
        found = [p for p in self.configured.values() if p.ae_title == title]
        found += self.repo.with_ae_title(title)
        found.sort(key=lambda p: not _identity(p))
        return found[0] if found else None

    def add(self, peer: Peer, caller: Caller, change: str = "peer-add") -> Peer:
        """Register ``peer`` in the index.

        Raises
        ------
        InvalidRequest
            When a field is invalid (name, AE title, host, port, URL, credentials, roles).
        Conflict
            When its name or its AE title is taken (by the index or the configuration).
        """
        checked = _checked(dataclasses.replace(peer, source=PeerSource.INDEX, created_at=None))
        self._free(checked)
        added = self.repo.add(checked)
        self._changed(caller, change, added)
        return added

    def update(self, name: str, changes: Mapping[str, Any], caller: Caller) -> Peer:
        """Change fields of the registered peer ``name`` (values as JSON gives them)."""
        current = self._registered(name)
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise InvalidRequest(f"unknown peer fields: {', '.join(sorted(unknown))}")
        updated = _checked(dataclasses.replace(current, **{k: coerce(k, v) for k, v in changes.items()}))
        self._free(updated, current.name)
        replaced = self.repo.replace(updated)
        if replaced is None:
            raise NotFound(f"no peer named {name.strip()!r}")
        self._changed(caller, "peer-update", replaced)
        return replaced

    def put(self, name: str, fields: Mapping[str, Any], caller: Caller) -> tuple[Peer, bool]:
        """Create the peer ``name`` with ``fields``, or replace all of its fields; (peer, created)."""
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise InvalidRequest(f"unknown peer fields: {', '.join(sorted(unknown))}")
        peer = Peer(name, **{k: coerce(k, v) for k, v in fields.items()})
        if name.strip() in self.configured:
            raise Conflict(f"peer {name.strip()!r} is defined in the configuration file: read-only")
        if self.repo.get(name.strip()) is None:
            return self.add(peer, caller), True
        checked = _checked(peer)
        self._free(checked, checked.name)
        replaced = self.repo.replace(checked)
        if replaced is None:
            raise NotFound(f"no peer named {name.strip()!r}")
        self._changed(caller, "peer-update", replaced)
        return replaced, False

    def remove(self, name: str, caller: Caller, change: str = "peer-remove") -> None:
        """Remove the registered peer ``name`` (and, through ``on_remove``, its migration state)."""
        peer = self._registered(name)
        if not self.repo.remove(peer.name):
            raise NotFound(f"no peer named {name.strip()!r}")
        for forget in self.on_remove:
            forget(peer.name)
        self._changed(caller, change, peer)

    def _registered(self, name: str) -> Peer:
        if name.strip() in self.configured:
            raise Conflict(f"peer {name.strip()!r} is defined in the configuration file: read-only")
        return self.require(name)

    def _free(self, peer: Peer, replacing: str | None = None) -> None:
        """Conflict when ``peer``'s name or AE title belongs to another peer."""
        if peer.name in self.configured:
            raise Conflict(f"peer {peer.name!r} is defined in the configuration file")
        if replacing is None and self.repo.get(peer.name) is not None:
            raise Conflict(f"a peer named {peer.name!r} is registered already")
        if peer.ae_title and _identity(peer):
            other = self.by_ae_title(peer.ae_title)
            if other is not None and _identity(other) and other.name != replacing:
                raise Conflict(f"AE title {peer.ae_title} is registered already (peer {other.name})")

    def _changed(self, caller: Caller, change: str, peer: Peer) -> None:
        if self.audit is None:
            return
        self.audit.record(
            AuditEvent(
                AuditAction.SECURITY_CHANGE,
                AuditOutcome.SUCCESS,
                caller,
                detail={
                    "change": change,
                    "peer": peer.name,
                    "ae_title": peer.ae_title,
                    "host": peer.host,
                    "port": peer.port,
                    "dicomweb_url": peer.dicomweb_url or None,
                    "principal": peer.principal_name,
                    "tls_subject": peer.tls_subject,
                    "roles": sorted(r.value for r in peer.roles),
                },
            )
        )

    # -- lookups ----------------------------------------------------------------

    def known(self, ae_title: str) -> bool:
        """Whether a peer has this AE title (``--known-aes-only``)."""
        return self.by_ae_title(ae_title) is not None

    def permits(self, ae_title: str, role: Role) -> bool:
        """Whether the peer with this AE title has ``role``."""
        peer = self.by_ae_title(ae_title)
        return peer is not None and peer.may(role)

    def move_destination(self, ae_title: str) -> Peer | None:
        """The peer C-MOVE sub-operations to ``ae_title`` go to (it has the role
        move-destination and a DIMSE address), else None. The whole peer, so that
        the caller connects as it says (its ``tls``)."""
        peer = self.by_ae_title(ae_title)
        if peer is None or not peer.may(Role.MOVE_DESTINATION) or not peer.dimse:
            return None
        return peer

    def destination(self, ae_title: str) -> tuple[str, int, str] | None:
        """(host, port, AE title) of the C-MOVE destination ``ae_title``, else None."""
        peer = self.move_destination(ae_title)
        return None if peer is None else (peer.host, peer.port or 0, peer.ae_title)

    def report_peer(self, ae_title: str) -> Peer | None:
        """The peer a Storage Commitment report for ``ae_title`` goes to (one with a
        DIMSE address), else None. The whole peer: the report goes over TLS when
        its ``tls`` is set."""
        peer = self.by_ae_title(ae_title)
        if peer is None or not peer.dimse:
            return None
        return peer

    def report_destination(self, ae_title: str) -> tuple[str, int, str] | None:
        """(host, port, AE title) a Storage Commitment report for ``ae_title`` goes to."""
        peer = self.report_peer(ae_title)
        return None if peer is None else (peer.host, peer.port or 0, peer.ae_title)

    def remote(self, name: str, role: Role | None = None) -> RemoteArchive:
        """The migration peer ``name`` as the remote archive a migration talks to,
        with its credentials resolved. ``role``: the one this use needs (else
        either migration role)."""
        peer = self.require(name)
        needed = (role,) if role is not None else (Role.MIGRATION_SOURCE, Role.MIGRATION_TARGET)
        if not any(peer.may(r) for r in needed):
            wanted = " or ".join(r.value for r in needed)
            raise InvalidRequest(f"peer {peer.name} is not a {wanted} (see `dicomhub peer update --roles`)")
        return peer.remote(self.credentials(peer))

    def credentials(self, peer: Peer) -> str:
        """The DICOMweb credentials of ``peer``, an ``env:VARIABLE`` read now."""
        if not peer.auth.startswith("env:"):
            return peer.auth
        variable = peer.auth[4:]
        value = self.environ.get(variable, "")
        if not value.startswith(("bearer:", "basic:")):
            raise ConfigurationError(
                f"peer {peer.name}: the environment variable {variable} must hold "
                "bearer:TOKEN or basic:USER:PASSWORD"
            )
        return value

    # -- authentication ------------------------------------------------------

    def authenticate(self, calling_ae_title: str, peer_host: str, tls_subject: str | None) -> Peer:
        """The peer behind an association request.

        ``tls_subject`` is the Common Name of the verified client certificate
        (None without TLS or without a certificate).

        Raises
        ------
        AssociationRefused
            With the reason (for the log, never for the peer).
        """
        peer = self.by_ae_title(calling_ae_title)
        if peer is None:
            raise AssociationRefused(f"calling AE title {calling_ae_title!r} is not registered")
        if not self._host_matches(peer.host, peer_host):
            raise AssociationRefused(
                f"calling AE title {peer.ae_title!r} is registered for host {peer.host}, not {peer_host}"
            )
        if peer.tls_subject and tls_subject != peer.tls_subject:
            got = "no client certificate" if tls_subject is None else f"certificate CN {tls_subject!r}"
            raise AssociationRefused(
                f"calling AE title {peer.ae_title!r} needs a client certificate with CN "
                f"{peer.tls_subject!r}, got {got}"
            )
        return peer

    def _host_matches(self, registered: str, peer_host: str) -> bool:
        peer = _address(peer_host)
        if peer is None:
            return False
        return any(_address(a) == peer for a in self._addresses(registered))

    def _addresses(self, host: str) -> frozenset[str]:
        if _address(host) is not None:
            return frozenset({host})
        now = time.monotonic()
        with self._lock:
            cached = self._resolved.get(host)
        if cached is not None and now - cached[0] < _RESOLVE_TTL:
            return cached[1]
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
            addresses = frozenset(str(i[4][0]) for i in infos)
        except OSError:
            addresses = frozenset()
        with self._lock:
            self._resolved[host] = (now, addresses)
        return addresses
