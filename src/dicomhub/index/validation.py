"""SQL of IOD validation: which objects were checked, from which source, and what was found.

Kept apart from :mod:`dicomhub.index.repository` (the store and query path),
like :mod:`dicomhub.index.checks`: operations data, written by the ingest path
(warn / reject policies) or the background process, read by ``dicomhub
validate`` and the admin endpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Select, case, delete, func, insert, or_, select

from dicomhub.index import engine as engines
from dicomhub.index.cursors import move_cursor, read_cursor
from dicomhub.index.schema import instance, series, study, validation_finding, validation_instance
from dicomhub.model.timestamps import iso_utc, utc_now

__all__ = [
    "FindingRow",
    "PendingValidation",
    "ValidationRecord",
    "ValidationRepository",
    "insert_validation_records",
]


@dataclass(frozen=True, slots=True)
class FindingRow:
    """One finding as stored (the index knows no :class:`dicomhub.iod.validate.Finding`)."""

    severity: str  # "error" or "warning"
    code: str
    module: str
    attribute: str
    message: str


@dataclass(frozen=True, slots=True)
class ValidationRecord:
    """The result of checking one object."""

    sop_instance_uid: str
    sop_class_uid: str
    source_ae_title: str | None
    findings: Sequence[FindingRow]
    rejected: bool = False


@dataclass(frozen=True, slots=True)
class PendingValidation:
    """An instance stored since the validation worker's cursor."""

    pk: int
    sop_instance_uid: str
    sop_class_uid: str
    blob_key: str
    source_ae_title: str | None
    # True when this copy was already checked (inline, by the warn / reject policies).
    checked: bool


def insert_validation_records(conn: Connection, records: Sequence[ValidationRecord]) -> None:
    """Save the results of ``records`` inside the caller's transaction, replacing earlier
    ones of the same objects (ingest writes an object's findings with its row)."""
    now = utc_now()
    uids = [r.sop_instance_uid for r in records]
    for start in range(0, len(uids), 500):
        chunk = uids[start : start + 500]
        conn.execute(delete(validation_finding).where(validation_finding.c.sop_instance_uid.in_(chunk)))
        conn.execute(delete(validation_instance).where(validation_instance.c.sop_instance_uid.in_(chunk)))
    if not records:
        return
    conn.execute(
        insert(validation_instance),
        [
            {
                "sop_instance_uid": r.sop_instance_uid,
                "sop_class_uid": r.sop_class_uid,
                "source_ae_title": r.source_ae_title,
                "errors": sum(1 for f in r.findings if f.severity == "error"),
                "warnings": sum(1 for f in r.findings if f.severity != "error"),
                "rejected": r.rejected,
                "checked_at": now,
            }
            for r in records
        ],
    )
    rows = [
        {
            "sop_instance_uid": r.sop_instance_uid,
            "severity": f.severity,
            "code": f.code,
            "module": f.module,
            "attribute": f.attribute[:256],
            "message": f.message,
        }
        for r in records
        for f in r.findings
    ]
    if rows:
        conn.execute(insert(validation_finding), rows)


def series_of_study(study_instance_uid: str) -> Select[tuple[int]]:
    """The pks of the series of one study, for ``instance.series_pk IN (...)``."""
    return (
        select(series.c.pk)
        .join(study, study.c.pk == series.c.study_pk)
        .where(study.c.study_instance_uid == study_instance_uid)
    )


