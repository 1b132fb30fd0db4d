"""Corrections: one row per operator correction of stored studies (migration 0029).

A correction (modify, split, merge of studies, merge of patients; see
:mod:`dicomhub.services.corrections`) records who made it, when and why, the
original and the new attribute values, and the old -> new UID map of the
objects it wrote again. The map is what makes a correction reversible by its
record: the originals are rejected (hidden, still stored) or kept, and the
record names each one's replacement.

``study_coercion`` holds, per study corrected in place, the study attributes its
objects leave the archive with (the stored bytes stay as received; see
:mod:`dicomhub.model.coercion`), as ``patient_coercion`` does for the Patient module.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, String, Table, Text

from dicomhub.index.schema.base import metadata
from dicomhub.index.schema.types import PK, UtcDateTime

__all__ = ["correction", "study_coercion"]

correction = Table(
    "correction",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    # modify, split, merge-studies, merge-patients
    Column("kind", String(32), nullable=False),
    Column("study_instance_uid", String(64), nullable=False),
    # The study the correction made (split, modify with new UIDs) or wrote into (merge).
    Column("new_study_instance_uid", String(64), nullable=False),
    Column("made_by", String(128), nullable=False),
    Column("made_at", UtcDateTime, nullable=False),
    Column("reason", String(256), nullable=False),
    # keep or reject: what became of the originals
    Column("source", String(16), nullable=False),
    # {keyword: value} before and after; {old UID: new UID} for every UID written again.
    Column("original_values_json", Text, nullable=False),
    Column("new_values_json", Text, nullable=False),
    Column("uid_map_json", Text, nullable=False),
    Index("ix_correction_study", "study_instance_uid"),
    Index("ix_correction_new_study", "new_study_instance_uid"),
    sqlite_autoincrement=True,
)

study_coercion = Table(
    "study_coercion",
    metadata,
    Column("study_instance_uid", String(64), primary_key=True),
    # {keyword: value}: the study attributes as corrected (accumulated over corrections).
    Column("values_json", Text, nullable=False),
    Column("modifying_system", String(64), nullable=False),
    Column("modified_at", UtcDateTime, nullable=False),
)
