"""IOD validation: checked objects per source and their findings.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "validation_instance",
        sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("source_ae_title", sa.String(16)),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("warnings", sa.Integer, nullable=False),
        sa.Column("rejected", sa.Boolean, nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_validation_instance_source_ae_title", "validation_instance", ["source_ae_title"])
    op.create_table(
        "validation_finding",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(8), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("module", sa.String(96), nullable=False),
        sa.Column("attribute", sa.String(256), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_index("ix_validation_finding_sop_instance_uid", "validation_finding", ["sop_instance_uid"])


def downgrade() -> None:
    op.drop_table("validation_finding")
    op.drop_table("validation_instance")
