"""Studies linked to the orders they were acquired for (see dicomhub.index.links), and
the indexes on requested procedures that linking looks them up by.

Revision ID: 0018
Revises: 0015
Create Date: 2027-01-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "study_order_link",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("order_pk", _PK, sa.ForeignKey("imaging_order.pk", ondelete="SET NULL")),
        sa.Column("requested_procedure_id", sa.String(16), nullable=False),
        sa.Column("matched_by", sa.String(16), nullable=False),
        sa.Column("linked_by", sa.String(64), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_study_order_link_order", "study_order_link", ["order_pk"])
    op.create_index("ix_study_order_link_procedure", "study_order_link", ["requested_procedure_id"])
    op.create_index("ix_requested_procedure_procedure_id", "requested_procedure", ["procedure_id"])
    op.create_index("ix_requested_procedure_study", "requested_procedure", ["study_instance_uid"])


def downgrade() -> None:
    op.drop_index("ix_requested_procedure_study", "requested_procedure")
    op.drop_index("ix_requested_procedure_procedure_id", "requested_procedure")
    op.drop_table("study_order_link")
