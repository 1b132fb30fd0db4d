"""Tables of the index. Generic SQLAlchemy types only, so that the same schema
runs on SQLite (embedded default) and PostgreSQL.

Integer surrogate keys link the levels; UIDs are unique columns. Keys are
never reused (AUTOINCREMENT on SQLite, sequences on PostgreSQL), so a key
remembered by a process can go stale but never point at another entity. The
``change`` table is the change log (a monotonic ``seq`` per create, update or
delete); ``conflict`` keeps every refused copy, with the key of its quarantined
blob, so that a refusal never loses data.

Migration 0008 adds indexes that exist on PostgreSQL only (``varchar_pattern_ops``
B-trees for prefix wildcards on the case-folded person names and on identifiers; see
docs/scale.md); they are not declared here because SQLite has no such operator class.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = [
    "change",
    "conflict",
    "decode_check",
    "instance",
    "metadata",
    "patient",
    "series",
    "study",
    "validation_finding",
    "validation_instance",
    "worker_cursor",
]

metadata = MetaData()

_PK = BigInteger().with_variant(Integer(), "sqlite")  # SQLite only autoincrements INTEGER

patient = Table(
    "patient",
    metadata,
    Column("pk", _PK, primary_key=True, autoincrement=True),
    Column("patient_id", String(64), nullable=False, unique=True),
    Column("patient_name", String(324)),
    Column("patient_name_key", String(324), index=True),
    Column("patient_birth_date", String(18)),
    Column("patient_sex", String(16)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    sqlite_autoincrement=True,
)

study = Table(
    "study",
    metadata,
    Column("pk", _PK, primary_key=True, autoincrement=True),
    Column("patient_pk", _PK, ForeignKey("patient.pk"), nullable=False, index=True),
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
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    sqlite_autoincrement=True,
)

series = Table(
    "series",
    metadata,
    Column("pk", _PK, primary_key=True, autoincrement=True),
    Column("study_pk", _PK, ForeignKey("study.pk"), nullable=False, index=True),
    Column("series_instance_uid", String(64), nullable=False, unique=True),
    Column("modality", String(16), index=True),
    Column("series_number", Integer),
    Column("series_description", String(64)),
    Column("body_part_examined", String(16)),
    Column("series_date", String(18)),
    Column("series_time", String(28)),
    Column("number_of_instances", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    sqlite_autoincrement=True,
)

instance = Table(
    "instance",
    metadata,
    Column("pk", _PK, primary_key=True, autoincrement=True),
    Column("series_pk", _PK, ForeignKey("series.pk"), nullable=False, index=True),
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
    Column("received_at", DateTime(timezone=True), nullable=False),
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
    Column("seq", _PK, primary_key=True, autoincrement=True),
    Column("change_type", String(32), nullable=False),
    Column("level", String(16), nullable=False),
    Column("uid", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)

conflict = Table(
    "conflict",
    metadata,
    Column("pk", _PK, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False, index=True),
    Column("study_instance_uid", String(64)),
    Column("patient_id", String(64)),
    Column("blob_key", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("source_ae_title", String(16)),
    Column("detail", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)

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
    Column("checked_at", DateTime(timezone=True), nullable=False),
    # The decoder(s) that read the pixel data (issue 16: the fast path or the GDCM fallback).
    Column("decoder", String(64)),
    Index("ix_decode_check_syntax", "transfer_syntax_uid", "sop_class_uid", "ok"),
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
    Column("checked_at", DateTime(timezone=True), nullable=False),
)

validation_finding = Table(
    "validation_finding",
    metadata,
    Column("pk", _PK, primary_key=True, autoincrement=True),
    Column("sop_instance_uid", String(64), nullable=False, index=True),
    Column("severity", String(8), nullable=False),
    Column("code", String(32), nullable=False),
    Column("module", String(96), nullable=False),
    Column("attribute", String(256), nullable=False),
    Column("message", Text, nullable=False),
)
