"""Points in time as dicomhub keeps them: aware datetimes in UTC.

Every time the archive records (receipt, audit events, job heartbeats, token
expiry) is UTC, and every datetime that crosses a module boundary is aware, so
that comparisons never mix local and UTC wall clocks. The index column type
that keeps this promise on SQLite and PostgreSQL is
:class:`dicomhub.index.schema.types.UtcDateTime`.
"""

from __future__ import annotations

import datetime as dt

__all__ = ["as_utc", "iso_utc", "utc_now"]


def utc_now() -> dt.datetime:
    """The current time, aware, in UTC."""
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """``value`` in UTC; a naive ``value`` is read as UTC.

    For times a person or a peer wrote without a zone (an ISO 8601 query
    parameter such as ``since=2026-01-01``), where UTC is the documented reading.
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def iso_utc(value: dt.datetime | None) -> str | None:
    """ISO 8601 text of ``value`` in UTC (``...+00:00``); None for None."""
    return None if value is None else as_utc(value).isoformat()
