"""The archive proper: patients, studies, series and instances, the change log,
refused copies and the cursors of background workers.

Integer surrogate keys link the levels; UIDs are unique columns. Keys are
never reused (AUTOINCREMENT on SQLite, sequences on PostgreSQL), so a key
remembered by a process can go stale but never point at another entity. The
``change`` table is the change log (a monotonic ``seq`` per create, update or
delete); ``conflict`` keeps every refused copy, with the key of its quarantined
blob, so that a refusal never loses data.

Migration 0008 adds indexes that exist on PostgreSQL only (``varchar_pattern_ops``
B-trees for prefix wildcards on the case-folded person names and on identifiers; see
docs/scale.md), and a plain index on the referring physician's name key on SQLite;
they are not declared here because SQLite has no such operator class.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, String, Table, Text

from dicomhub.index.schema.base import metadata
from dicomhub.index.schema.types import PK, UtcDateTime

__all__ = [
    "change",
    "conflict",
    "instance",
    "patient",
    "series",
    "study",
    "worker_cursor",
]

patient = Table(
    "patient",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("patient_id", String(64), nullable=False, unique=True),
    Column("patient_name", String(324)),
    Column("patient_name_key", String(324), index=True),
    Column("patient_birth_date", String(18)),
    Column("patient_sex", String(16)),
    Column("created_at", UtcDateTime, nullable=False),
    sqlite_autoincrement=True,
)

study = Table(
    "study",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("patient_pk", PK, ForeignKey("patient.pk"), nullable=False, index=True),
    Column("study_instance_uid", String(64), nullable=False, unique=True),
    Column("study_date", String(18), index=True),
    Column("study_time", String(28)),
    Column("accession_number", String(16), index=True),
    Column("study_id", String(16)),
    Column("study_description", String(64)),
    Column("referring_physician_name", String(324)),
    Column("referring_physician_name_key", String(324)),
    Column("modalities_in_study", String(256), nullable=False, default=""),
    Column("number_of_series", Integer, nullable=False, default=0),
    Column("number_of_instances", Integer, nullable=False, default=0),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # Cleared by every store into the study, set when it is announced stable (migration 0023).
    Column("stable_at", UtcDateTime),
    Index("ix_study_stable_at", "stable_at"),
    sqlite_autoincrement=True,
)

series = Table(
    "series",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("study_pk", PK, ForeignKey("study.pk"), nullable=False, index=True),
    Column("series_instance_uid", String(64), nullable=False, unique=True),
    Column("modality", String(16), index=True),
    Column("series_number", Integer),
    Column("series_description", String(64)),
    Column("body_part_examined", String(16)),
    Column("series_date", String(18)),
    Column("series_time", String(28)),
    Column("number_of_instances", Integer, nullable=False, default=0),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime),
    Column("stable_at", UtcDateTime),
    Index("ix_series_stable_at", "stable_at"),
    sqlite_autoincrement=True,
)

instance = Table(
    "instance",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("series_pk", PK, ForeignKey("series.pk"), nullable=False, index=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", Integer),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("blob_key", String(64), nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    # SHA-256 of the data set alone (no File Meta): the same object received
    # from two AEs or tools has the same content digest, whatever its header.
    Column("content_sha256", String(64), nullable=False),
    Column("source_ae_title", String(16)),
    Column("received_at", UtcDateTime, nullable=False),
    # The rest of the header as DICOM JSON (PS3.18 F.2), bulk data left out.
    # Filled after the acknowledgement by the header worker, or on first use.
    Column("header_json", Text),
    # Set when the object is stored in another syntax than it arrived in
    # (compression at rest): what arrived, and the SHA-256 of the file as received.
    Column("original_transfer_syntax_uid", String(64)),
    Column("original_sha256", String(64)),
    sqlite_autoincrement=True,
)

change = Table(
    "change",
    metadata,
    Column("seq", PK, primary_key=True, autoincrement=True),
    Column("change_type", String(32), nullable=False),
    Column("level", String(16), nullable=False),
    Column("uid", String(64), nullable=False),
    Column("at", UtcDateTime, nullable=False),
)

conflict = Table(
    "conflict",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False, index=True),
    Column("study_instance_uid", String(64)),
    Column("patient_id", String(64)),
    Column("blob_key", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("source_ae_title", String(16)),
    Column("detail", Text, nullable=False),
    Column("at", UtcDateTime, nullable=False),
)

# Where a background job is in a stream it follows (e.g. instance pks).
worker_cursor = Table(
    "worker_cursor",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("position", BigInteger, nullable=False),
)

Index(
    "ix_instance_header_pending",
    instance.c.pk,
    sqlite_where=instance.c.header_json.is_(None),
    postgresql_where=instance.c.header_json.is_(None),
)
# Data set digests not computed yet (objects stored by STOW-RS; see
# services/contentdigest.py): '' until the background process fills them.
Index(
    "ix_instance_content_pending",
    instance.c.pk,
    sqlite_where=instance.c.content_sha256 == "",
    postgresql_where=instance.c.content_sha256 == "",
)
