"""The association log (DIMSE statistics for operators).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "association_log",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("calling_ae_title", sa.String(16), nullable=False),
        sa.Column("called_ae_title", sa.String(16), nullable=False),
        sa.Column("peer_host", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("milliseconds", sa.Integer, nullable=False),
        sa.Column("accepted_contexts", sa.Integer, nullable=False),
        sa.Column("rejected_contexts", sa.Integer, nullable=False),
        sa.Column("contexts_json", sa.Text),
        sa.Column("operations_json", sa.Text, nullable=False),
        sa.Column("bytes_received", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_association_log_started", "association_log", ["started_at"])
    op.create_index("ix_association_log_calling", "association_log", ["calling_ae_title"])


def downgrade() -> None:
    op.drop_table("association_log")
