"""The outbound queue of routing (see dicomhub.index.schema.routing).

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "route_item",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("route", sa.String(24), nullable=False),
        sa.Column("destination", sa.String(1024), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("not_before", _UTC, nullable=False),
        sa.Column("owner", sa.String(80)),
        sa.Column("lease_until", _UTC),
        sa.Column("last_error", sa.Text, nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.UniqueConstraint("route", "destination", "sop_instance_uid", name="uq_route_item"),
    )
    op.create_index("ix_route_item_due", "route_item", ["state", "not_before"])
    op.create_index("ix_route_item_study", "route_item", ["study_instance_uid"])


def downgrade() -> None:
    op.drop_index("ix_route_item_study", table_name="route_item")
    op.drop_index("ix_route_item_due", table_name="route_item")
    op.drop_table("route_item")
