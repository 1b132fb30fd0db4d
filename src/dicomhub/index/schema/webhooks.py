"""The delivery log of webhooks: one row per attempt to deliver one change log entry
to one webhook (delivered, failed and retried, or given up). Where each webhook is in
the change log is its ``worker_cursor`` row (``webhook:NAME``), moved in the same
transaction as the row that ends the entry's delivery."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text

from dicomhub.index.schema.base import metadata
from dicomhub.index.schema.types import PK, UtcDateTime

__all__ = ["webhook_delivery"]

webhook_delivery = Table(
    "webhook_delivery",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("webhook", String(24), nullable=False),
    Column("seq", BigInteger, nullable=False),  # the change log entry delivered
    Column("event", String(16), nullable=False),
    Column("uid", String(64), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),  # delivered, failed, gave-up
    Column("status_code", Integer),  # the receiver's HTTP status, none when unreachable
    Column("error", Text, nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Index("ix_webhook_delivery_webhook", "webhook", "pk"),
    sqlite_autoincrement=True,
)
