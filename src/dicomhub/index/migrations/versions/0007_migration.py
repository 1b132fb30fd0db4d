"""Remote archives, inventories, migration jobs and reconcile reports.

Revision ID: 0007
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _remote_fk() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "remote_pk", _PK, sa.ForeignKey("migration_remote.pk", ondelete="CASCADE"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "migration_remote",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ae_title", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("auth", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("retrieve", sa.String(8), nullable=False),
        sa.Column("find_limit", sa.Integer, nullable=False),
        sa.Column("inventory_complete", sa.Boolean, nullable=False),
        sa.Column("inventory_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "inventory_window",
        sa.Column(
            "remote_pk", _PK, sa.ForeignKey("migration_remote.pk", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("window", sa.String(40), primary_key=True),
        sa.Column("studies", sa.Integer, nullable=False),
    )
    op.create_table(
        "inventory_study",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        _remote_fk(),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("patient_name", sa.String(324), nullable=False),
        sa.Column("study_date", sa.String(18), nullable=False),
        sa.Column("accession_number", sa.String(16), nullable=False),
        sa.Column("complete", sa.Boolean, nullable=False),
        sa.UniqueConstraint("remote_pk", "study_instance_uid", name="uq_inventory_study"),
    )
    op.create_table(
        "inventory_series",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        _remote_fk(),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.UniqueConstraint("remote_pk", "series_instance_uid", name="uq_inventory_series"),
    )
    op.create_index("ix_inventory_series_study", "inventory_series", ["remote_pk", "study_instance_uid"])
    op.create_table(
        "inventory_instance",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        _remote_fk(),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.UniqueConstraint("remote_pk", "sop_instance_uid", name="uq_inventory_instance"),
    )
    op.create_index(
        "ix_inventory_instance_series", "inventory_instance", ["remote_pk", "series_instance_uid"]
    )
    op.create_table(
        "migration_job",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        _remote_fk(),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("selection_json", sa.Text, nullable=False),
        sa.Column("parallel", sa.Integer, nullable=False),
        sa.Column("owner", sa.String(64)),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
        sa.Column("error", sa.Text),
        sa.Column("reconcile_clean", sa.Boolean),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_migration_job_state", "migration_job", ["state"])
    op.create_table(
        "migration_item",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("job_pk", _PK, sa.ForeignKey("migration_job.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("expected_instances", sa.Integer, nullable=False),
        sa.Column("expected_bytes", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("transferred", sa.Integer, nullable=False),
        sa.Column("transferred_bytes", sa.BigInteger, nullable=False),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_migration_item_job", "migration_item", ["job_pk", "state"])
    op.create_table(
        "reconcile_run",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        _remote_fk(),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("clean", sa.Boolean, nullable=False),
        sa.Column("report_json", sa.Text, nullable=False),
    )
    op.create_index("ix_reconcile_run_remote", "reconcile_run", ["remote_pk", "at"])


def downgrade() -> None:
    for table in (
        "reconcile_run",
        "migration_item",
        "migration_job",
        "inventory_instance",
        "inventory_series",
        "inventory_study",
        "inventory_window",
        "migration_remote",
    ):
        op.drop_table(table)
