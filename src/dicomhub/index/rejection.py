"""Rejected instances in the index: recording rejections, and the SQL that hides them.

A rejection note's rejections are written in the note's own row transaction
(:class:`RejectionWrite`, carried by :class:`~dicomhub.index.repository.Alongside`),
so that the note is never stored without its rejections nor the reverse.

Hiding is one predicate per query level (:func:`visible_clause`), which
:func:`~dicomhub.index.compile.compile_query` adds to every query unless the
query asks for rejected instances: C-FIND, QIDO-RS, C-GET/C-MOVE and WADO-RS
all compile their queries there. An instance is hidden when it has a
``rejected_instance`` row; a series or study when it has rejected instances and
no other instance. Both tests start with the rejection table, which is empty
for almost every study, so an archive without rejections pays one index probe
per row. :func:`visible_counts` gives the study and series counts without the
rejected instances, by the same rule.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, bindparam, case, exists, func, insert, or_, select

from dicomhub.errors import RejectionFailed
from dicomhub.index import engine as engines
from dicomhub.index.schema import change, instance, rejected_instance, series, study
from dicomhub.model.identifiers import Level
from dicomhub.model.rejection import SOPReference
from dicomhub.model.timestamps import utc_now

__all__ = [
    "RejectionRepository",
    "RejectionWrite",
    "rejection_row",
    "visible_clause",
    "visible_counts",
]

_CHUNK = 500
# Asked by every store (is this object rejected?): built once.
_REJECTION_OF = select(rejected_instance).where(rejected_instance.c.sop_instance_uid == bindparam("b_uid"))


def _not_rejected(inst: Any) -> ColumnElement[bool]:
    """``inst`` (the instance table or an alias of it) has no rejection."""
    r = rejected_instance.alias()
    return ~exists(select(r.c.pk).where(r.c.sop_instance_uid == inst.c.sop_instance_uid))


def _series_visible() -> ColumnElement[bool]:
    r = rejected_instance.alias()
    inner = instance.alias()
    return or_(
        ~exists(select(r.c.pk).where(r.c.series_instance_uid == series.c.series_instance_uid)),
        exists(select(inner.c.pk).where(inner.c.series_pk == series.c.pk, _not_rejected(inner))),
    )


def _study_visible() -> ColumnElement[bool]:
    r = rejected_instance.alias()
    inner = instance.alias()
    inner_series = series.alias()
    return or_(
        ~exists(select(r.c.pk).where(r.c.study_instance_uid == study.c.study_instance_uid)),
        exists(
            select(inner.c.pk)
            .select_from(inner.join(inner_series, inner_series.c.pk == inner.c.series_pk))
            .where(inner_series.c.study_pk == study.c.pk, _not_rejected(inner))
        ),
    )


# Built once per level: the clauses are the same for every query, and building the
# table aliases they need (the instance table's many columns) cost about 2 ms a query.
@functools.cache
def visible_clause(level: Level) -> ColumnElement[bool] | None:
    """The predicate a query at ``level`` adds to hide rejected instances (and the
    series and studies that hold nothing else); None at the patient level, whose
    patients stay listed."""
    if level is Level.IMAGE:
        return _not_rejected(instance)
    if level is Level.SERIES:
        return _series_visible()
    if level is Level.STUDY:
        return _study_visible()
    return None


@functools.cache
def rejection_row(conn: Connection, sop_instance_uid: str) -> dict[str, Any] | None:
    """The ``rejected_instance`` row of an instance, or None, in the caller's transaction."""
    row = conn.execute(_REJECTION_OF, {"b_uid": sop_instance_uid}).mappings().first()
    return None if row is None else dict(row)


@functools.cache
def visible_counts(level: Level) -> Mapping[str, ColumnElement[Any]]:
    """The count columns of :func:`~dicomhub.index.search.result_columns` without rejected
    instances: the stored count where the study (series) has no rejection, else counted."""
    out: dict[str, ColumnElement[Any]] = {}
    if level.depth >= Level.STUDY.depth:
        rs = rejected_instance.alias()
        touched = exists(select(rs.c.pk).where(rs.c.study_instance_uid == study.c.study_instance_uid))
        inner = instance.alias()
        inner_series = series.alias()
        joined = inner.join(inner_series, inner_series.c.pk == inner.c.series_pk)
        where = (inner_series.c.study_pk == study.c.pk, _not_rejected(inner))
        counted = select(func.count(inner.c.pk)).select_from(joined).where(*where).scalar_subquery()
        series_counted = (
            select(func.count(func.distinct(inner_series.c.pk)))
            .select_from(joined)
            .where(*where)
            .scalar_subquery()
        )
        out["number_of_series"] = case((touched, series_counted), else_=study.c.number_of_series)
        out["study_number_of_instances"] = case((touched, counted), else_=study.c.number_of_instances)
    if level.depth >= Level.SERIES.depth:
        rse = rejected_instance.alias()
        touched = exists(select(rse.c.pk).where(rse.c.series_instance_uid == series.c.series_instance_uid))
        inner = instance.alias()
        counted = (
            select(func.count(inner.c.pk))
            .where(inner.c.series_pk == series.c.pk, _not_rejected(inner))
            .scalar_subquery()
        )
        out["series_number_of_instances"] = case((touched, counted), else_=series.c.number_of_instances)
    return MappingProxyType(out)


