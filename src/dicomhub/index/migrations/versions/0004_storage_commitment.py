"""Storage Commitment Push Model transactions.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "storage_commitment",
        sa.Column("transaction_uid", sa.String(64), primary_key=True),
        sa.Column("calling_ae_title", sa.String(16), nullable=False),
        sa.Column("peer_host", sa.String(64)),
        sa.Column("items_json", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("result_json", sa.Text),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("delivered_at", _TS),
    )
    op.create_index("ix_storage_commitment_due", "storage_commitment", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("storage_commitment")
