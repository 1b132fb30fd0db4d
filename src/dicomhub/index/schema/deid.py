"""The governed side of de-identification.

* ``deid_project``: one row per project; the fingerprint of its key (a keyed
  digest, never the secret) detects a changed secret;
* ``deid_run`` and ``deid_run_item``: who de-identified what, when and why, and
  the per-instance progress that makes a run resumable;
* ``deid_mapping``: original -> replacement per project and kind, the only
  place re-identification reads.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, Integer, String, Table, Text, UniqueConstraint

from dicomhub.index.schema.base import metadata
from dicomhub.index.schema.types import PK, UtcDateTime

__all__ = [
    "MAPPING_VALUE_LENGTH",
    "deid_mapping",
    "deid_project",
    "deid_run",
    "deid_run_item",
]

# Original values are UIDs, IDs and person names (PN: up to 3 x 64 characters per group).
MAPPING_VALUE_LENGTH = 400

deid_project = Table(
    "deid_project",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("key_fingerprint", String(64), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    sqlite_autoincrement=True,
)

deid_run = Table(
    "deid_run",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("project_pk", PK, ForeignKey("deid_project.pk"), nullable=False, index=True),
    # "archive": a new study in this archive; "export": objects sent to a peer.
    Column("kind", String(16), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("source_address", String(64), nullable=False, default=""),
    Column("reason", Text, nullable=False),
    Column("source_study_uid", String(64), nullable=False, index=True),
    Column("source_series_uid", String(64)),
    Column("target_study_uid", String(64), index=True),
    Column("destination", String(16)),
    Column("options", Text, nullable=False),  # JSON: option words and burned-in policy
    Column("status", String(16), nullable=False, index=True),
    Column("owner", String(64)),  # which process works on it
    Column("total", Integer, nullable=False, default=0),
    Column("stored", Integer, nullable=False, default=0),
    Column("already_present", Integer, nullable=False, default=0),
    Column("refused", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("error", Text),
    Column("created_at", UtcDateTime, nullable=False),
    Column("started_at", UtcDateTime),
    Column("finished_at", UtcDateTime),
    sqlite_autoincrement=True,
)

deid_run_item = Table(
    "deid_run_item",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("run_pk", PK, ForeignKey("deid_run.pk"), nullable=False),
    Column("source_sop_instance_uid", String(64), nullable=False),
    Column("target_sop_instance_uid", String(64)),
    # pending, stored, already-present, refused, failed
    Column("status", String(16), nullable=False),
    Column("detail", Text),
    UniqueConstraint("run_pk", "source_sop_instance_uid", name="uq_deid_run_item"),
    Index("ix_deid_run_item_status", "run_pk", "status"),
)

deid_mapping = Table(
    "deid_mapping",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("project_pk", PK, ForeignKey("deid_project.pk"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("original", String(MAPPING_VALUE_LENGTH), nullable=False),
    Column("replacement", String(MAPPING_VALUE_LENGTH), nullable=False),
    Column("first_run_pk", PK, ForeignKey("deid_run.pk")),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("project_pk", "kind", "original", name="uq_deid_mapping"),
    Index("ix_deid_mapping_replacement", "project_pk", "replacement"),
)
