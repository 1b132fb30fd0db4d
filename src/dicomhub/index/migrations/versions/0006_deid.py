"""De-identification projects, runs and mapping; principals, API tokens, role grants
and the audit log (see :mod:`dicomhub.index.deid`).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)
_VALUE = 400


def upgrade() -> None:
    op.create_table(
        "deid_project",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("key_fingerprint", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "deid_run",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("project_pk", _PK, sa.ForeignKey("deid_project.pk"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("source_address", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("source_study_uid", sa.String(64), nullable=False),
        sa.Column("source_series_uid", sa.String(64)),
        sa.Column("target_study_uid", sa.String(64)),
        sa.Column("destination", sa.String(16)),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(64)),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("stored", sa.Integer, nullable=False),
        sa.Column("already_present", sa.Integer, nullable=False),
        sa.Column("refused", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("started_at", _TS),
        sa.Column("finished_at", _TS),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_deid_run_project_pk", "deid_run", ["project_pk"])
    op.create_index("ix_deid_run_source_study_uid", "deid_run", ["source_study_uid"])
    op.create_index("ix_deid_run_target_study_uid", "deid_run", ["target_study_uid"])
    op.create_index("ix_deid_run_status", "deid_run", ["status"])
    op.create_table(
        "deid_run_item",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("run_pk", _PK, sa.ForeignKey("deid_run.pk"), nullable=False),
        sa.Column("source_sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("target_sop_instance_uid", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text),
        sa.UniqueConstraint("run_pk", "source_sop_instance_uid", name="uq_deid_run_item"),
    )
    op.create_index("ix_deid_run_item_status", "deid_run_item", ["run_pk", "status"])
    op.create_table(
        "deid_mapping",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("project_pk", _PK, sa.ForeignKey("deid_project.pk"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("original", sa.String(_VALUE), nullable=False),
        sa.Column("replacement", sa.String(_VALUE), nullable=False),
        sa.Column("first_run_pk", _PK, sa.ForeignKey("deid_run.pk")),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("project_pk", "kind", "original", name="uq_deid_mapping"),
    )
    op.create_index("ix_deid_mapping_replacement", "deid_mapping", ["project_pk", "replacement"])
    op.create_table(
        "principal",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("created_at", _TS, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "api_token",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("principal_pk", _PK, sa.ForeignKey("principal.pk"), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("label", sa.String(128), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_api_token_principal_pk", "api_token", ["principal_pk"])
    op.create_table(
        "role_grant",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("principal_pk", _PK, sa.ForeignKey("principal.pk"), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("scope", sa.String(128), nullable=False),
        sa.Column("granted_by", sa.String(128), nullable=False),
        sa.Column("granted_at", _TS, nullable=False),
        sa.UniqueConstraint("principal_pk", "role", "scope", name="uq_role_grant"),
    )
    op.create_table(
        "audit_event",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("at", _TS, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("source_address", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("project", sa.String(64)),
        sa.Column("study_uid", sa.String(64)),
        sa.Column("detail_json", sa.Text, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_event_at", "audit_event", ["at"])
    op.create_index("ix_audit_event_actor", "audit_event", ["actor"])
    op.create_index("ix_audit_event_study_uid", "audit_event", ["study_uid"])


def downgrade() -> None:
    for table in (
        "audit_event",
        "role_grant",
        "api_token",
        "principal",
        "deid_mapping",
        "deid_run_item",
        "deid_run",
        "deid_project",
    ):
        op.drop_table(table)
