"""Modality Performed Procedure Steps, their links to scheduled steps, and the
HL7 v2 outbox of their status messages (see dicomhub.index.mpps).

Revision ID: 0017
Revises: 0015
Create Date: 2027-01-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0015"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "performed_procedure_step",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("calling_ae_title", sa.String(16), nullable=False),
        sa.Column("attributes", sa.Text, nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
    )
    op.create_index("ix_performed_procedure_step_status", "performed_procedure_step", ["status"])
    op.create_table(
        "performed_step_link",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column(
            "step_pk",
            _PK,
            sa.ForeignKey("performed_procedure_step.pk", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("accession_number", sa.String(64), nullable=False),
        sa.Column("requested_procedure_id", sa.String(64), nullable=False),
        sa.Column("scheduled_procedure_step_id", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("order_id", sa.String(64), nullable=False),
    )
    op.create_index("ix_performed_step_link_step", "performed_step_link", ["step_pk"])
    op.create_index("ix_performed_step_link_accession", "performed_step_link", ["accession_number"])
    op.create_table(
        "hl7_outbox",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("destination", sa.String(255), nullable=False),
        sa.Column("control_id", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _UTC, nullable=False),
        sa.Column("last_error", sa.Text, nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("delivered_at", _UTC),
    )
    op.create_index("ix_hl7_outbox_due", "hl7_outbox", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("hl7_outbox")
    op.drop_table("performed_step_link")
    op.drop_table("performed_procedure_step")