@dataclass(frozen=True, slots=True)
class RejectionWrite:
    """The rejections of one rejection note, written in the note's row transaction.

    Every referenced instance must be held, in the series and study the note
    says; otherwise :class:`RejectionFailed` rolls the note back too (as
    dcm4chee-arc refuses such a note unless configured to accept rejections
    before storage). An instance already rejected keeps its first rejection.
    """

    rejection_note_uid: str
    code_value: str
    coding_scheme: str
    references: tuple[SOPReference, ...]
    rejected_by: str

    def write(self, conn: Connection) -> list[str]:
        """Record the rejections (and a ``rejected`` change per instance); return the
        SOP Instance UIDs newly rejected."""
        held = _held(conn, self.references)
        for ref in self.references:
            if held.get(ref.sop_instance_uid) != (ref.study_instance_uid, ref.series_instance_uid):
                raise RejectionFailed(
                    f"cannot reject instance {ref.sop_instance_uid}: not held in series "
                    f"{ref.series_instance_uid} of study {ref.study_instance_uid}"
                )
        uids = [r.sop_instance_uid for r in self.references]
        already = set(_rejected_among(conn, uids))
        new = [r for r in self.references if r.sop_instance_uid not in already]
        if not new:
            return []
        now = utc_now()
        conn.execute(
            insert(rejected_instance),
            [
                {
                    "sop_instance_uid": r.sop_instance_uid,
                    "series_instance_uid": r.series_instance_uid,
                    "study_instance_uid": r.study_instance_uid,
                    "sop_class_uid": r.sop_class_uid[:64],
                    "code_value": self.code_value,
                    "coding_scheme": self.coding_scheme,
                    "rejection_note_uid": self.rejection_note_uid,
                    "rejected_by": self.rejected_by[:128],
                    "at": now,
                }
                for r in new
            ],
        )
        conn.execute(
            insert(change),
            [
                {"change_type": "rejected", "level": Level.IMAGE.value, "uid": r.sop_instance_uid, "at": now}
                for r in new
            ],
        )
        return [r.sop_instance_uid for r in new]


def _held(conn: Connection, refs: Sequence[SOPReference]) -> dict[str, tuple[str, str]]:
    """(study, series) UIDs of the referenced instances that are held, by SOP Instance UID."""
    uids = [r.sop_instance_uid for r in refs]
    out: dict[str, tuple[str, str]] = {}
    for start in range(0, len(uids), _CHUNK):
        rows = conn.execute(
            select(instance.c.sop_instance_uid, study.c.study_instance_uid, series.c.series_instance_uid)
            .select_from(
                instance.join(series, series.c.pk == instance.c.series_pk).join(
                    study, study.c.pk == series.c.study_pk
                )
            )
            .where(instance.c.sop_instance_uid.in_(uids[start : start + _CHUNK]))
        ).all()
        out.update({str(uid): (str(st), str(se)) for uid, st, se in rows})
    return out


def _rejected_among(conn: Connection, uids: Sequence[str]) -> list[str]:
    out: list[str] = []
    for start in range(0, len(uids), _CHUNK):
        out += [
            str(u)
            for (u,) in conn.execute(
                select(rejected_instance.c.sop_instance_uid).where(
                    rejected_instance.c.sop_instance_uid.in_(list(uids[start : start + _CHUNK]))
                )
            ).all()
        ]
    return out


class RejectionRepository:
    """Reads of the rejected instances (the writes go with a note's row: :class:`RejectionWrite`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def rejection_of(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """The rejection of an instance (its ``rejected_instance`` row), or None."""
        with engines.read(self.engine) as conn:
            return rejection_row(conn, sop_instance_uid)

    def missing(self, refs: Sequence[SOPReference]) -> list[SOPReference]:
        """The references that are not held (in the series and study they name)."""
        with engines.read(self.engine) as conn:
            held = _held(conn, refs)
        return [
            r for r in refs if held.get(r.sop_instance_uid) != (r.study_instance_uid, r.series_instance_uid)
        ]

    def rejections(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """The rejected instances of a study, oldest first."""
        with engines.read(self.engine) as conn:
            rows = (
                conn.execute(
                    select(rejected_instance)
                    .where(rejected_instance.c.study_instance_uid == study_instance_uid)
                    .order_by(rejected_instance.c.pk)
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]
