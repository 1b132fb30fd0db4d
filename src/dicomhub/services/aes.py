"""``dicomhub ae``'s registry of application entities, now a view of the peer registry.

Kept so that the ``ae`` commands and their callers go on working: an AE
registered here is a peer named by its AE title with the roles store, query
and retrieve (and move-destination when it has a port). New code uses
:class:`dicomhub.services.peers.PeerService`.
"""

from __future__ import annotations

from dicomhub.errors import NotFound
from dicomhub.model.applicationentity import ApplicationEntity
from dicomhub.model.caller import Caller
from dicomhub.model.peer import DIMSE_ROLES, Peer, Role
from dicomhub.services.peers import AssociationRefused, PeerService

__all__ = ["ApplicationEntityService", "AssociationRefused"]


class ApplicationEntityService:
    def __init__(self, peers: PeerService) -> None:
        self.peers = peers

    def add(self, entity: ApplicationEntity, caller: Caller) -> ApplicationEntity:
        """Register ``entity`` as a peer (audited as ``ae-add``)."""
        roles = DIMSE_ROLES | ({Role.MOVE_DESTINATION} if entity.port is not None else set())
        peer = self.peers.add(
            Peer(
                entity.ae_title.strip(),
                ae_title=entity.ae_title,
                host=entity.host,
                port=entity.port,
                principal=entity.principal,
                tls_subject=entity.tls_subject,
                roles=frozenset(roles),
                description=entity.description,
            ),
            caller,
            change="ae-add",
        )
        return peer.entity()

    def remove(self, ae_title: str, caller: Caller) -> None:
        peer = self.peers.by_ae_title(ae_title)
        if peer is None:
            raise NotFound(f"AE title {ae_title.strip()} is not registered")
        self.peers.remove(peer.name, caller, change="ae-remove")

    def list(self) -> list[ApplicationEntity]:
        """The peers that may call us over DIMSE, as application entities."""
        return [p.entity() for p in self.peers.list() if p.ae_title and p.roles & DIMSE_ROLES]

    def get(self, ae_title: str) -> ApplicationEntity | None:
        peer = self.peers.by_ae_title(ae_title)
        return None if peer is None else peer.entity()

    def destination(self, ae_title: str) -> tuple[str, int, str] | None:
        """(host, port, AE title) of a C-MOVE destination, else None."""
        return self.peers.destination(ae_title)

    def authenticate(
        self, calling_ae_title: str, peer_host: str, tls_subject: str | None
    ) -> ApplicationEntity:
        """See :meth:`PeerService.authenticate`."""
        return self.peers.authenticate(calling_ae_title, peer_host, tls_subject).entity()
