"""Corrections of stored studies: who, when, why, old and new values, UID map;
the study attributes of studies corrected in place (see dicomhub.index.schema.correction).

Revision ID: 0029
Revises: 0027
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0029"
down_revision = "0027"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "correction",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("new_study_instance_uid", sa.String(64), nullable=False),
        sa.Column("made_by", sa.String(128), nullable=False),
        sa.Column("made_at", _UTC, nullable=False),
        sa.Column("reason", sa.String(256), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("original_values_json", sa.Text, nullable=False),
        sa.Column("new_values_json", sa.Text, nullable=False),
        sa.Column("uid_map_json", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_correction_study", "correction", ["study_instance_uid"])
    op.create_index("ix_correction_new_study", "correction", ["new_study_instance_uid"])
    op.create_table(
        "study_coercion",
        sa.Column("study_instance_uid", sa.String(64), primary_key=True),
        sa.Column("values_json", sa.Text, nullable=False),
        sa.Column("modifying_system", sa.String(64), nullable=False),
        sa.Column("modified_at", _UTC, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("study_coercion")
    op.drop_index("ix_correction_new_study", "correction")
    op.drop_index("ix_correction_study", "correction")
    op.drop_table("correction")
