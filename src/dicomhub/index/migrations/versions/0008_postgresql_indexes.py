"""Indexes that keep C-FIND/QIDO flat on PostgreSQL as the archive grows.

PostgreSQL's default B-tree operator class compares by the database
collation, which cannot serve ``LIKE 'ABC%'`` unless the collation is "C".
The prefix wildcards of DICOM matching (``PatientName=SMITH*``,
``PatientID=12*``, ``AccessionNumber=A1*``) are therefore given
``varchar_pattern_ops`` indexes, on the case-folded person name keys
(``*_name_key``, upper-cased at ingest) and on the identifiers. SQLite needs
none of them: with ``case_sensitive_like`` on, its LIKE prefix optimisation
uses the plain indexes of 0001 (and a new one on referring physician).

Revision ID: 0008
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# (index name, table, column): prefix LIKE on PostgreSQL.
_PATTERN = (
    ("ix_patient_name_key_prefix", "patient", "patient_name_key"),
    ("ix_patient_id_prefix", "patient", "patient_id"),
    ("ix_study_referring_key_prefix", "study", "referring_physician_name_key"),
    ("ix_study_accession_prefix", "study", "accession_number"),
    ("ix_study_uid_prefix", "study", "study_instance_uid"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, table, column in _PATTERN:
            op.create_index(name, table, [column], postgresql_ops={column: "varchar_pattern_ops"})
    else:
        op.create_index("ix_study_referring_key_prefix", "study", ["referring_physician_name_key"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, table, _column in _PATTERN:
            op.drop_index(name, table_name=table)
    else:
        op.drop_index("ix_study_referring_key_prefix", table_name="study")
