"""The trash: deleted instances kept until they are purged (see dicomhub.index.schema.trash).

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "trash",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("patient_name", sa.String(324)),
        sa.Column("study_date", sa.String(18)),
        sa.Column("study_description", sa.String(64)),
        sa.Column("accession_number", sa.String(16)),
        sa.Column("modality", sa.String(16)),
        sa.Column("blob_key", sa.String(64), nullable=False, unique=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("original_transfer_syntax_uid", sa.String(64)),
        sa.Column("original_sha256", sa.String(64)),
        sa.Column("source_ae_title", sa.String(16)),
        sa.Column("received_at", _UTC, nullable=False),
        sa.Column("deleted_by", sa.String(128), nullable=False),
        sa.Column("deleted_at", _UTC, nullable=False),
        sa.Column("reason", sa.String(256), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_trash_study", "trash", ["study_instance_uid"])
    op.create_index("ix_trash_deleted_at", "trash", ["deleted_at"])


def downgrade() -> None:
    op.drop_index("ix_trash_deleted_at", table_name="trash")
    op.drop_index("ix_trash_study", table_name="trash")
    op.drop_table("trash")
