"""Modality Performed Procedure Steps (PS3.4 F.7) and the HL7 v2 messages that tell
the order system about them.

``performed_procedure_step`` holds one row per SOP Instance UID with its status
and its whole attribute set as DICOM JSON; ``performed_step_link`` one row per
Scheduled Step Attributes Sequence item (what it performs, and the order it
was linked to, "" for none); ``hl7_outbox`` the status messages still to be
delivered over MLLP, written in the same transaction as the change they report.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, Integer, String, Table, Text

from dicomhub.index.schema.base import metadata
from dicomhub.index.schema.types import PK, UtcDateTime

__all__ = ["hl7_outbox", "performed_procedure_step", "performed_step_link"]

performed_procedure_step = Table(
    "performed_procedure_step",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("modality", String(16), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("calling_ae_title", String(16), nullable=False),
    Column("attributes", Text, nullable=False),  # DICOM JSON (PS3.18 F.2)
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_performed_procedure_step_status", "status"),
)

performed_step_link = Table(
    "performed_step_link",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("step_pk", PK, ForeignKey("performed_procedure_step.pk", ondelete="CASCADE"), nullable=False),
    Column("accession_number", String(64), nullable=False),
    Column("requested_procedure_id", String(64), nullable=False),
    Column("scheduled_procedure_step_id", String(64), nullable=False),
    Column("study_instance_uid", String(64), nullable=False),
    Column("order_id", String(64), nullable=False),  # "": no order matched (unscheduled)
    Index("ix_performed_step_link_step", "step_pk"),
    Index("ix_performed_step_link_accession", "accession_number"),
)

hl7_outbox = Table(
    "hl7_outbox",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("destination", String(255), nullable=False),  # host:port
    Column("control_id", String(32), nullable=False),  # MSH-10
    Column("message", Text, nullable=False),
    Column("subject", String(64), nullable=False),  # what it reports, for logs (SOP Instance UID)
    Column("state", String(16), nullable=False),  # pending, delivered, gave-up
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("last_error", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("delivered_at", UtcDateTime),
    Index("ix_hl7_outbox_due", "state", "next_attempt_at"),
)
