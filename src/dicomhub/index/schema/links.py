"""Studies and the orders they were acquired for.

One row per study the linker has looked at (keyed by Study Instance UID, not by
the study's row key, so that a study deleted and sent again keeps its link):
the order it belongs to (NULL while it matches none), how the match was made,
and the first Requested Procedure ID of its Request Attributes Sequence, kept so
that an order arriving after the study can still find it by that ID. A study
with no row was stored before linking existed and counts as unmatched.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, String, Table

from dicomhub.index.schema.base import metadata
from dicomhub.index.schema.types import PK, UtcDateTime

__all__ = ["study_order_link"]

study_order_link = Table(
    "study_order_link",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("study_instance_uid", String(64), nullable=False, unique=True),
    Column("order_pk", PK, ForeignKey("imaging_order.pk", ondelete="SET NULL")),
    Column("requested_procedure_id", String(16), nullable=False),  # "": none carried
    Column("matched_by", String(16), nullable=False),  # "": unmatched
    Column("linked_by", String(64), nullable=False),
    Column("linked_at", UtcDateTime, nullable=False),
    Index("ix_study_order_link_order", "order_pk"),
    Index("ix_study_order_link_procedure", "requested_procedure_id"),
)
