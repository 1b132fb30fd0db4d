"""Rejected instances of IOCM rejection notes (see dicomhub.index.schema.rejection).

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rejected_instance",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("code_value", sa.String(16), nullable=False),
        sa.Column("coding_scheme", sa.String(16), nullable=False),
        sa.Column("rejection_note_uid", sa.String(64), nullable=False),
        sa.Column("rejected_by", sa.String(128), nullable=False),
        sa.Column("at", _UTC, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_rejected_instance_series", "rejected_instance", ["series_instance_uid"])
    op.create_index("ix_rejected_instance_study", "rejected_instance", ["study_instance_uid"])
    op.create_index("ix_rejected_instance_note", "rejected_instance", ["rejection_note_uid"])


def downgrade() -> None:
    op.drop_index("ix_rejected_instance_note", table_name="rejected_instance")
    op.drop_index("ix_rejected_instance_study", table_name="rejected_instance")
    op.drop_index("ix_rejected_instance_series", table_name="rejected_instance")
    op.drop_table("rejected_instance")
