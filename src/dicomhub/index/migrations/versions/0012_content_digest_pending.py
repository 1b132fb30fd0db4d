"""Instances whose data set digest is still to be computed.

A STOW-RS request no longer computes each object's data set digest
(``content_sha256``, the SHA-256 without File Meta) before it answers: the
object is indexed with ``''`` and the background process computes the digest
from the stored blob shortly after (see ``services/contentdigest.py``). This
partial index lets it find those rows without scanning the table.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_instance_content_pending",
        "instance",
        ["pk"],
        sqlite_where=sa.text("content_sha256 = ''"),
        postgresql_where=sa.text("content_sha256 = ''"),
    )


def downgrade() -> None:
    op.drop_index("ix_instance_content_pending", table_name="instance")
