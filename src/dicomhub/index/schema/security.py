"""The security tables: principals, API tokens, role grants, study labels and the audit log.

* ``principal``: a user or a service, by name; grants and tokens hang off it;
* ``api_token``: the SHA-256 of each token (never the token), optionally expiring;
* ``role_grant``: (principal, role, scope) with the scope text of
  :class:`dicomhub.model.access.Scope`;
* ``study_label``: (study UID, label), by UID so that an ingest rule can label a
  study in the transaction that creates it and a label outlives nothing it names;
* ``audit_event`` and its ``audit_study`` rows: append-only, queryable by
  principal, action, time and study.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, Integer, String, Table, Text, UniqueConstraint

from dicomhub.index.schema.base import metadata
from dicomhub.index.schema.types import PK, UtcDateTime

__all__ = [
    "api_token",
    "audit_event",
    "audit_study",
    "principal",
    "role_grant",
    "study_label",
]

principal = Table(
    "principal",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("kind", String(16), nullable=False, default="user"),  # user, service
    Column("created_at", UtcDateTime, nullable=False),
    sqlite_autoincrement=True,
)

api_token = Table(
    "api_token",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("principal_pk", PK, ForeignKey("principal.pk"), nullable=False, index=True),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("label", String(128), nullable=False, default=""),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime),
    Column("expires_at", UtcDateTime),
    sqlite_autoincrement=True,
)

role_grant = Table(
    "role_grant",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("principal_pk", PK, ForeignKey("principal.pk"), nullable=False),
    Column("role", String(32), nullable=False),
    Column("scope", String(128), nullable=False),
    Column("granted_by", String(128), nullable=False),
    Column("granted_at", UtcDateTime, nullable=False),
    UniqueConstraint("principal_pk", "role", "scope", name="uq_role_grant"),
)

study_label = Table(
    "study_label",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("study_instance_uid", String(64), nullable=False),
    Column("label", String(64), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("study_instance_uid", "label", name="uq_study_label"),
    Index("ix_study_label_label", "label", "study_instance_uid"),
)

# Append-only: rows are inserted, never updated or deleted by dicomhub.
audit_event = Table(
    "audit_event",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime, nullable=False, index=True),
    Column("action", String(32), nullable=False, index=True),
    Column("outcome", String(4), nullable=False),
    Column("principal", String(128), nullable=False, index=True),
    Column("channel", String(16), nullable=False),
    Column("ae_title", String(16), nullable=False, default=""),
    Column("address", String(64), nullable=False, default=""),
    Column("detail_json", Text, nullable=False),
    sqlite_autoincrement=True,
)

audit_study = Table(
    "audit_study",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("event_pk", PK, ForeignKey("audit_event.pk"), nullable=False, index=True),
    Column("study_instance_uid", String(64), nullable=False, index=True),
    Column("patient_id", String(64), nullable=False, default=""),
    Column("series_instance_uids", Text, nullable=False, default=""),  # backslash-separated
    Column("number_of_instances", Integer, nullable=False, default=0),
)
