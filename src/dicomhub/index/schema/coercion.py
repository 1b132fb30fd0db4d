"""Patient coercion: the patient a study is now filed under, when that differs
from what its stored objects say (a patient update, a merge or an operator's
correction); see :mod:`dicomhub.index.coercion`.

One row per study, keyed by Study Instance UID. Retrieval looks it up and, when
there is one, rewrites the Patient module of each object on the way out (the
stored blob never changes). Studies without a row pay nothing.
"""

from __future__ import annotations

from sqlalchemy import Column, String, Table

from dicomhub.index.schema.base import metadata
from dicomhub.index.schema.types import UtcDateTime

__all__ = ["patient_coercion"]

patient_coercion = Table(
    "patient_coercion",
    metadata,
    Column("study_instance_uid", String(64), primary_key=True),
    Column("patient_id", String(64), nullable=False),
    Column("issuer_of_patient_id", String(64), nullable=False),
    Column("patient_name", String(324), nullable=False),
    Column("patient_birth_date", String(18), nullable=False),
    Column("patient_sex", String(16), nullable=False),
    # Why and through what: "update", "merge" or "set-patient", and the source
    # (HL7 sender, FHIR, REST, CLI) for the Modifying System.
    Column("reason", String(32), nullable=False),
    Column("modifying_system", String(64), nullable=False),
    Column("modified_at", UtcDateTime, nullable=False),
)
