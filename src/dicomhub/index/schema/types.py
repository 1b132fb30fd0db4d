"""The column types every table shares: one surrogate key type, one timestamp type.

``PK`` is BIGINT on PostgreSQL and INTEGER on SQLite, because SQLite only
autoincrements an ``INTEGER PRIMARY KEY`` (a BIGINT key would be a plain column
there, and a reused rowid could point a remembered key at another entity).

:class:`UtcDateTime` stores exactly what ``DateTime(timezone=True)`` stores (the
Alembic revisions create that type, and the database schema must not depend on
this module): ``TIMESTAMP WITH TIME ZONE`` on PostgreSQL, the
``YYYY-MM-DD HH:MM:SS.ffffff`` text of a UTC wall clock on SQLite. What it adds is
the same Python values on both: every bound value is converted to UTC first
(SQLite's text has no zone, so a value in another zone would be stored as the
wrong instant), and every value read comes back aware, in UTC (SQLite gives naive
values back, PostgreSQL values in the session's zone).

A naive datetime is refused rather than guessed at: inside the archive every time
comes from :func:`dicomhub.model.timestamps.utc_now` or from a parser that
already decided the zone (:func:`dicomhub.model.timestamps.as_utc`), so a naive
value here is a bug that would otherwise store local time as UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, DateTime, Dialect, Integer
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = ["PK", "UtcDateTime"]

PK: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC datetime, stored as ``DateTime(timezone=True)``.

    Raises
    ------
    ValueError
        When a naive datetime is bound (SQLAlchemy reports it wrapped in a
        ``StatementError``).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is dt.UTC:
            return value  # utc_now()'s values, most of what is bound: nothing to check or convert
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given to a UTC column: give it a time zone")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):  # pragma: no cover - both drivers give datetimes
            raise TypeError(f"a UTC column gave {type(value).__name__}, not a datetime")
        if value.tzinfo is None:  # SQLite: the UTC wall clock it was given
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)
