"""Stable studies and series: announced in the change log once no instance has been
stored into them for a while (Orthanc's "stable" events, dcm4chee's study receive
timeout).

A store clears ``stable_at`` of its study and series (see ``_STUDY_STORED`` in
:mod:`dicomhub.index.repository`); :meth:`StabilityRepository.announce` sets it on
those whose last store is older than the cutoff and writes one ``stable`` change for
each, in one transaction, so the change feed, webhooks and routing see every
announcement exactly once. Rows a store holds locked right now are skipped on
PostgreSQL (``SKIP LOCKED``): they are about to change, and waiting for them would
order this transaction's locks against the store's.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, Engine, Select, Table, insert, select, update

from dicomhub.index import engine as engines
from dicomhub.index.schema import change, series, study
from dicomhub.model.identifiers import Level

__all__ = ["StabilityRepository"]

STABLE = "stable"


def _due(table: Table, cutoff: dt.datetime, *columns: Any) -> Select[Any]:
    """Rows not announced since their last store, which came before ``cutoff``."""
    return select(table.c.pk, *columns).where(table.c.stable_at.is_(None), table.c.updated_at <= cutoff)


class StabilityRepository:
    """Finds and marks the studies and series that have become stable."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def announce(self, cutoff: dt.datetime, now: dt.datetime, limit: int = 500) -> list[tuple[str, str]]:
        """Mark up to ``limit`` series and ``limit`` studies last stored into before
        ``cutoff`` as stable at ``now``; (level, UID) of each, series first."""
        announced: list[tuple[str, str]] = []
        # Most turns find nothing: look in a read transaction first, so that an idle
        # turn never takes SQLite's write lock from a store.
        with engines.read(self.engine) as conn:
            if not any(conn.execute(_due(table, cutoff).limit(1)).first() for table in (series, study)):
                return announced
        with engines.write(self.engine) as conn:
            for table, level, uid_column in (
                (series, Level.SERIES, series.c.series_instance_uid),
                (study, Level.STUDY, study.c.study_instance_uid),
            ):
                rows = conn.execute(
                    _due(table, cutoff, uid_column)
                    .order_by(table.c.updated_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                ).all()
                if not rows:
                    continue
                self._mark(conn, table, [int(r[0]) for r in rows], now)
                changes: list[dict[str, Any]] = [
                    {"change_type": STABLE, "level": level.value, "uid": str(r[1]), "at": now} for r in rows
                ]
                conn.execute(insert(change), changes)
                announced += [(level.value, str(r[1])) for r in rows]
        return announced

    @staticmethod
    def _mark(conn: Connection, table: Table, pks: list[int], now: dt.datetime) -> None:
        for start in range(0, len(pks), 500):
            conn.execute(update(table).where(table.c.pk.in_(pks[start : start + 500])).values(stable_at=now))
