"""Rejected instances: one row per SOP instance a rejection note rejected (IHE IOCM).

The row outlives the instance (a rejection for an expired retention period
deletes it): it is what refuses the instance when it is sent again. Queries
and retrievals hide an instance with a row here unless the caller asks for
rejected instances (see :mod:`dicomhub.index.rejection`)."""

from __future__ import annotations

from sqlalchemy import Column, Index, String, Table

from dicomhub.index.schema.base import metadata
from dicomhub.index.schema.types import PK, UtcDateTime

__all__ = ["rejected_instance"]

rejected_instance = Table(
    "rejected_instance",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("series_instance_uid", String(64), nullable=False),
    Column("study_instance_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    # The rejection title (CID 7011): code value, coding scheme designator.
    Column("code_value", String(16), nullable=False),
    Column("coding_scheme", String(16), nullable=False),
    Column("rejection_note_uid", String(64), nullable=False),  # the KOS's SOP Instance UID
    Column("rejected_by", String(128), nullable=False),  # the calling AE title or the principal
    Column("at", UtcDateTime, nullable=False),
    Index("ix_rejected_instance_series", "series_instance_uid"),
    Index("ix_rejected_instance_study", "study_instance_uid"),
    Index("ix_rejected_instance_note", "rejection_note_uid"),
    sqlite_autoincrement=True,
)
