"""Print jobs and their films (see dicomhub.index.printing).

Revision ID: 0020
Revises: 0019
Create Date: 2027-02-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "print_job",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("calling_ae_title", sa.String(16), nullable=False),
        sa.Column("film_session_uid", sa.String(64), nullable=False),
        sa.Column("film_session", sa.Text, nullable=False),
        sa.Column("color", sa.Boolean, nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
    )
    op.create_index("ix_print_job_created", "print_job", ["created_at"])
    op.create_table(
        "print_film",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("job_pk", _PK, sa.ForeignKey("print_job.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("film_box_uid", sa.String(64), nullable=False),
        sa.Column("film_box", sa.Text, nullable=False),
        sa.Column("images", sa.Integer, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("blob_key", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
    )
    op.create_index("ix_print_film_job", "print_film", ["job_pk", "number"], unique=True)


def downgrade() -> None:
    op.drop_table("print_film")
    op.drop_table("print_job")
