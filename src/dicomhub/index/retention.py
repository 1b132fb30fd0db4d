"""SQL of retention: the studies a :class:`~dicomhub.model.retention.RetentionRule` takes,
and when the rules were last applied (a ``worker_cursor`` row, so that every node and
every restart agrees on it)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Engine, exists, func, select, update
from sqlalchemy.exc import IntegrityError

from dicomhub.index import engine as engines
from dicomhub.index.schema import (
    instance,
    patient,
    rejected_instance,
    series,
    study,
    study_label,
    worker_cursor,
)
from dicomhub.model.retention import RetentionAction, RetentionBasis, RetentionRule

__all__ = ["RetentionCandidate", "RetentionRepository"]

_LAST_RUN = "retention-last-run"


@dataclass(frozen=True, slots=True)
class RetentionCandidate:
    """A study a rule takes now."""

    study_instance_uid: str
    patient_id: str
    study_date: str
    modalities: str
    instances: int


class RetentionRepository:
    """Finds the studies of a rule; remembers the last run."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def candidates(self, rule: RetentionRule, now: dt.datetime, limit: int) -> list[RetentionCandidate]:
        """Up to ``limit`` studies that meet every condition of ``rule`` at ``now``, oldest key first."""
        conditions: list[ColumnElement[bool]] = []
        if rule.by is RetentionBasis.STUDY_DATE:
            # Text comparison of YYYYMMDD; values that are no such date are left out below.
            conditions += [
                func.length(study.c.study_date) == 8,
                study.c.study_date < rule.study_date_cutoff(now),
            ]
        else:
            conditions.append(
                ~exists(
                    select(instance.c.pk)
                    .join(series, series.c.pk == instance.c.series_pk)
                    .where(series.c.study_pk == study.c.pk, instance.c.received_at >= rule.cutoff(now))
                )
            )
        if rule.modality is not None:
            conditions.append(
                exists(
                    select(series.c.pk).where(
                        series.c.study_pk == study.c.pk, series.c.modality == rule.modality
                    )
                )
            )
        if rule.label is not None:
            conditions.append(
                exists(
                    select(study_label.c.pk).where(
                        study_label.c.study_instance_uid == study.c.study_instance_uid,
                        study_label.c.label == rule.label,
                    )
                )
            )
        if rule.source is not None:
            conditions.append(
                exists(
                    select(instance.c.pk)
                    .join(series, series.c.pk == instance.c.series_pk)
                    .where(series.c.study_pk == study.c.pk, instance.c.source_ae_title == rule.source)
                )
            )
        if rule.action is RetentionAction.REJECT:
            # A study with nothing left to reject (rejected before, only notes left) is done.
            conditions.append(
                exists(
                    select(instance.c.pk)
                    .join(series, series.c.pk == instance.c.series_pk)
                    .where(
                        series.c.study_pk == study.c.pk,
                        ~exists(
                            select(rejected_instance.c.pk).where(
                                rejected_instance.c.sop_instance_uid == instance.c.sop_instance_uid
                            )
                        ),
                        ~exists(
                            select(rejected_instance.c.pk).where(
                                rejected_instance.c.rejection_note_uid == instance.c.sop_instance_uid
                            )
                        ),
                    )
                )
            )
        query = (
            select(
                study.c.study_instance_uid,
                patient.c.patient_id,
                study.c.study_date,
                study.c.modalities_in_study,
                study.c.number_of_instances,
            )
            .join(patient, patient.c.pk == study.c.patient_pk)
            .where(*conditions)
            .order_by(study.c.pk)
            .limit(limit)
        )
        with engines.read(self.engine) as conn:
            rows = conn.execute(query).all()
        found = [
            RetentionCandidate(str(r[0]), str(r[1]), str(r[2] or ""), str(r[3] or ""), int(r[4]))
            for r in rows
        ]
        if rule.by is RetentionBasis.STUDY_DATE:
            found = [c for c in found if rule.old_by_study_date(c.study_date, now)]
        return found

    def last_run(self) -> dt.datetime | None:
        """When the rules were last applied by the background job (None: never)."""
        with engines.read(self.engine) as conn:
            position = conn.execute(
                select(worker_cursor.c.position).where(worker_cursor.c.name == _LAST_RUN)
            ).scalar()
        return None if position is None else dt.datetime.fromtimestamp(int(position), dt.UTC)

    def set_last_run(self, at: dt.datetime) -> None:
        """Record that the rules were applied at ``at``."""
        seconds = int(at.timestamp())
        try:
            with engines.write(self.engine) as conn:
                moved = conn.execute(
                    update(worker_cursor).where(worker_cursor.c.name == _LAST_RUN).values(position=seconds)
                ).rowcount
                if not moved:
                    conn.execute(worker_cursor.insert().values(name=_LAST_RUN, position=seconds))
        except IntegrityError:  # another node inserted it first: it ran at about the same time
            return
