"""The index's queries: matches of a :class:`~dicomhub.model.query.Query` and the
instances below them (C-FIND, QIDO-RS, C-GET/C-MOVE, WADO-RS), read-only.

:class:`IndexSearch` is the query half of
:class:`~dicomhub.index.repository.IndexRepository`, which adds the writes;
the SQL of a query comes from :mod:`dicomhub.index.compile`, per dialect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Engine, RowMapping, func, select
from sqlalchemy.exc import SQLAlchemyError

from dicomhub.errors import IndexUnavailable
from dicomhub.index import engine as engines
from dicomhub.index.compile import compile_query, patient_counts, scope_clause
from dicomhub.index.rejection import visible_counts
from dicomhub.index.schema import instance, patient, series, study
from dicomhub.model.access import StudyFilter
from dicomhub.model.attributes import INDEXED
from dicomhub.model.identifiers import Level
from dicomhub.model.query import Condition, Query
from dicomhub.model.records import InstanceRow

__all__ = ["INSTANCE_COLUMNS", "IndexSearch", "SearchRow", "instance_row", "result_columns"]

# The columns an InstanceRow is read from (instance_row).
INSTANCE_COLUMNS = (
    instance.c.pk,
    instance.c.sop_instance_uid,
    instance.c.sop_class_uid,
    instance.c.transfer_syntax_uid,
    instance.c.blob_key,
    instance.c.size,
    instance.c.sha256,
    instance.c.content_sha256,
)


def instance_row(r: RowMapping) -> InstanceRow:
    return InstanceRow(
        pk=r["pk"],
        sop_instance_uid=r["sop_instance_uid"],
        sop_class_uid=r["sop_class_uid"],
        transfer_syntax_uid=r["transfer_syntax_uid"],
        blob_key=r["blob_key"],
        size=r["size"],
        sha256=r["sha256"],
        content_sha256=r.get("content_sha256", "") or "",
        study_instance_uid=r.get("study_instance_uid", "") or "",
        series_instance_uid=r.get("series_instance_uid", "") or "",
    )


@dataclass(frozen=True, slots=True)
class SearchRow:
    """One match: column values by name, plus keys to reach its header."""

    values: dict[str, Any]
    representative_blob_key: str | None
    representative_pk: int | None


def result_columns(level: Level, include_rejected: bool = False) -> list[Any]:
    """The attribute columns of ``level`` and every level above it, plus aggregates
    (counts without rejected instances unless ``include_rejected``)."""
    tables = {
        Level.PATIENT: patient,
        Level.STUDY: study,
        Level.SERIES: series,
        Level.IMAGE: instance,
    }
    cols: list[Any] = []
    for attr in INDEXED:
        if attr.level.depth <= level.depth:
            cols.append(tables[attr.level].c[attr.column])
    counts: Mapping[str, Any] = {} if include_rejected else visible_counts(level)
    if level.depth >= Level.STUDY.depth:
        cols += [
            study.c.modalities_in_study,
            counts.get("number_of_series", study.c.number_of_series).label("number_of_series"),
            counts.get("study_number_of_instances", study.c.number_of_instances).label(
                "study_number_of_instances"
            ),
        ]
    if level.depth >= Level.SERIES.depth:
        cols.append(
            counts.get("series_number_of_instances", series.c.number_of_instances).label(
                "series_number_of_instances"
            )
        )
    if level is Level.IMAGE:
        cols += [instance.c.transfer_syntax_uid, instance.c.size]
    return cols


class IndexSearch:
    """Queries over the index on one SQLAlchemy engine."""

    engine: Engine

    def search(
        self, query: Query, residual_ok: bool = True, permitted: StudyFilter | None = None
    ) -> tuple[list[SearchRow], tuple[Condition, ...]]:
        """Run ``query`` over the studies ``permitted`` covers (None: all); return the
        rows and the conditions left to apply.

        When residual conditions remain, limit and offset have not been
        applied: the caller filters, then pages.
        """
        level = query.level
        extra: list[Any] = []
        if level is Level.PATIENT:
            extra = [v.label(k) for k, v in patient_counts(permitted).items()]
        compiled = compile_query(
            query, columns=result_columns(level, query.include_rejected), scope=scope_clause(level, permitted)
        )
        stmt = compiled.statement
        rep_cols = self._representative_columns(level)
        stmt = stmt.add_columns(*extra, *rep_cols)
        try:
            with engines.read(self.engine) as conn:
                result = conn.execute(stmt).mappings().all()
        except SQLAlchemyError as exc:  # pragma: no cover - translated in read()
            raise IndexUnavailable(str(exc)) from exc
        rows = [
            SearchRow(
                values=dict(r),
                representative_blob_key=r.get("rep_blob_key"),
                representative_pk=r.get("rep_pk"),
            )
            for r in result
        ]
        return rows, compiled.residual

    def count(self, query: Query, permitted: StudyFilter | None = None) -> int | None:
        """How many entities match ``query`` in the studies ``permitted`` covers,
        whatever its limit and offset; None when conditions remain that SQL cannot
        express (the caller then counts the filtered rows)."""
        level = query.level
        table = {Level.PATIENT: patient, Level.STUDY: study, Level.SERIES: series}.get(level, instance)
        compiled = compile_query(
            replace(query, limit=None, offset=0, order_by=()),
            columns=[table.c.pk],
            scope=scope_clause(level, permitted),
        )
        if compiled.residual:
            return None
        stmt = select(func.count()).select_from(compiled.statement.order_by(None).subquery())
        with engines.read(self.engine) as conn:
            return int(conn.execute(stmt).scalar_one())

    def _representative_columns(self, level: Level) -> list[Any]:
        """The first instance below each match, whose header answers non-indexed keys."""
        if level is Level.IMAGE:
            return [instance.c.blob_key.label("rep_blob_key"), instance.c.pk.label("rep_pk")]
        if level is Level.SERIES:
            first = select(func.min(instance.c.pk)).where(instance.c.series_pk == series.c.pk)
        elif level is Level.STUDY:
            first = (
                select(func.min(instance.c.pk))
                .join(series, series.c.pk == instance.c.series_pk)
                .where(series.c.study_pk == study.c.pk)
            )
        else:
            first = (
                select(func.min(instance.c.pk))
                .join(series, series.c.pk == instance.c.series_pk)
                .join(study, study.c.pk == series.c.study_pk)
                .where(study.c.patient_pk == patient.c.pk)
            )
        return [first.scalar_subquery().label("rep_pk")]

    def instances_matching(
        self, query: Query, permitted: StudyFilter | None = None
    ) -> tuple[list[tuple[InstanceRow, int]], tuple[Condition, ...]]:
        """Instances below the matches of ``query`` (for C-GET/C-MOVE) in the studies
        ``permitted`` covers (None: all), with their pks."""
        image_query = Query(
            level=Level.IMAGE, conditions=query.conditions, include_rejected=query.include_rejected
        )
        compiled = compile_query(
            image_query,
            columns=[
                *INSTANCE_COLUMNS,
                study.c.study_instance_uid,
                series.c.series_instance_uid,
            ],
            scope=scope_clause(Level.IMAGE, permitted),
        )
        with engines.read(self.engine) as conn:
            rows = conn.execute(compiled.statement).mappings().all()
        return [(instance_row(r), r["pk"]) for r in rows], compiled.residual

    def header_json(self, instance_pks: Sequence[int]) -> dict[int, tuple[str | None, str]]:
        """Stored header JSON (or None) and blob key, by instance pk."""
        if not instance_pks:
            return {}
        with engines.read(self.engine) as conn:
            rows = conn.execute(
                select(instance.c.pk, instance.c.header_json, instance.c.blob_key).where(
                    instance.c.pk.in_(list(instance_pks))
                )
            ).all()
        return {pk: (js, key) for pk, js, key in rows}

    def instances_with_header_json(
        self, query: Query, permitted: StudyFilter | None = None
    ) -> tuple[list[tuple[InstanceRow, str | None]], tuple[Condition, ...]]:
        """Instances below the matches of ``query`` with their stored header JSON, in one query.

        For WADO-RS metadata: the JSON text (None when not prepared yet) comes
        with the row, so a series' metadata reads no blob.
        """
        image_query = Query(
            level=Level.IMAGE, conditions=query.conditions, include_rejected=query.include_rejected
        )
        compiled = compile_query(
            image_query,
            columns=[
                *INSTANCE_COLUMNS,
                study.c.study_instance_uid,
                series.c.series_instance_uid,
                instance.c.header_json,
            ],
            scope=scope_clause(Level.IMAGE, permitted),
        )
        with engines.read(self.engine) as conn:
            rows = conn.execute(compiled.statement).mappings().all()
        return [(instance_row(r), r["header_json"]) for r in rows], compiled.residual
