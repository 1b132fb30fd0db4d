"""Print jobs: their PDF, why they failed, and the Encapsulated PDF they were archived as.

Revision ID: 0021
Revises: 0020
Create Date: 2027-02-12
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot drop columns in place (downgrade), so alter through a copy.
    with op.batch_alter_table("print_job") as batch:
        batch.add_column(sa.Column("pdf_blob_key", sa.String(64), nullable=True))
        batch.add_column(sa.Column("pdf_size", sa.Integer, nullable=True))
        batch.add_column(sa.Column("pdf_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("status_info", sa.Text, nullable=True))
        batch.add_column(sa.Column("archived_sop_instance_uid", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("print_job") as batch:
        batch.drop_column("archived_sop_instance_uid")
        batch.drop_column("status_info")
        batch.drop_column("pdf_sha256")
        batch.drop_column("pdf_size")
        batch.drop_column("pdf_blob_key")
