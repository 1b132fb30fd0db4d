"""Access control: principal kinds, expiring API tokens, scoped grants, study labels,
and the audit log reshaped into events with the studies they touched
(see :mod:`dicomhub.index.security`).

De-identification grants named a bare project; their scope becomes ``project:NAME``.
Audit entries of 0006 are copied into the new shape: their own action and outcome
words stay in the detail (``event``, ``result``), with their project.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

from dicomhub.model.audit import legacy_audit_codes

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)
_DEID_ROLES = ("deidentifier", "reidentifier")


def upgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("principal") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="user"))
    with op.batch_alter_table("api_token") as batch:
        batch.add_column(sa.Column("expires_at", _TS))

    grants = sa.table("role_grant", sa.column("pk"), sa.column("role"), sa.column("scope"))
    for pk, scope in bind.execute(
        sa.select(grants.c.pk, grants.c.scope).where(grants.c.role.in_(_DEID_ROLES))
    ).all():
        if not str(scope).startswith("project:"):
            bind.execute(sa.update(grants).where(grants.c.pk == pk).values(scope=f"project:{scope}"))

    op.create_table(
        "study_label",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("study_instance_uid", "label", name="uq_study_label"),
    )
    op.create_index("ix_study_label_label", "study_label", ["label", "study_instance_uid"])

    for name in ("ix_audit_event_at", "ix_audit_event_actor", "ix_audit_event_study_uid"):
        op.drop_index(name, table_name="audit_event")
    op.rename_table("audit_event", "audit_event_0006")
    op.create_table(
        "audit_event",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("at", _TS, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(4), nullable=False),
        sa.Column("principal", sa.String(128), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("ae_title", sa.String(16), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("detail_json", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_event_at", "audit_event", ["at"])
    op.create_index("ix_audit_event_action", "audit_event", ["action"])
    op.create_index("ix_audit_event_principal", "audit_event", ["principal"])
    op.create_table(
        "audit_study",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("event_pk", _PK, sa.ForeignKey("audit_event.pk"), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("series_instance_uids", sa.Text, nullable=False),
        sa.Column("number_of_instances", sa.Integer, nullable=False),
    )
    op.create_index("ix_audit_study_event_pk", "audit_study", ["event_pk"])
    op.create_index("ix_audit_study_study_instance_uid", "audit_study", ["study_instance_uid"])
    _copy_old_events(bind)
    op.drop_table("audit_event_0006")
    if bind.dialect.name == "postgresql":
        # Explicit pks were copied; the sequence must continue after them.
        bind.execute(
            sa.text(
                "SELECT setval(pg_get_serial_sequence('audit_event', 'pk'),"
                " COALESCE((SELECT MAX(pk) FROM audit_event), 0) + 1, false)"
            )
        )


def _copy_old_events(bind: sa.Connection) -> None:
    old = sa.table(
        "audit_event_0006",
        *(sa.column(c) for c in ("pk", "at", "actor", "source_address", "action", "project", "study_uid")),
        sa.column("detail_json"),
        sa.column("outcome"),
    )
    new = sa.table(
        "audit_event",
        *(
            sa.column(c)
            for c in ("pk", "at", "action", "outcome", "principal", "channel", "ae_title", "address")
        ),
        sa.column("detail_json"),
    )
    studies = sa.table(
        "audit_study",
        *(sa.column(c) for c in ("event_pk", "study_instance_uid", "patient_id", "series_instance_uids")),
        sa.column("number_of_instances"),
    )
    for row in bind.execute(sa.select(old).order_by(old.c.pk)).mappings():
        action, outcome = legacy_audit_codes(str(row["action"]), str(row["outcome"]))
        detail = json.loads(row["detail_json"] or "{}")
        detail.update(event=row["action"], result=row["outcome"])
        if row["project"]:
            detail["project"] = row["project"]
        bind.execute(
            sa.insert(new).values(
                pk=row["pk"],
                at=row["at"],
                action=action,
                outcome=outcome,
                principal=row["actor"],
                channel="http" if row["source_address"] else "cli",
                ae_title="",
                address=row["source_address"] or "",
                detail_json=json.dumps(detail, sort_keys=True),
            )
        )
        if row["study_uid"]:
            bind.execute(
                sa.insert(studies).values(
                    event_pk=row["pk"],
                    study_instance_uid=row["study_uid"],
                    patient_id="",
                    series_instance_uids="",
                    number_of_instances=0,
                )
            )


def downgrade() -> None:
    op.drop_table("audit_study")
    op.drop_table("audit_event")
    op.create_table(
        "audit_event",
        sa.Column("pk", _PK, primary_key=True, autoincrement=True),
        sa.Column("at", _TS, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("source_address", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("project", sa.String(64)),
        sa.Column("study_uid", sa.String(64)),
        sa.Column("detail_json", sa.Text, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_event_at", "audit_event", ["at"])
    op.create_index("ix_audit_event_actor", "audit_event", ["actor"])
    op.create_index("ix_audit_event_study_uid", "audit_event", ["study_uid"])
    op.drop_table("study_label")
    with op.batch_alter_table("api_token") as batch:
        batch.drop_column("expires_at")
    with op.batch_alter_table("principal") as batch:
        batch.drop_column("kind")
