"""Stable studies and series: when each last changed and when it was announced stable.

Revision ID: 0023
Revises: 0021
Create Date: 2026-12-06

``stable_at`` is cleared whenever an instance is stored into the study or series and
set when the stability detector announces it (a ``stable`` change in the change log).
Studies and series that exist at the upgrade count as announced: an upgrade must not
announce the whole archive as newly stable.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0021"
branch_labels = None
depends_on = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Nullable columns: a plain ALTER TABLE ADD COLUMN on SQLite too, no table copy.
    op.add_column("study", sa.Column("stable_at", _UTC))
    op.add_column("series", sa.Column("updated_at", _UTC))
    op.add_column("series", sa.Column("stable_at", _UTC))
    op.execute("UPDATE study SET stable_at = updated_at")
    op.execute("UPDATE series SET updated_at = created_at, stable_at = created_at")
    # The detector looks for rows not yet announced (few: those stored into lately).
    # Not on updated_at, which every store changes: an index on it would be rewritten
    # by every store (more pages per commit on SQLite, no HOT updates on PostgreSQL).
    op.create_index("ix_study_stable_at", "study", ["stable_at"])
    op.create_index("ix_series_stable_at", "series", ["stable_at"])


def downgrade() -> None:
    op.drop_index("ix_series_stable_at", table_name="series")
    op.drop_index("ix_study_stable_at", table_name="study")
    with op.batch_alter_table("series") as batch:
        batch.drop_column("stable_at")
        batch.drop_column("updated_at")
    with op.batch_alter_table("study") as batch:
        batch.drop_column("stable_at")
