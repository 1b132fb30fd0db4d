"""The order context: patients of record, imaging orders (one per Accession
Number) with their requested procedures and scheduled procedure steps (the
Modality Worklist's matching keys as typed columns), and ADT^A40 merges.

``patient_record`` is the demographics as the order system knows them; the
archive's own ``patient`` table stays what the objects say.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, ForeignKey, Index, Integer, String, Table, Text, UniqueConstraint

from dicomhub.index.schema.base import metadata
from dicomhub.index.schema.types import PK, UtcDateTime

__all__ = [
    "imaging_order",
    "patient_merge",
    "patient_record",
    "requested_procedure",
    "scheduled_procedure_step",
]

patient_record = Table(
    "patient_record",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("resource_id", String(64), nullable=False, unique=True),
    Column("patient_id", String(64), nullable=False),
    Column("issuer_of_patient_id", String(64), nullable=False),  # "": none given
    Column("patient_name", String(324), nullable=False),
    Column("patient_birth_date", String(8), nullable=False),
    Column("patient_sex", String(2), nullable=False),
    Column("other_patient_ids", Text, nullable=False),  # JSON array
    Column("merged_into_pk", PK, ForeignKey("patient_record.pk")),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("patient_id", "issuer_of_patient_id", name="uq_patient_record_id"),
)

imaging_order = Table(
    "imaging_order",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("order_id", String(64), nullable=False, unique=True),
    Column("accession_number", String(16), nullable=False, unique=True),
    Column("placer_order_number", String(64), nullable=False),
    Column("filler_order_number", String(64), nullable=False),
    Column("patient_pk", PK, ForeignKey("patient_record.pk"), nullable=False),
    Column("patient_name", String(324), nullable=False),
    Column("patient_birth_date", String(8), nullable=False),
    Column("patient_sex", String(2), nullable=False),
    Column("referring_physician", String(324), nullable=False),
    Column("reason", Text, nullable=False),
    Column("status", String(16), nullable=False),  # order_status() of its steps, for listing
    Column("source", String(16), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_imaging_order_placer", "placer_order_number"),
    Index("ix_imaging_order_patient", "patient_pk"),
)

requested_procedure = Table(
    "requested_procedure",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("order_pk", PK, ForeignKey("imaging_order.pk", ondelete="CASCADE"), nullable=False),
    Column("procedure_id", String(16), nullable=False),
    Column("description", String(64), nullable=False),
    Column("code_value", String(64), nullable=False),
    Column("code_scheme", String(64), nullable=False),
    Column("code_meaning", String(64), nullable=False),
    Column("study_instance_uid", String(64), nullable=False),
    Column("priority", String(16), nullable=False),
    UniqueConstraint("order_pk", "procedure_id", name="uq_requested_procedure_id"),
    # Linking a stored study to its order looks procedures up by these (index/links.py).
    Index("ix_requested_procedure_procedure_id", "procedure_id"),
    Index("ix_requested_procedure_study", "study_instance_uid"),
)

scheduled_procedure_step = Table(
    "scheduled_procedure_step",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("procedure_pk", PK, ForeignKey("requested_procedure.pk", ondelete="CASCADE"), nullable=False),
    Column("step_id", String(16), nullable=False),
    Column("modality", String(16), nullable=False),
    Column("description", String(64), nullable=False),
    Column("station_ae_title", String(16), nullable=False),
    Column("station_name", String(16), nullable=False),
    Column("location", String(64), nullable=False),
    # Naive local date and time, as DICOM DA/TM carry them; NULL: not yet known.
    Column("start_at", DateTime(timezone=False)),
    Column("performing_physician", String(324), nullable=False),
    Column("protocol_value", String(64), nullable=False),
    Column("protocol_scheme", String(64), nullable=False),
    Column("protocol_meaning", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    UniqueConstraint("procedure_pk", "step_id", name="uq_scheduled_procedure_step_id"),
    Index("ix_sps_worklist", "status", "modality", "start_at"),
    Index("ix_sps_station", "station_ae_title"),
)

patient_merge = Table(
    "patient_merge",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("surviving_patient_id", String(64), nullable=False),
    Column("surviving_issuer", String(64), nullable=False),
    Column("prior_patient_id", String(64), nullable=False),
    Column("prior_issuer", String(64), nullable=False),
    Column("orders_moved", Integer, nullable=False),
    Column("source", String(16), nullable=False),
    Column("merged_at", UtcDateTime, nullable=False),
    Index("ix_patient_merge_prior", "prior_patient_id", "prior_issuer"),
)
