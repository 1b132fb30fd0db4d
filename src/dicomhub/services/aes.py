"""The application entity registry: who may associate, from where, as whom.

With access control on, an association is accepted only from a registered
calling AE title, from an address of its registered host and, when a TLS
subject is registered, over DICOM TLS with a client certificate of that
Common Name. Registered AEs with a port are also C-MOVE destinations.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

from dicomhub.errors import DicomhubError, InvalidRequest, NotFound
from dicomhub.index.aes import ApplicationEntityRepository
from dicomhub.model.applicationentity import ApplicationEntity, check_ae_title
from dicomhub.model.audit import AuditAction, AuditEvent, AuditOutcome, AuditRecorder
from dicomhub.model.caller import Caller

__all__ = ["ApplicationEntityService", "AssociationRefused"]

# Host names are resolved again after this long: a peer that moves is
# followed within a minute, and an association does not wait on DNS each time.
_RESOLVE_TTL = 60.0


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


class ApplicationEntityService:
    def __init__(self, repo: ApplicationEntityRepository, audit: AuditRecorder | None = None) -> None:
        self.repo = repo
        self.audit = audit
        self._resolved: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    # -- the registry ---------------------------------------------------------

    def add(self, entity: ApplicationEntity, caller: Caller) -> ApplicationEntity:
        try:
            title = check_ae_title(entity.ae_title)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        host = entity.host.strip()
        if not host or len(host) > 255 or any(c.isspace() for c in host):
            raise InvalidRequest(f"host {entity.host!r}: a host name or address")
        if entity.port is not None and not 0 < entity.port < 65536:
            raise InvalidRequest(f"port {entity.port}: 1-65535")
        if len(entity.principal) > 128 or len(entity.tls_subject) > 255:
            raise InvalidRequest("principal: at most 128 characters; TLS subject: at most 255")
        added = self.repo.add(
            ApplicationEntity(
                title,
                host,
                entity.port,
                entity.principal.strip(),
                entity.tls_subject.strip(),
                entity.description,
            )
        )
        self._changed(caller, "ae-add", added)
        return added

    def remove(self, ae_title: str, caller: Caller) -> None:
        entity = self.repo.get(ae_title.strip())
        if entity is None or not self.repo.remove(entity.ae_title):
            raise NotFound(f"AE title {ae_title.strip()} is not registered")
        self._changed(caller, "ae-remove", entity)

    def list(self) -> list[ApplicationEntity]:
        return self.repo.all()

    def get(self, ae_title: str) -> ApplicationEntity | None:
        return self.repo.get(ae_title.strip())

    def destination(self, ae_title: str) -> tuple[str, int, str] | None:
        """(host, port, AE title) of a registered AE that listens, else None."""
        entity = self.get(ae_title)
        if entity is None or entity.port is None:
            return None
        return entity.host, entity.port, entity.ae_title

    def _changed(self, caller: Caller, change: str, entity: ApplicationEntity) -> None:
        if self.audit is None:
            return
        self.audit.record(
            AuditEvent(
                AuditAction.SECURITY_CHANGE,
                AuditOutcome.SUCCESS,
                caller,
                detail={
                    "change": change,
                    "ae_title": entity.ae_title,
                    "host": entity.host,
                    "port": entity.port,
                    "principal": entity.principal_name,
                    "tls_subject": entity.tls_subject,
                },
            )
        )

    # -- authentication ------------------------------------------------------

    def authenticate(
        self, calling_ae_title: str, peer_host: str, tls_subject: str | None
    ) -> ApplicationEntity:
        """The registered AE behind an association request.

        ``tls_subject`` is the Common Name of the verified client certificate
        (None without TLS or without a certificate).

        Raises
        ------
        AssociationRefused
            With the reason (for the log, never for the peer).
        """
        entity = self.get(calling_ae_title)
        if entity is None:
            raise AssociationRefused(f"calling AE title {calling_ae_title!r} is not registered")
        if not self._host_matches(entity.host, peer_host):
            raise AssociationRefused(
                f"calling AE title {entity.ae_title!r} is registered for host {entity.host}, not {peer_host}"
            )
        if entity.tls_subject and tls_subject != entity.tls_subject:
            got = "no client certificate" if tls_subject is None else f"certificate CN {tls_subject!r}"
            raise AssociationRefused(
                f"calling AE title {entity.ae_title!r} needs a client certificate with CN "
                f"{entity.tls_subject!r}, got {got}"
            )
        return entity

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
