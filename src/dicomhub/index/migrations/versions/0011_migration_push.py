"""Migration jobs that push to a remote target, and jobs with a de-identification step.

``direction``: ``pull`` (the remote is the source, dicomhub the target; every job
before this revision) or ``push`` (dicomhub is the source, the remote the target).
``transform_json``: the de-identification step of the job (project, options,
reason, burned-in policy, its ``deid_run``), NULL for none. ``notes``: what the
runner did that the report must say (objects sent in another transfer syntax).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "migration_job", sa.Column("direction", sa.String(8), nullable=False, server_default="pull")
    )
    op.add_column("migration_job", sa.Column("transform_json", sa.Text, nullable=True))
    op.add_column("migration_job", sa.Column("notes", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("migration_job") as batch:
        batch.drop_column("notes")
        batch.drop_column("transform_json")
        batch.drop_column("direction")
