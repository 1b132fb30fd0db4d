"""The index schema package: the tables match the Alembic head on both dialects, and
the one timestamp type stores UTC and gives back aware UTC datetimes on both.

Naive datetimes are refused by :class:`UtcDateTime` (a bug inside the archive would
otherwise store a local wall clock as UTC); the edges that accept zone-less text from
people read it as UTC with :func:`dicomhub.model.timestamps.as_utc`.
"""

from __future__ import annotations

import datetime as dt

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, select, text
from sqlalchemy.exc import StatementError

from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.schema import change, metadata
from dicomhub.model.timestamps import as_utc, iso_utc, utc_now

# Revision 0008 adds indexes the metadata cannot declare (varchar_pattern_ops on
# PostgreSQL; their SQLite stand-in), documented in dicomhub.index.schema.archive.
_DIALECT_ONLY_INDEXES = {
    "ix_patient_name_key_prefix",
    "ix_patient_id_prefix",
    "ix_study_referring_key_prefix",
    "ix_study_accession_prefix",
    "ix_study_uid_prefix",
}
_PLUS_TWO = dt.timezone(dt.timedelta(hours=2))


def _differences(url: str) -> list[object]:
    engine = connect_engine(url)
    try:
        migrate(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            found = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    return [
        d
        for d in found
        if not (isinstance(d, tuple) and d[0] == "remove_index" and d[1].name in _DIALECT_ONLY_INDEXES)
    ]


def test_alembic_head_matches_the_schema_package(index_url: str) -> None:
    assert len(metadata.tables) >= 31  # every table module is imported by the package
    assert _differences(index_url) == []


def test_utc_timestamps_round_trip_as_aware_utc(index_url: str) -> None:
    engine = connect_engine(index_url)
    try:
        migrate(engine)
        at = dt.datetime(2026, 3, 1, 12, 30, 15, 250000, tzinfo=_PLUS_TWO)
        with engine.begin() as conn:
            conn.execute(insert(change).values(change_type="created", level="STUDY", uid="1.2.3", at=at))
        with engine.connect() as conn:
            (back,) = conn.execute(select(change.c.at).where(change.c.uid == "1.2.3")).one()
            # The latest change and a range query see the same instant, whatever zone asked.
            (latest,) = conn.execute(select(change.c.at.label("x")).order_by(change.c.seq.desc())).one()
            later = conn.execute(select(change.c.uid).where(change.c.at > at - dt.timedelta(seconds=1))).all()
            raw = conn.execute(text("SELECT at FROM change WHERE uid = '1.2.3'")).scalar_one()
        assert back == at and latest == at
        assert back.tzinfo is dt.UTC and back.hour == 10  # stored and returned as UTC
        assert [r[0] for r in later] == ["1.2.3"]
        if engine.dialect.name == "sqlite":
            # The same text DateTime(timezone=True) always stored: the UTC wall clock.
            assert raw == "2026-03-01 10:30:15.250000"
        else:
            assert raw == at  # timestamptz: the instant itself
    finally:
        engine.dispose()


def test_naive_datetimes_are_refused(index_url: str) -> None:
    engine = connect_engine(index_url)
    try:
        migrate(engine)
        naive = dt.datetime(2026, 3, 1, 12, 0)
        with pytest.raises(StatementError, match="naive datetime"), engine.begin() as conn:
            conn.execute(insert(change).values(change_type="created", level="STUDY", uid="1.2.4", at=naive))
        with engine.connect() as conn:
            assert conn.execute(select(change.c.seq).where(change.c.uid == "1.2.4")).all() == []
    finally:
        engine.dispose()


def test_time_helpers_read_zone_less_text_as_utc() -> None:
    assert as_utc(dt.datetime(2026, 3, 1, 12, 0)) == dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    converted = as_utc(dt.datetime(2026, 3, 1, 12, 0, tzinfo=_PLUS_TWO))
    assert converted.tzinfo is dt.UTC and converted.hour == 10
    assert iso_utc(None) is None
    assert iso_utc(dt.datetime(2026, 3, 1, 12, 0, tzinfo=_PLUS_TWO)) == "2026-03-01T10:00:00+00:00"
    now = utc_now()
    assert now.tzinfo is dt.UTC
