"""Query -> SQL: the one place where matching rules become SQL.

Conditions on indexed columns become WHERE clauses; conditions on any other
attribute are returned as *residual* conditions, applied by the caller to the
stored header (see :func:`dicomhub.model.query.matches`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, FromClause, Select, and_, exists, func, literal, or_, select
from sqlalchemy.sql.elements import ColumnClause

from dicomhub.index.rejection import visible_clause
from dicomhub.index.schema import instance, patient, series, study, study_label
from dicomhub.model.access import StudyFilter
from dicomhub.model.attributes import BY_KEYWORD, Attribute
from dicomhub.model.identifiers import Level
from dicomhub.model.query import (
    Condition,
    OrderKey,
    Query,
    Range,
    Single,
    UidList,
    ValueList,
    Wildcard,
    range_bounds,
)

__all__ = [
    "CompiledQuery",
    "compile_query",
    "fuzzy_words",
    "labelled_clause",
    "like_pattern",
    "order_columns",
    "patient_counts",
    "scope_clause",
    "study_clause",
]

_TABLE = {Level.PATIENT: patient, Level.STUDY: study, Level.SERIES: series, Level.IMAGE: instance}
_PN_KEY = {
    "patient_name": "patient_name_key",
    "referring_physician_name": "referring_physician_name_key",
}
_ESCAPE = "!"
_FUZZY_SPLIT = re.compile(r"[\s,^=]+")


@dataclass(frozen=True, slots=True)
class CompiledQuery:
    """The SQL of a query plus the conditions SQL could not express."""

    statement: Select[tuple[object, ...]]
    residual: tuple[Condition, ...]


def like_pattern(wildcard: str) -> str:
    """Translate a DICOM wildcard (``*``, ``?``) into a LIKE pattern escaped with ``!``."""
    out = []
    for ch in wildcard:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_!":
            out.append(_ESCAPE + ch)
        else:
            out.append(ch)
    return "".join(out)


def _from_clause(level: Level) -> FromClause:
    joined: FromClause = patient
    if level.depth >= 1:
        joined = joined.join(study, study.c.patient_pk == patient.c.pk)
    if level.depth >= 2:
        joined = joined.join(series, series.c.study_pk == study.c.pk)
    if level.depth >= 3:
        joined = joined.join(instance, instance.c.series_pk == series.c.pk)
    return joined


def fuzzy_words(value: str) -> list[str]:
    """The words of a fuzzy person name query value, upper-cased.

    Words are separated by spaces, commas and the PN delimiters ``^`` and ``=``.
    """
    return [w for w in _FUZZY_SPLIT.split(value.upper()) if w and w != "*"]


def _fuzzy_clause(column: ColumnClause[object], value: str) -> ColumnElement[bool] | None:
    # PS3.18 8.3.4.2 leaves fuzzy matching to the origin server. dicomhub's
    # rule: every word of the value must match the start of a name component
    # (or of a word inside one), case-insensitively, in any order. The stored
    # key is the upper-cased PN value, so a component starts at the beginning
    # or after "^", "=" or a space.
    words = fuzzy_words(value)
    if not words:
        return None
    parts: list[ColumnElement[bool]] = []
    for word in words:
        pattern = like_pattern(word) + "%"
        parts.append(
            or_(
                column.like(pattern, escape=_ESCAPE),
                *(column.like("%" + sep + pattern, escape=_ESCAPE) for sep in ("^", "=", " ")),
            )
        )
    return and_(*parts)


def _column_clause(
    attr: Attribute, cond: Condition, fuzzy: bool = False
) -> ColumnElement[bool] | None:
    table = _TABLE[attr.level]
    column: ColumnClause[object] = table.c[attr.column]
    folded = attr.column in _PN_KEY
    if folded:
        column = table.c[_PN_KEY[attr.column]]
    m = cond.matcher
    if fuzzy and folded and isinstance(m, (Single, Wildcard)):
        return _fuzzy_clause(column, m.value if isinstance(m, Single) else m.pattern)

    def norm(value: str) -> object:
        if attr.integer:
            return int(value)
        return value.upper() if folded else value

    try:
        if isinstance(m, Single):
            return column == norm(m.value)
        if isinstance(m, (UidList, ValueList)):
            return column.in_([norm(v) for v in m.values])
        if isinstance(m, Wildcard):
            if attr.integer:
                return None
            pattern = like_pattern(m.pattern.upper() if folded else m.pattern)
            return column.like(pattern, escape=_ESCAPE)
        if isinstance(m, Range):
            lower, upper = range_bounds(attr.vr, m)
            parts: list[ColumnElement[bool]] = []
            if lower is not None:
                parts.append(column >= lower)
            if upper is not None:
                parts.append(column <= upper)
            return and_(*parts)
    except ValueError:
        # A non-numeric value for an IS key can match nothing.
        return literal(False)
    return None


def _modalities_clause(cond: Condition) -> ColumnElement[bool] | None:
    m = cond.matcher
    if isinstance(m, Single):
        values: Sequence[str] = (m.value,)
    elif isinstance(m, (ValueList, UidList)):
        values = m.values
    elif isinstance(m, Wildcard):
        wrapped = "\\" + like_pattern(m.pattern) + "\\"
        return (literal("\\") + study.c.modalities_in_study + literal("\\")).like(
            "%" + wrapped + "%", escape=_ESCAPE
        )
    else:
        return None
    # Stored as "CT\MR": match a whole value between separators.
    boxed = literal("\\") + study.c.modalities_in_study + literal("\\")
    return or_(*(boxed.like("%\\" + like_pattern(v) + "\\%", escape=_ESCAPE) for v in values))


def compile_query(
    query: Query,
    columns: Sequence[ColumnElement[object] | FromClause] | None = None,
    scope: ColumnElement[bool] | None = None,
) -> CompiledQuery:
    """Compile ``query`` into a SELECT over the hierarchy down to its level.

    Parameters
    ----------
    query : Query
        The protocol-neutral query.
    columns : sequence, optional
        What to select; by default every column of every joined level.
    scope : ColumnElement, optional
        An access-control predicate of the caller, AND-ed inside the query so
        that counts, limits and offsets only ever see permitted rows.

    Rejected instances (and series and studies holding nothing else) are
    left out unless ``query.include_rejected`` (:mod:`dicomhub.index.rejection`).
    """
    level = query.level
    where: list[ColumnElement[bool]] = []
    residual: list[Condition] = []
    for cond in query.conditions:
        attr = BY_KEYWORD.get(cond.keyword)
        if cond.keyword == "ModalitiesInStudy" and level.depth >= Level.STUDY.depth:
            clause = _modalities_clause(cond)
        elif attr is not None and attr.level.depth <= level.depth:
            clause = _column_clause(attr, cond, fuzzy=query.fuzzy_person_names)
        elif attr is not None:
            # A key of a lower level than the query's: not a matching key here.
            continue
        else:
            clause = None
        if clause is None:
            residual.append(cond)
        else:
            where.append(clause)
    if query.labels and level.depth >= Level.STUDY.depth:
        where.append(labelled_clause(query.labels))
    if scope is not None:
        where.append(scope)
    if not query.include_rejected:
        visible = visible_clause(level)
        if visible is not None:
            where.append(visible)
    if columns is None:
        columns = [patient, study, series, instance][: level.depth + 1]
    table = _TABLE[level]
    stmt: Select[tuple[object, ...]] = select(*columns).select_from(_from_clause(level))
    if where:
        stmt = stmt.where(and_(*where))
    # The pk last: a stable order, so that offset pages neither repeat nor skip a match.
    stmt = stmt.order_by(*order_columns(query.order_by, level), table.c.pk)
    if not residual:
        if query.limit is not None:
            stmt = stmt.limit(query.limit)
        if query.offset:
            stmt = stmt.offset(query.offset)
    return CompiledQuery(statement=stmt, residual=tuple(residual))


def labelled_clause(labels: Sequence[str]) -> ColumnElement[bool]:
    """A predicate on the ``study`` table: the study carries one of ``labels``
    (an index seek on ``ix_study_label_label``)."""
    return exists(
        select(study_label.c.pk).where(
            study_label.c.study_instance_uid == study.c.study_instance_uid,
            study_label.c.label.in_(sorted(set(labels))),
        )
    )


# The indexed column each orderable key sorts by (PatientName by its folded key:
# the order a case-insensitive search would show).
_ORDER_COLUMN = {
    "StudyDate": (Level.STUDY, "study_date"),
    "PatientName": (Level.PATIENT, "patient_name_key"),
    "PatientID": (Level.PATIENT, "patient_id"),
    "AccessionNumber": (Level.STUDY, "accession_number"),
}


def order_columns(keys: Sequence[OrderKey], level: Level) -> list[ColumnElement[object]]:
    """ORDER BY terms for ``keys`` in a query at ``level``; keys of a lower level
    than the query's are ignored (they have no single value per match).

    Plain column order, so that a sorted first page can walk the column's index;
    where a missing value sorts is then the dialect's (SQLite: as the smallest,
    PostgreSQL: as the largest)."""
    terms: list[ColumnElement[object]] = []
    for key in keys:
        key_level, name = _ORDER_COLUMN[key.keyword]
        if key_level.depth > level.depth:
            continue
        column = _TABLE[key_level].c[name]
        terms.append(column.desc() if key.descending else column.asc())
    return terms


def study_clause(permitted: StudyFilter) -> ColumnElement[bool]:
    """A predicate on the ``study`` table: the study is one ``permitted`` covers.

    The Patient ID test goes through an alias of ``patient`` so that it never
    correlates with the patient table of the enclosing query.
    """
    if permitted.everything:
        return literal(True)
    parts: list[ColumnElement[bool]] = []
    if permitted.study_uids:
        parts.append(study.c.study_instance_uid.in_(sorted(permitted.study_uids)))
    if permitted.patient_ids:
        owner = patient.alias("permitted_patient")
        parts.append(
            study.c.patient_pk.in_(
                select(owner.c.pk).where(owner.c.patient_id.in_(sorted(permitted.patient_ids)))
            )
        )
    if permitted.labels:
        parts.append(
            exists(
                select(study_label.c.pk).where(
                    study_label.c.study_instance_uid == study.c.study_instance_uid,
                    study_label.c.label.in_(sorted(permitted.labels)),
                )
            )
        )
    return or_(*parts) if parts else literal(False)


def scope_clause(level: Level, permitted: StudyFilter | None) -> ColumnElement[bool] | None:
    """The ``scope`` of :func:`compile_query` for a query at ``level``: None when every
    study is permitted (the SQL is then that of an unrestricted query); at the
    patient level, patients with at least one permitted study."""
    if permitted is None or permitted.everything:
        return None
    if level is Level.PATIENT:
        return exists(select(study.c.pk).where(study.c.patient_pk == patient.c.pk, study_clause(permitted)))
    return study_clause(permitted)


def patient_counts(permitted: StudyFilter | None = None) -> dict[str, ColumnElement[object]]:
    """Scalar subqueries for the Number of Patient Related ... attributes, counting
    only the studies ``permitted`` covers."""
    where: list[ColumnElement[bool]] = [study.c.patient_pk == patient.c.pk]
    if permitted is not None and not permitted.everything:
        where.append(study_clause(permitted))
    return {
        "NumberOfPatientRelatedStudies": select(func.count(study.c.pk)).where(*where).scalar_subquery(),
        "NumberOfPatientRelatedSeries": select(func.coalesce(func.sum(study.c.number_of_series), 0))
        .where(*where)
        .scalar_subquery(),
        "NumberOfPatientRelatedInstances": select(
            func.coalesce(func.sum(study.c.number_of_instances), 0)
        )
        .where(*where)
        .scalar_subquery(),
    }
