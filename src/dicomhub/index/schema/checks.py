"""What the archive found when it looked at what it stored: the decode check of
pixel data and IOD validation (one row per checked object, and its findings).
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Index, Integer, String, Table, Text

from dicomhub.index.schema.base import metadata
from dicomhub.index.schema.types import PK, UtcDateTime

__all__ = [
    "decode_check",
    "validation_finding",
    "validation_instance",
]

# One row per instance whose pixel data was decoded once after ingest (the
# decode check); `ok` false rows are what `dicomhub check` reports.
decode_check = Table(
    "decode_check",
    metadata,
    Column("sop_instance_uid", String(64), primary_key=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("reason", Text),
    Column("checked_at", UtcDateTime, nullable=False),
    # The decoder(s) that read the pixel data (issue 16: the fast path or the GDCM fallback).
    Column("decoder", String(64)),
    Index("ix_decode_check_syntax", "transfer_syntax_uid", "sop_class_uid", "ok"),
)

# IOD validation: one row per checked object (its source and counts), and its
# findings. Rows of objects refused by the reject policy have `rejected` set
# (there is no instance row for them).
validation_instance = Table(
    "validation_instance",
    metadata,
    Column("sop_instance_uid", String(64), primary_key=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("source_ae_title", String(16), index=True),
    Column("errors", Integer, nullable=False),
    Column("warnings", Integer, nullable=False),
    Column("rejected", Boolean, nullable=False, default=False),
    Column("checked_at", UtcDateTime, nullable=False),
)

validation_finding = Table(
    "validation_finding",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("sop_instance_uid", String(64), nullable=False, index=True),
    Column("severity", String(8), nullable=False),
    Column("code", String(32), nullable=False),
    Column("module", String(96), nullable=False),
    Column("attribute", String(256), nullable=False),
    Column("message", Text, nullable=False),
)
