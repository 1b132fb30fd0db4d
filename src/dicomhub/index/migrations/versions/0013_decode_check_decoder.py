"""The decoder that read a stored object's pixel data in the decode check.

Issue 16 added GDCM as a fallback decoder behind the pylibjpeg family; the
decode check records which one decoded each object (``pylibjpeg``,
``gdcm-fallback``, ``native``, several joined by ``+`` when frames needed
different ones), so ``dicomhub check`` can say how much of the archive only the
fallback reads. Null for rows written before, and for objects that did not decode.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decode_check") as batch:
        batch.add_column(sa.Column("decoder", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decode_check") as batch:
        batch.drop_column("decoder")
