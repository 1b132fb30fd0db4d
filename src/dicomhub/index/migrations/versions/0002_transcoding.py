"""Compression at rest (original syntax and digest) and the decode check.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instance") as batch:
        batch.add_column(sa.Column("original_transfer_syntax_uid", sa.String(64)))
        batch.add_column(sa.Column("original_sha256", sa.String(64)))
    op.create_table(
        "decode_check",
        sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_decode_check_syntax", "decode_check", ["transfer_syntax_uid", "sop_class_uid", "ok"]
    )
    op.create_table(
        "worker_cursor",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("worker_cursor")
    op.drop_table("decode_check")
    with op.batch_alter_table("instance") as batch:
        batch.drop_column("original_sha256")
        batch.drop_column("original_transfer_syntax_uid")
