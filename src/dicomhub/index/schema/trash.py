"""The trash: instances deleted but not yet purged (migration 0027).

A delete writes one ``trash`` row per instance in the transaction that removes its
instance row (and the parents it leaves empty), and leaves the blob in the store:
the row keeps the blob's key with its size and digests, the identifying attributes
the trash listing shows (patient, study, series, modality), who deleted it, when and
why. Restoring indexes the blob again and removes the row in one transaction;
purging removes the row, then the blob. Nothing else reads this table, so no query
of the live archive ever has to leave trashed objects out.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, String, Table

from dicomhub.index.schema.base import metadata
from dicomhub.index.schema.types import PK, UtcDateTime

__all__ = ["trash"]

trash = Table(
    "trash",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("series_instance_uid", String(64), nullable=False),
    Column("study_instance_uid", String(64), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("patient_name", String(324)),
    Column("study_date", String(18)),
    Column("study_description", String(64)),
    Column("accession_number", String(16)),
    Column("modality", String(16)),
    # The blob, as the instance row had it: restoring needs no digest computed again.
    Column("blob_key", String(64), nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("content_sha256", String(64), nullable=False),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("original_transfer_syntax_uid", String(64)),
    Column("original_sha256", String(64)),
    Column("source_ae_title", String(16)),
    Column("received_at", UtcDateTime, nullable=False),
    Column("deleted_by", String(128), nullable=False),
    Column("deleted_at", UtcDateTime, nullable=False),
    Column("reason", String(256), nullable=False),
    Index("ix_trash_study", "study_instance_uid"),
    Index("ix_trash_deleted_at", "deleted_at"),
    sqlite_autoincrement=True,
)
