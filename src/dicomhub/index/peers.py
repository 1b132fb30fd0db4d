"""The peer registry in the index (see :mod:`dicomhub.model.peer`; the table is
``peer`` in :mod:`dicomhub.index.schema.network`).

Only peers managed at run time are here; those of the configuration file are
held by :class:`dicomhub.services.peers.PeerService`. ``auth`` holds the
DICOMweb credentials as given: ``env:VARIABLE`` keeps the secret out of the
index (the variable is read when the peer is used), a literal token or
password is stored as is, readable by whoever can read the index.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Engine,
    delete,
    insert,
    select,
    update,
)

from dicomhub.errors import Conflict
from dicomhub.index import engine as engines
from dicomhub.index.schema import peer
from dicomhub.model.migration import RemoteKind
from dicomhub.model.peer import Peer, PeerSource, parse_roles
from dicomhub.model.timestamps import utc_now

__all__ = ["PeerRepository"]



def _values(p: Peer) -> dict[str, Any]:
    return {
        "name": p.name,
        "ae_title": p.ae_title,
        "host": p.host,
        "port": p.port,
        "tls": p.tls,
        "dicomweb_url": p.dicomweb_url,
        "auth": p.auth,
        "folder": p.folder,
        "principal": p.principal,
        "tls_subject": p.tls_subject,
        "roles": ",".join(sorted(r.value for r in p.roles)),
        "migrate_via": p.migrate_via.value if p.migrate_via is not None else "",
        "retrieve": p.retrieve,
        "find_limit": p.find_limit,
        "description": p.description,
    }


def _peer(row: Any) -> Peer:
    return Peer(
        name=row.name,
        ae_title=row.ae_title,
        host=row.host,
        port=row.port,
        tls=bool(row.tls),
        dicomweb_url=row.dicomweb_url,
        auth=row.auth,
        folder=row.folder,
        principal=row.principal,
        tls_subject=row.tls_subject,
        roles=parse_roles(row.roles),
        migrate_via=RemoteKind(row.migrate_via) if row.migrate_via else None,
        retrieve=row.retrieve,
        find_limit=row.find_limit,
        description=row.description,
        source=PeerSource.INDEX,
        created_at=row.created_at,
    )


class PeerRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, p: Peer) -> Peer:
        """Insert ``p``; :class:`Conflict` when its name is taken."""
        now = utc_now()
        with engines.write(self.engine) as conn:
            if conn.execute(select(peer.c.pk).where(peer.c.name == p.name)).first() is not None:
                raise Conflict(f"a peer named {p.name!r} is registered already")
            conn.execute(insert(peer).values(**_values(p), created_at=now, updated_at=now))
            row = conn.execute(select(peer).where(peer.c.name == p.name)).one()
        return _peer(row)

    def replace(self, p: Peer) -> Peer | None:
        """Overwrite the peer named ``p.name``; None when there is none."""
        with engines.write(self.engine) as conn:
            result = conn.execute(
                update(peer)
                .where(peer.c.name == p.name)
                .values(**_values(p), updated_at=utc_now())
            )
            if not result.rowcount:
                return None
            row = conn.execute(select(peer).where(peer.c.name == p.name)).one()
        return _peer(row)

    def get(self, name: str) -> Peer | None:
        with engines.read(self.engine) as conn:
            row = conn.execute(select(peer).where(peer.c.name == name)).first()
        return None if row is None else _peer(row)

    def with_ae_title(self, ae_title: str) -> list[Peer]:
        with engines.read(self.engine) as conn:
            rows = conn.execute(select(peer).where(peer.c.ae_title == ae_title).order_by(peer.c.name)).all()
        return [_peer(r) for r in rows]

    def all(self) -> list[Peer]:
        with engines.read(self.engine) as conn:
            rows = conn.execute(select(peer).order_by(peer.c.name)).all()
        return [_peer(r) for r in rows]

    def remove(self, name: str) -> bool:
        with engines.write(self.engine) as conn:
            result = conn.execute(delete(peer).where(peer.c.name == name))
        return bool(result.rowcount)
