"""DICOM network peers and what happened with them: the peer registry, the
association log and Storage Commitment transactions (whose N-EVENT-REPORT is
delivered, retried or given up).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, String, Table, Text

from dicomhub.index.schema.base import metadata
from dicomhub.index.schema.types import PK, UtcDateTime

__all__ = [
    "association_log",
    "peer",
    "storage_commitment",
]

peer = Table(
    "peer",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("ae_title", String(16), nullable=False),  # "": not a DIMSE peer
    Column("host", String(255), nullable=False),
    Column("port", Integer),  # NULL: calls us only, never called
    Column("tls", Boolean, nullable=False),
    Column("dicomweb_url", Text, nullable=False),
    Column("auth", Text, nullable=False),
    Column("folder", Text, nullable=False),
    Column("principal", String(128), nullable=False),
    Column("tls_subject", String(255), nullable=False),
    Column("roles", String(255), nullable=False),  # comma separated Role values
    Column("migrate_via", String(16), nullable=False),  # "": chosen from what it has
    Column("retrieve", String(8), nullable=False),
    Column("find_limit", Integer, nullable=False),
    Column("description", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_peer_ae_title", "ae_title"),
)

association_log = Table(
    "association_log",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("calling_ae_title", String(16), nullable=False),
    Column("called_ae_title", String(16), nullable=False),
    Column("peer_host", String(64), nullable=False),
    # released / aborted / rejected
    Column("outcome", String(16), nullable=False),
    Column("reason", Text),
    Column("started_at", UtcDateTime, nullable=False),
    Column("milliseconds", Integer, nullable=False),
    Column("accepted_contexts", Integer, nullable=False),
    Column("rejected_contexts", Integer, nullable=False),
    Column("contexts_json", Text),
    Column("operations_json", Text, nullable=False),
    Column("bytes_received", BigInteger, nullable=False),
    Index("ix_association_log_started", "started_at"),
    Index("ix_association_log_calling", "calling_ae_title"),
)

storage_commitment = Table(
    "storage_commitment",
    metadata,
    Column("transaction_uid", String(64), primary_key=True),
    Column("calling_ae_title", String(16), nullable=False),
    Column("peer_host", String(64)),
    Column("items_json", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("last_error", Text),
    Column("result_json", Text),
    Column("created_at", UtcDateTime, nullable=False),
    Column("delivered_at", UtcDateTime),
    Index("ix_storage_commitment_due", "state", "next_attempt_at"),
)
