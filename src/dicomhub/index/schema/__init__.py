"""Every table of the index, in one package, on one ``MetaData``.

One module per group of tables (:mod:`.archive`, :mod:`.checks`, :mod:`.network`,
:mod:`.security`, :mod:`.deid`, :mod:`.migration_jobs`, :mod:`.orders`,
:mod:`.mpps`, :mod:`.links`, :mod:`.printing`, :mod:`.webhooks`, :mod:`.routing`,
:mod:`.trash`, :mod:`.rejection`, :mod:`.correction`), all built from the shared column types of :mod:`.types`
(one surrogate key type, one UTC timestamp type).
Generic SQLAlchemy types only, so that the same schema runs on SQLite (embedded
default) and PostgreSQL.

Importing this package defines every table, so ``metadata`` is complete for
``create_all`` and for comparing with the Alembic head. The Alembic revisions
(``index/migrations``) are frozen snapshots and never import this package: a
table changed here needs a new revision there.
"""

from __future__ import annotations

from dicomhub.index.schema.archive import (
    change,
    conflict,
    instance,
    patient,
    series,
    study,
    worker_cursor,
)
from dicomhub.index.schema.base import metadata
from dicomhub.index.schema.checks import (
    decode_check,
    validation_finding,
    validation_instance,
)
from dicomhub.index.schema.coercion import patient_coercion
from dicomhub.index.schema.correction import correction, study_coercion
from dicomhub.index.schema.deid import (
    MAPPING_VALUE_LENGTH,
    deid_mapping,
    deid_project,
    deid_run,
    deid_run_item,
)
from dicomhub.index.schema.links import study_order_link
from dicomhub.index.schema.migration_jobs import (
    inventory_instance,
    inventory_series,
    inventory_study,
    inventory_window,
    migration_item,
    migration_job,
    migration_remote,
    reconcile_run,
)
from dicomhub.index.schema.mpps import hl7_outbox, performed_procedure_step, performed_step_link
from dicomhub.index.schema.network import (
    association_log,
    peer,
    storage_commitment,
)
from dicomhub.index.schema.orders import (
    imaging_order,
    patient_merge,
    patient_record,
    requested_procedure,
    scheduled_procedure_step,
)
from dicomhub.index.schema.printing import print_film, print_job
from dicomhub.index.schema.rejection import rejected_instance
from dicomhub.index.schema.routing import route_item
from dicomhub.index.schema.security import (
    api_token,
    audit_event,
    audit_study,
    principal,
    role_grant,
    study_label,
)
from dicomhub.index.schema.trash import trash
from dicomhub.index.schema.types import PK, UtcDateTime
from dicomhub.index.schema.webhooks import webhook_delivery

__all__ = [
    "webhook_delivery",
    "MAPPING_VALUE_LENGTH",
    "PK",
    "UtcDateTime",
    "api_token",
    "association_log",
    "audit_event",
    "audit_study",
    "change",
    "conflict",
    "correction",
    "decode_check",
    "deid_mapping",
    "deid_project",
    "deid_run",
    "deid_run_item",
    "hl7_outbox",
    "imaging_order",
    "instance",
    "inventory_instance",
    "inventory_series",
    "inventory_study",
    "inventory_window",
    "metadata",
    "migration_item",
    "migration_job",
    "migration_remote",
    "patient",
    "patient_coercion",
    "patient_merge",
    "patient_record",
    "peer",
    "performed_procedure_step",
    "performed_step_link",
    "principal",
    "print_film",
    "print_job",
    "reconcile_run",
    "route_item",
    "rejected_instance",
    "requested_procedure",
    "role_grant",
    "scheduled_procedure_step",
    "series",
    "storage_commitment",
    "study",
    "study_coercion",
    "study_label",
    "study_order_link",
    "trash",
    "validation_finding",
    "validation_instance",
    "worker_cursor",
]
