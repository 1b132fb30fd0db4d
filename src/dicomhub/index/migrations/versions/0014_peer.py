"""One registry of peers: registered AEs and remote archives become rows of ``peer``.

Every row of ``application_entity`` becomes a peer named by its AE title with
the roles store, query and retrieve (and move-destination when it has a port:
it was a C-MOVE destination). Every row of ``migration_remote`` becomes a peer
with the roles migration-source and (but for a folder) migration-target and
``migrate_via`` its kind. When a remote archive's name is also a registered AE
title, the two are one peer if their DIMSE addresses agree (or the remote is
not DIMSE), else the remote is renamed ``NAME-remote`` (its jobs and inventory
follow it). ``migration_remote`` keeps only the inventory state of a peer,
keyed by the peer's name: its connection columns are dropped (plain ALTER
TABLE DROP COLUMN, SQLite 3.35 or later: a batch copy of the table would
cascade-delete the inventories that reference it). ``application_entity`` is
dropped.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_DIMSE_ROLES = ["query", "retrieve", "store"]
_REMOTE_COLUMNS = ("kind", "ae_title", "host", "port", "url", "auth", "path", "retrieve", "find_limit")

_peer = sa.table(
    "peer",
    *(
        sa.column(c)
        for c in (
            "name", "ae_title", "host", "port", "tls", "dicomweb_url", "auth", "folder", "principal",
            "tls_subject", "roles", "migrate_via", "retrieve", "find_limit", "description",
            "created_at", "updated_at",
        )
    ),
)  # fmt: skip
_ae = sa.table(
    "application_entity",
    *(
        sa.column(c)
        for c in ("ae_title", "host", "port", "principal", "tls_subject", "description", "created_at")
    ),
)
_remote = sa.table("migration_remote", sa.column("pk"), sa.column("name"), *map(sa.column, _REMOTE_COLUMNS))


def _roles(roles: set[str]) -> str:
    return ",".join(sorted(roles))


def upgrade() -> None:
    op.create_table(
        "peer",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("ae_title", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer),
        sa.Column("tls", sa.Boolean, nullable=False),
        sa.Column("dicomweb_url", sa.Text, nullable=False),
        sa.Column("auth", sa.Text, nullable=False),
        sa.Column("folder", sa.Text, nullable=False),
        sa.Column("principal", sa.String(128), nullable=False),
        sa.Column("tls_subject", sa.String(255), nullable=False),
        sa.Column("roles", sa.String(255), nullable=False),
        sa.Column("migrate_via", sa.String(16), nullable=False),
        sa.Column("retrieve", sa.String(8), nullable=False),
        sa.Column("find_limit", sa.Integer, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_peer_ae_title", "peer", ["ae_title"])
    conn = op.get_bind()
    peers: dict[str, dict[str, Any]] = {}
    for ae in conn.execute(sa.select(_ae)).all():
        roles = set(_DIMSE_ROLES) | ({"move-destination"} if ae.port is not None else set())
        peers[ae.ae_title] = {
            "name": ae.ae_title, "ae_title": ae.ae_title, "host": ae.host, "port": ae.port, "tls": False,
            "dicomweb_url": "", "auth": "", "folder": "", "principal": ae.principal,
            "tls_subject": ae.tls_subject, "roles": roles, "migrate_via": "", "retrieve": "auto",
            "find_limit": 0, "description": ae.description, "created_at": ae.created_at,
            "updated_at": ae.created_at,
        }  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    for r in conn.execute(sa.select(_remote).order_by(_remote.c.pk)).all():
        roles = {"migration-source"} | ({"migration-target"} if r.kind != "folder" else set())
        dimse = r.kind == "dimse"
        name = r.name
        existing = peers.get(name)
        if (
            existing is not None
            and dimse
            and ((existing["ae_title"], existing["host"], existing["port"]) != (r.ae_title, r.host, r.port))
        ):
            base = name[: 64 - len("-remote")] + "-remote"
            name, n = base, 2
            while name in peers:
                name = f"{base[: 64 - len(str(n)) - 1]}-{n}"
                n += 1
            conn.execute(sa.update(_remote).where(_remote.c.pk == r.pk).values(name=name))
            existing = None
        if existing is not None:
            existing["roles"] |= roles
            existing.update(
                dicomweb_url=r.url, auth=r.auth, folder=r.path, migrate_via=r.kind,
                retrieve=r.retrieve, find_limit=r.find_limit,
            )  # fmt: skip
            continue
        peers[name] = {
            "name": name, "ae_title": r.ae_title if dimse else "", "host": r.host if dimse else "",
            "port": r.port if dimse else None, "tls": False, "dicomweb_url": r.url, "auth": r.auth,
            "folder": r.path, "principal": "", "tls_subject": "", "roles": roles, "migrate_via": r.kind,
            "retrieve": r.retrieve, "find_limit": r.find_limit, "description": "", "created_at": now,
            "updated_at": now,
        }  # fmt: skip
    if peers:
        conn.execute(sa.insert(_peer), [{**p, "roles": _roles(p["roles"])} for p in peers.values()])
    op.drop_table("application_entity")
    for column in _REMOTE_COLUMNS:
        op.drop_column("migration_remote", column)


def downgrade() -> None:
    conn = op.get_bind()
    op.create_table(
        "application_entity",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("ae_title", sa.String(16), nullable=False, unique=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer),
        sa.Column("principal", sa.String(128), nullable=False),
        sa.Column("tls_subject", sa.String(255), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    for column, kind, default in (
        ("kind", sa.String(16), "dimse"), ("ae_title", sa.String(16), ""), ("host", sa.String(255), ""),
        ("port", sa.Integer, "0"), ("url", sa.Text, ""), ("auth", sa.Text, ""), ("path", sa.Text, ""),
        ("retrieve", sa.String(8), "auto"), ("find_limit", sa.Integer, "0"),
    ):  # fmt: skip
        op.add_column("migration_remote", sa.Column(column, kind, nullable=False, server_default=default))
    rows = conn.execute(sa.select(_peer)).all()
    aes = [
        {
            "ae_title": p.ae_title,
            "host": p.host,
            "port": p.port,
            "principal": p.principal,
            "tls_subject": p.tls_subject,
            "description": p.description,
            "created_at": p.created_at,
        }  # fmt: skip
        for p in rows
        if p.ae_title and set(p.roles.split(",")) & set(_DIMSE_ROLES)
    ]
    unique: dict[str, dict[str, Any]] = {}
    for a in aes:
        unique.setdefault(a["ae_title"], a)  # an AE title was unique in application_entity
    aes = list(unique.values())
    if aes:
        conn.execute(sa.insert(_ae), aes)
    state = sa.table(
        "migration_remote", sa.column("name"), sa.column("kind"), sa.column("inventory_complete"),
        sa.column("created_at"),
    )  # fmt: skip
    known = {r.name for r in conn.execute(sa.select(state.c.name)).all()}
    for p in rows:
        if p.name not in known and set(p.roles.split(",")) & {"migration-source", "migration-target"}:
            # A migration peer never used yet has no state row: give it one to carry it back.
            conn.execute(
                sa.insert(state).values(
                    name=p.name, kind="dimse", inventory_complete=False, created_at=p.created_at
                )
            )
        via = p.migrate_via or ("dicomweb" if p.dicomweb_url else "folder" if p.folder else "dimse")
        conn.execute(
            sa.update(_remote)
            .where(_remote.c.name == p.name)
            .values(
                kind=via,
                ae_title=p.ae_title,
                host=p.host,
                port=p.port or 0,
                url=p.dicomweb_url,
                auth=p.auth,
                path=p.folder,
                retrieve=p.retrieve,
                find_limit=p.find_limit,
            )  # fmt: skip
        )
    op.drop_index("ix_peer_ae_title", table_name="peer")
    op.drop_table("peer")
