"""One statement that indexes an instance under known parents, on PostgreSQL.

Storing an instance into a series the process already knows writes four rows:
the instance, the series' and the study's counts, and a change log row. On
SQLite each is a call into a local library; on PostgreSQL each is a round trip
to the server, made while the group commit's other writers wait for the
batch's commit. This module sends all four as one statement with
data-modifying common table expressions:

* the instance row is inserted with ``ON CONFLICT (sop_instance_uid) DO
  NOTHING``: when the UID is held already (or a concurrent transaction
  commits it first; PostgreSQL waits for that one to end), nothing is
  inserted and the statement returns no key;
* the counts and the change row are written only when the instance row was
  (``EXISTS (SELECT FROM ins)``), so a UID that is held writes nothing at all
  and the caller goes on as before (the duplicate decision);
* the store also makes the series and study unstable again (``stable_at``
  cleared): setting a NULL to NULL changes nothing, so there is no separate
  conditional statement.

Every row touched is a different row, which PostgreSQL requires of the parts
of one statement. The caller takes the change log's append lock first
(:func:`dicomhub.index.engine.serialize_appends`).

SQLAlchemy does not cache the compiled form of a PostgreSQL ``INSERT ... ON
CONFLICT`` inside a CTE (it has no cache key), and compiling it costs more than
the round trip it saves; so it is compiled once per dialect and column set and
sent as the driver's SQL. Every value is a bound parameter.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Dialect, bindparam, exists, insert, literal_column, null, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.elements import ColumnClause

from dicomhub.index.schema import change, instance, series, study
from dicomhub.model.identifiers import Level

__all__ = ["insert_instance_row"]


@functools.cache
def _statement(dialect: Dialect, columns: tuple[str, ...]) -> str:
    """The SQL for an instance row of ``columns``, built and compiled once per dialect."""
    unknown = set(columns) - set(instance.c.keys())
    if unknown:
        raise ValueError(f"not instance columns: {sorted(unknown)}")
    ins = (
        pg_insert(instance)
        .values({name: bindparam(f"i_{name}", type_=instance.c[name].type) for name in columns})
        .on_conflict_do_nothing(index_elements=[instance.c.sop_instance_uid])
        .returning(instance.c.pk)
        .cte("ins")
    )
    stored = exists(select(ins.c.pk))
    now = bindparam("b_now", type_=study.c.updated_at.type)
    series_stored = (
        update(series)
        .where(series.c.pk == bindparam("b_series_pk"), stored)
        .values(number_of_instances=series.c.number_of_instances + _ONE, updated_at=now, stable_at=null())
        .returning(series.c.pk)
        .cte("series_stored")
    )
    study_stored = (
        update(study)
        .where(study.c.pk == bindparam("b_study_pk"), stored)
        .values(number_of_instances=study.c.number_of_instances + _ONE, updated_at=now, stable_at=null())
        .returning(study.c.pk)
        .cte("study_stored")
    )
    created = (
        insert(change)
        .from_select(
            ["change_type", "level", "uid", "at"],
            select(
                _CREATED,
                _IMAGE,
                bindparam("b_uid", type_=change.c.uid.type),
                bindparam("b_at", type_=change.c.at.type),
            ).select_from(ins),
        )
        .returning(change.c.seq)
        .cte("created")
    )
    statement = select(ins.c.pk).add_cte(series_stored, study_stored, created)
    return str(statement.compile(dialect=dialect))


# Constants of our own, written into the SQL (no parameter needed for them).
_ONE: ColumnClause[int] = literal_column("1")
_CREATED: ColumnClause[str] = literal_column("'created'")
_IMAGE: ColumnClause[str] = literal_column(f"'{Level.IMAGE.value}'")


def insert_instance_row(
    conn: Connection, row: Mapping[str, Any], series_pk: int, study_pk: int, now: dt.datetime
) -> int | None:
    """Insert ``row`` (an instance row, with its ``series_pk``) and what goes with it.

    The values go to the driver as they are (aware UTC datetimes, strings,
    numbers), as the columns' types would bind them.

    Returns the new instance's key, or None when its SOP Instance UID is
    indexed already: then nothing was written.
    """
    columns = tuple(sorted(row))
    params: dict[str, Any] = {f"i_{name}": row[name] for name in columns}
    params.update(
        b_series_pk=series_pk,
        b_study_pk=study_pk,
        b_now=now,
        b_uid=row["sop_instance_uid"],
        b_at=now,
    )
    pk = conn.exec_driver_sql(_statement(conn.dialect, columns), params).scalar()
    return None if pk is None else int(pk)
