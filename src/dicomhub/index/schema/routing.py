"""The outbound queue of routing: one row per (route, destination, instance).

A row is ``queued`` until it is sent, and ``dead`` once its route's
``max_attempts`` failed (kept with the last error for a manual retry); ``skipped``
when its instance was rejected, deleted or trashed before it went (the reason in
``last_error``). A node
that works on a row claims it: ``owner`` and ``lease_until``; a row whose lease
ran out (the node died) is claimed again by any node. The enqueuer's place in the
change log is its ``worker_cursor`` row (``route-enqueue``), moved in the
transaction that adds the rows of the entries it read.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, String, Table, Text, UniqueConstraint

from dicomhub.index.schema.base import metadata
from dicomhub.index.schema.types import PK, UtcDateTime

__all__ = ["route_item"]

route_item = Table(
    "route_item",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("route", String(24), nullable=False),
    Column("destination", String(1024), nullable=False),  # a peer name or folder:PATH
    Column("study_instance_uid", String(64), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("state", String(8), nullable=False),  # queued, sent, dead, skipped
    Column("attempts", Integer, nullable=False),
    Column("not_before", UtcDateTime, nullable=False),  # when it may be tried (again)
    Column("owner", String(80)),  # the node working on it, until lease_until
    Column("lease_until", UtcDateTime),
    Column("last_error", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # An instance is queued once per route and destination: a study that becomes
    # stable again, or an enqueuer that repeats entries after a crash, adds nothing.
    UniqueConstraint("route", "destination", "sop_instance_uid", name="uq_route_item"),
    Index("ix_route_item_due", "state", "not_before"),
    Index("ix_route_item_study", "study_instance_uid"),
)
