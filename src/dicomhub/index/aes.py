"""The application entity registry table (see :mod:`dicomhub.model.applicationentity`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Integer,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
)

from dicomhub.errors import Conflict
from dicomhub.index import engine as engines
from dicomhub.index.schema import metadata
from dicomhub.model.applicationentity import ApplicationEntity

__all__ = ["ApplicationEntityRepository", "application_entity"]

_PK = BigInteger().with_variant(Integer(), "sqlite")

application_entity = Table(
    "application_entity",
    metadata,
    Column("pk", _PK, primary_key=True, autoincrement=True),
    Column("ae_title", String(16), nullable=False, unique=True),
    Column("host", String(255), nullable=False),
    Column("port", Integer),  # NULL: calls us only, never called
    Column("principal", String(128), nullable=False),  # "": the AE title
    Column("tls_subject", String(255), nullable=False),  # "": no certificate name required
    Column("description", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


def _entity(row: Any) -> ApplicationEntity:
    created = row.created_at
    if created is not None and created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)  # SQLite drops the zone
    return ApplicationEntity(
        row.ae_title, row.host, row.port, row.principal, row.tls_subject, row.description, created
    )


class ApplicationEntityRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, entity: ApplicationEntity) -> ApplicationEntity:
        """Insert ``entity``; :class:`Conflict` when its AE title is registered already."""
        created = dt.datetime.now(dt.UTC)
        with engines.write(self.engine) as conn:
            exists = conn.execute(
                select(application_entity.c.pk).where(application_entity.c.ae_title == entity.ae_title)
            ).first()
            if exists is not None:
                raise Conflict(f"AE title {entity.ae_title} is registered already")
            conn.execute(
                insert(application_entity).values(
                    ae_title=entity.ae_title,
                    host=entity.host,
                    port=entity.port,
                    principal=entity.principal,
                    tls_subject=entity.tls_subject,
                    description=entity.description,
                    created_at=created,
                )
            )
        return ApplicationEntity(
            entity.ae_title,
            entity.host,
            entity.port,
            entity.principal,
            entity.tls_subject,
            entity.description,
            created,
        )

    def get(self, ae_title: str) -> ApplicationEntity | None:
        with engines.read(self.engine) as conn:
            row = conn.execute(
                select(application_entity).where(application_entity.c.ae_title == ae_title)
            ).first()
        return None if row is None else _entity(row)

    def all(self) -> list[ApplicationEntity]:
        with engines.read(self.engine) as conn:
            rows = conn.execute(select(application_entity).order_by(application_entity.c.ae_title)).all()
        return [_entity(r) for r in rows]

    def remove(self, ae_title: str) -> bool:
        with engines.write(self.engine) as conn:
            result = conn.execute(delete(application_entity).where(application_entity.c.ae_title == ae_title))
        return bool(result.rowcount)