class ValidationRepository:
    """Validation results and the cursor of the worker that produces them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -------------------------------------------------------------- writing

    def record(self, records: Sequence[ValidationRecord], cursor: tuple[str, int] | None = None) -> None:
        """Save results (replacing earlier ones of the same objects) and move a cursor, in one transaction."""
        with engines.write(self.engine) as conn:
            insert_validation_records(conn, records)
            if cursor is not None:
                move_cursor(conn, *cursor)

    # -------------------------------------------------------------- the worker's stream

    def cursor(self, name: str) -> int:
        """Position of the named worker (0 when it never ran)."""
        return read_cursor(self.engine, name)

    def instances_after(self, pk: int, limit: int) -> list[PendingValidation]:
        """Instances with a pk above ``pk``, oldest first, with whether this copy was checked already."""
        with engines.read(self.engine) as conn:
            rows = conn.execute(
                select(
                    instance.c.pk,
                    instance.c.sop_instance_uid,
                    instance.c.sop_class_uid,
                    instance.c.blob_key,
                    instance.c.source_ae_title,
                    instance.c.received_at,
                    validation_instance.c.checked_at,
                )
                .select_from(
                    instance.outerjoin(
                        validation_instance,
                        validation_instance.c.sop_instance_uid == instance.c.sop_instance_uid,
                    )
                )
                .where(instance.c.pk > pk)
                .order_by(instance.c.pk)
                .limit(limit)
            ).all()
        return [
            PendingValidation(
                r.pk,
                r.sop_instance_uid,
                r.sop_class_uid,
                r.blob_key,
                r.source_ae_title,
                r.checked_at is not None and r.checked_at >= r.received_at,
            )
            for r in rows
        ]

    # -------------------------------------------------------------- reading

    def findings(
        self,
        *,
        source_ae_title: str | None = None,
        sop_instance_uid: str | None = None,
        severity: str | None = None,
        study_instance_uid: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Findings, newest check first, of objects still held (or refused by policy);
        with ``study_instance_uid``, of the objects held in that study (series by the
        study's index, instances by ``series_pk``'s)."""
        query = (
            select(
                validation_instance.c.sop_instance_uid,
                validation_instance.c.sop_class_uid,
                validation_instance.c.source_ae_title,
                validation_finding.c.severity,
                validation_finding.c.code,
                validation_finding.c.module,
                validation_finding.c.attribute,
                validation_finding.c.message,
                validation_instance.c.checked_at,
                validation_instance.c.rejected,
            )
            .select_from(
                validation_finding.join(
                    validation_instance,
                    validation_instance.c.sop_instance_uid == validation_finding.c.sop_instance_uid,
                ).outerjoin(instance, instance.c.sop_instance_uid == validation_instance.c.sop_instance_uid)
            )
            .where(_held())
            .order_by(validation_instance.c.checked_at.desc(), validation_finding.c.pk)
            .limit(max(0, limit))
        )
        if source_ae_title is not None:
            query = query.where(validation_instance.c.source_ae_title == source_ae_title)
        if sop_instance_uid is not None:
            query = query.where(validation_instance.c.sop_instance_uid == sop_instance_uid)
        if severity is not None:
            query = query.where(validation_finding.c.severity == severity)
        if study_instance_uid is not None:
            query = query.where(instance.c.series_pk.in_(series_of_study(study_instance_uid)))
        with engines.read(self.engine) as conn:
            rows = conn.execute(query).mappings().all()
        out = []
        for r in rows:
            item = dict(r)
            item["checked_at"] = iso_utc(item["checked_at"])
            item["rejected"] = bool(item["rejected"])
            out.append(item)
        return out

    def summary(self, top: int = 5) -> list[dict[str, Any]]:
        """Per source AE (None: not received over DIMSE): objects checked, with errors, with
        warnings, refused, and the most frequent findings."""
        held = validation_instance.outerjoin(
            instance, instance.c.sop_instance_uid == validation_instance.c.sop_instance_uid
        )
        source = validation_instance.c.source_ae_title
        with engines.read(self.engine) as conn:
            counts = conn.execute(
                select(
                    source,
                    func.count().label("checked"),
                    func.sum(_flag(validation_instance.c.errors > 0)).label("with_errors"),
                    func.sum(_flag(validation_instance.c.warnings > 0)).label("with_warnings"),
                    func.sum(_flag(validation_instance.c.rejected.is_(True))).label("rejected"),
                    func.max(validation_instance.c.checked_at).label("last_checked_at"),
                )
                .select_from(held)
                .where(_held())
                .group_by(source)
                .order_by(source)
            ).all()
            frequent = conn.execute(
                select(
                    source,
                    validation_finding.c.severity,
                    validation_finding.c.code,
                    validation_finding.c.attribute,
                    func.count(func.distinct(validation_finding.c.sop_instance_uid)).label("instances"),
                )
                .select_from(
                    validation_finding.join(
                        validation_instance,
                        validation_instance.c.sop_instance_uid == validation_finding.c.sop_instance_uid,
                    ).outerjoin(
                        instance, instance.c.sop_instance_uid == validation_instance.c.sop_instance_uid
                    )
                )
                .where(_held())
                .group_by(
                    source,
                    validation_finding.c.severity,
                    validation_finding.c.code,
                    validation_finding.c.attribute,
                )
            ).all()
        tops: dict[str | None, list[dict[str, Any]]] = {}
        for r in sorted(frequent, key=lambda r: (-r.instances, r.severity, r.code, r.attribute)):
            bucket = tops.setdefault(r.source_ae_title, [])
            if len(bucket) < top:
                bucket.append(
                    {
                        "severity": r.severity,
                        "code": r.code,
                        "attribute": r.attribute,
                        "instances": int(r.instances),
                    }
                )
        return [
            {
                "source_ae_title": r.source_ae_title,
                "instances_checked": int(r.checked),
                "instances_with_errors": int(r.with_errors or 0),
                "instances_with_warnings": int(r.with_warnings or 0),
                "instances_rejected": int(r.rejected or 0),
                "last_checked_at": iso_utc(r.last_checked_at),
                "top_findings": tops.get(r.source_ae_title, []),
            }
            for r in counts
        ]


def _held() -> Any:
    # A result about an object since deleted is stale; refused objects never had a row.
    return or_(instance.c.pk.is_not(None), validation_instance.c.rejected.is_(True))


def _flag(condition: Any) -> Any:
    return case((condition, 1), else_=0)
