"""Order context: patients of record, imaging orders, requested procedures,
scheduled procedure steps and patient merges (see dicomhub.index.orders).

Revision ID: 0015
Revises: 0014
Create Date: 2027-01-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "patient_record",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("resource_id", sa.String(64), nullable=False, unique=True),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(64), nullable=False),
        sa.Column("patient_name", sa.String(324), nullable=False),
        sa.Column("patient_birth_date", sa.String(8), nullable=False),
        sa.Column("patient_sex", sa.String(2), nullable=False),
        sa.Column("other_patient_ids", sa.Text, nullable=False),
        sa.Column("merged_into_pk", _PK, sa.ForeignKey("patient_record.pk")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("patient_id", "issuer_of_patient_id", name="uq_patient_record_id"),
    )
    op.create_table(
        "imaging_order",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("order_id", sa.String(64), nullable=False, unique=True),
        sa.Column("accession_number", sa.String(16), nullable=False, unique=True),
        sa.Column("placer_order_number", sa.String(64), nullable=False),
        sa.Column("filler_order_number", sa.String(64), nullable=False),
        sa.Column("patient_pk", _PK, sa.ForeignKey("patient_record.pk"), nullable=False),
        sa.Column("patient_name", sa.String(324), nullable=False),
        sa.Column("patient_birth_date", sa.String(8), nullable=False),
        sa.Column("patient_sex", sa.String(2), nullable=False),
        sa.Column("referring_physician", sa.String(324), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_imaging_order_placer", "imaging_order", ["placer_order_number"])
    op.create_index("ix_imaging_order_patient", "imaging_order", ["patient_pk"])
    op.create_table(
        "requested_procedure",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("order_pk", _PK, sa.ForeignKey("imaging_order.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("procedure_id", sa.String(16), nullable=False),
        sa.Column("description", sa.String(64), nullable=False),
        sa.Column("code_value", sa.String(64), nullable=False),
        sa.Column("code_scheme", sa.String(64), nullable=False),
        sa.Column("code_meaning", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.UniqueConstraint("order_pk", "procedure_id", name="uq_requested_procedure_id"),
    )
    op.create_table(
        "scheduled_procedure_step",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column(
            "procedure_pk", _PK, sa.ForeignKey("requested_procedure.pk", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("step_id", sa.String(16), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("description", sa.String(64), nullable=False),
        sa.Column("station_ae_title", sa.String(16), nullable=False),
        sa.Column("station_name", sa.String(16), nullable=False),
        sa.Column("location", sa.String(64), nullable=False),
        sa.Column("start_at", sa.DateTime(timezone=False)),
        sa.Column("performing_physician", sa.String(324), nullable=False),
        sa.Column("protocol_value", sa.String(64), nullable=False),
        sa.Column("protocol_scheme", sa.String(64), nullable=False),
        sa.Column("protocol_meaning", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.UniqueConstraint("procedure_pk", "step_id", name="uq_scheduled_procedure_step_id"),
    )
    op.create_index("ix_sps_worklist", "scheduled_procedure_step", ["status", "modality", "start_at"])
    op.create_index("ix_sps_station", "scheduled_procedure_step", ["station_ae_title"])
    op.create_table(
        "patient_merge",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("surviving_patient_id", sa.String(64), nullable=False),
        sa.Column("surviving_issuer", sa.String(64), nullable=False),
        sa.Column("prior_patient_id", sa.String(64), nullable=False),
        sa.Column("prior_issuer", sa.String(64), nullable=False),
        sa.Column("orders_moved", sa.Integer, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_patient_merge_prior", "patient_merge", ["prior_patient_id", "prior_issuer"])


def downgrade() -> None:
    op.drop_index("ix_patient_merge_prior", table_name="patient_merge")
    op.drop_table("patient_merge")
    op.drop_index("ix_sps_station", table_name="scheduled_procedure_step")
    op.drop_index("ix_sps_worklist", table_name="scheduled_procedure_step")
    op.drop_table("scheduled_procedure_step")
    op.drop_table("requested_procedure")
    op.drop_index("ix_imaging_order_patient", table_name="imaging_order")
    op.drop_index("ix_imaging_order_placer", table_name="imaging_order")
    op.drop_table("imaging_order")
    op.drop_table("patient_record")
