"""Initial index: patient, study, series, instance, change log, conflicts.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "patient",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("patient_id", sa.String(64), nullable=False, unique=True),
        sa.Column("patient_name", sa.String(324)),
        sa.Column("patient_name_key", sa.String(324)),
        sa.Column("patient_birth_date", sa.String(18)),
        sa.Column("patient_sex", sa.String(16)),
        sa.Column("created_at", _TS, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_patient_patient_name_key", "patient", ["patient_name_key"])
    op.create_table(
        "study",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("patient_pk", _PK, sa.ForeignKey("patient.pk"), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("study_date", sa.String(18)),
        sa.Column("study_time", sa.String(28)),
        sa.Column("accession_number", sa.String(16)),
        sa.Column("study_id", sa.String(16)),
        sa.Column("study_description", sa.String(64)),
        sa.Column("referring_physician_name", sa.String(324)),
        sa.Column("referring_physician_name_key", sa.String(324)),
        sa.Column("modalities_in_study", sa.String(256), nullable=False),
        sa.Column("number_of_series", sa.Integer, nullable=False),
        sa.Column("number_of_instances", sa.Integer, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_study_patient_pk", "study", ["patient_pk"])
    op.create_index("ix_study_study_date", "study", ["study_date"])
    op.create_index("ix_study_accession_number", "study", ["accession_number"])
    op.create_table(
        "series",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("study_pk", _PK, sa.ForeignKey("study.pk"), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("modality", sa.String(16)),
        sa.Column("series_number", sa.Integer),
        sa.Column("series_description", sa.String(64)),
        sa.Column("body_part_examined", sa.String(16)),
        sa.Column("series_date", sa.String(18)),
        sa.Column("series_time", sa.String(28)),
        sa.Column("number_of_instances", sa.Integer, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_series_study_pk", "series", ["study_pk"])
    op.create_index("ix_series_modality", "series", ["modality"])
    op.create_table(
        "instance",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("series_pk", _PK, sa.ForeignKey("series.pk"), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("instance_number", sa.Integer),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("blob_key", sa.String(64), nullable=False, unique=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("source_ae_title", sa.String(16)),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("header_json", sa.Text),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_instance_series_pk", "instance", ["series_pk"])
    op.create_index(
        "ix_instance_header_pending",
        "instance",
        ["pk"],
        sqlite_where=sa.text("header_json IS NULL"),
        postgresql_where=sa.text("header_json IS NULL"),
    )
    op.create_table(
        "change",
        sa.Column("seq", _PK, primary_key=True, autoincrement=True),
        sa.Column("change_type", sa.String(32), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("uid", sa.String(64), nullable=False),
        sa.Column("at", _TS, nullable=False),
    )
    op.create_table(
        "conflict",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64)),
        sa.Column("patient_id", sa.String(64)),
        sa.Column("blob_key", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("source_ae_title", sa.String(16)),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("at", _TS, nullable=False),
    )
    op.create_index("ix_conflict_sop_instance_uid", "conflict", ["sop_instance_uid"])


def downgrade() -> None:
    for table in ("conflict", "change", "instance", "series", "study", "patient"):
        op.drop_table(table)
