"""Archive-to-archive migration: the inventory of each remote archive, migration
jobs with their per-series items, and reconcile reports.

Everything a migration knows lives here, so that a migration interrupted by a
crash or a restart resumes where it was: the inventory walk by the date
windows and studies it finished, a job by the series it transferred.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from dicomhub.index.schema.base import metadata
from dicomhub.index.schema.types import PK, UtcDateTime

__all__ = [
    "inventory_instance",
    "inventory_series",
    "inventory_study",
    "inventory_window",
    "migration_item",
    "migration_job",
    "migration_remote",
    "reconcile_run",
]

# The inventory state of a migration peer, keyed by the peer's name: how to reach
# it is in the peer registry (``peer``, revision 0014).
migration_remote = Table(
    "migration_remote",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("inventory_complete", Boolean, nullable=False, default=False),
    Column("inventory_at", UtcDateTime),
    Column("created_at", UtcDateTime, nullable=False),
)

# A date window of the inventory walk whose studies are all recorded.
inventory_window = Table(
    "inventory_window",
    metadata,
    Column("remote_pk", PK, ForeignKey("migration_remote.pk", ondelete="CASCADE"), primary_key=True),
    Column("window", String(40), primary_key=True),
    Column("studies", Integer, nullable=False),
)

inventory_study = Table(
    "inventory_study",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("remote_pk", PK, ForeignKey("migration_remote.pk", ondelete="CASCADE"), nullable=False),
    Column("study_instance_uid", String(64), nullable=False),
    Column("patient_id", String(64), nullable=False, default=""),
    Column("patient_name", String(324), nullable=False, default=""),
    Column("study_date", String(18), nullable=False, default=""),
    Column("accession_number", String(16), nullable=False, default=""),
    # Its series and instances are recorded (the walk goes down study by study).
    Column("complete", Boolean, nullable=False, default=False),
    UniqueConstraint("remote_pk", "study_instance_uid", name="uq_inventory_study"),
)

inventory_series = Table(
    "inventory_series",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("remote_pk", PK, ForeignKey("migration_remote.pk", ondelete="CASCADE"), nullable=False),
    Column("study_instance_uid", String(64), nullable=False),
    Column("series_instance_uid", String(64), nullable=False),
    Column("modality", String(16), nullable=False, default=""),
    UniqueConstraint("remote_pk", "series_instance_uid", name="uq_inventory_series"),
    Index("ix_inventory_series_study", "remote_pk", "study_instance_uid"),
)

inventory_instance = Table(
    "inventory_instance",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("remote_pk", PK, ForeignKey("migration_remote.pk", ondelete="CASCADE"), nullable=False),
    Column("series_instance_uid", String(64), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False, default=""),
    Column("content_sha256", String(64), nullable=False, default=""),
    UniqueConstraint("remote_pk", "sop_instance_uid", name="uq_inventory_instance"),
    Index("ix_inventory_instance_series", "remote_pk", "series_instance_uid"),
)

migration_job = Table(
    "migration_job",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("remote_pk", PK, ForeignKey("migration_remote.pk", ondelete="CASCADE"), nullable=False),
    Column("state", String(16), nullable=False),
    Column("selection_json", Text, nullable=False),
    Column("parallel", Integer, nullable=False),
    # Who runs it ("cli:PID" or "server:PID") and when it last said so: a
    # running job whose heartbeat is old lost its runner and may be taken over.
    Column("owner", String(64)),
    Column("heartbeat_at", UtcDateTime),
    Column("error", Text),
    Column("reconcile_clean", Boolean),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # pull: from the remote into dicomhub; push: from dicomhub to the remote (revision 0011).
    Column("direction", String(8), nullable=False, server_default="pull"),
    # The de-identification step on the way (project, options, reason, run), or NULL.
    Column("transform_json", Text),
    # What the report must say beyond the counts (objects sent in another syntax).
    Column("notes", Text),
    Index("ix_migration_job_state", "state"),
)

# One series to transfer, with what the source said it holds.
migration_item = Table(
    "migration_item",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("job_pk", PK, ForeignKey("migration_job.pk", ondelete="CASCADE"), nullable=False),
    Column("study_instance_uid", String(64), nullable=False),
    Column("series_instance_uid", String(64), nullable=False),
    Column("expected_instances", Integer, nullable=False),
    Column("expected_bytes", BigInteger, nullable=False, default=0),
    Column("state", String(16), nullable=False),  # pending / done / failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("transferred", Integer, nullable=False, default=0),
    Column("transferred_bytes", BigInteger, nullable=False, default=0),
    Column("error", Text),
    Index("ix_migration_item_job", "job_pk", "state"),
)

reconcile_run = Table(
    "reconcile_run",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("remote_pk", PK, ForeignKey("migration_remote.pk", ondelete="CASCADE"), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("clean", Boolean, nullable=False),
    Column("report_json", Text, nullable=False),
    Index("ix_reconcile_run_remote", "remote_pk", "at"),
)
