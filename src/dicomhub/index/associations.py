"""The association log: one row per DIMSE association, for operators.

Written in batches by each DIMSE worker (:mod:`dicomhub.dimse.stats`), read
by ``dicomhub associations`` and the Prometheus endpoint. Statistics, not
records of care: a crash may lose the last second of rows, never an object.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Engine,
    delete,
    func,
    insert,
    select,
)

from dicomhub.index import engine as engines
from dicomhub.index.schema import association_log
from dicomhub.model.associations import AssociationRecord

__all__ = ["AssociationLogRepository"]



class AssociationLogRepository:
    """Rows of the association log, and aggregates over them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add_many(self, records: Sequence[AssociationRecord]) -> None:
        if not records:
            return
        with engines.write(self.engine) as conn:
            conn.execute(
                insert(association_log),
                [
                    {
                        "calling_ae_title": r.calling_ae_title[:16],
                        "called_ae_title": r.called_ae_title[:16],
                        "peer_host": r.peer_host[:64],
                        "outcome": r.outcome,
                        "reason": r.reason,
                        "started_at": r.started_at,
                        "milliseconds": int(round(r.seconds * 1000)),
                        "accepted_contexts": r.accepted_contexts,
                        "rejected_contexts": r.rejected_contexts,
                        "contexts_json": json.dumps(r.contexts) if r.contexts is not None else None,
                        "operations_json": json.dumps(r.operations, sort_keys=True),
                        "bytes_received": r.bytes_received,
                    }
                    for r in records
                ],
            )

    def recent(self, limit: int = 100, calling_ae_title: str | None = None) -> list[dict[str, Any]]:
        """Newest first, JSON-ready."""
        query = select(association_log).order_by(association_log.c.pk.desc()).limit(limit)
        if calling_ae_title:
            query = query.where(association_log.c.calling_ae_title == calling_ae_title)
        with engines.read(self.engine) as conn:
            rows = conn.execute(query).mappings().all()
        out = []
        for r in rows:
            item = dict(r)

            item["contexts"] = json.loads(item.pop("contexts_json") or "null")
            item["operations"] = json.loads(item.pop("operations_json"))
            item["started_at"] = item["started_at"].isoformat()
            out.append(item)
        return out

    def totals(self) -> dict[str, list[dict[str, Any]]]:
        """Aggregates for metrics: associations per (calling AE, outcome) with bytes and
        refused contexts, and DIMSE operations per (calling AE, operation, status class)."""
        with engines.read(self.engine) as conn:
            rows = conn.execute(
                select(
                    association_log.c.calling_ae_title,
                    association_log.c.outcome,
                    func.count(),
                    func.sum(association_log.c.bytes_received),
                    func.sum(association_log.c.rejected_contexts),
                ).group_by(association_log.c.calling_ae_title, association_log.c.outcome)
            ).all()
            ops = conn.execute(
                select(association_log.c.calling_ae_title, association_log.c.operations_json).where(
                    association_log.c.operations_json != "{}"
                )
            ).all()
        operations: dict[tuple[str, str, str], int] = {}
        for ae, text in ops:
            for key, n in json.loads(text).items():
                operation, _, status_class = key.partition(":")
                operations[(ae, operation, status_class)] = (
                    operations.get((ae, operation, status_class), 0) + n
                )
        return {
            "associations": [
                {
                    "calling_ae_title": ae,
                    "outcome": outcome,
                    "associations": int(n),
                    "bytes_received": int(nbytes or 0),
                    "rejected_contexts": int(rejected or 0),
                }
                for ae, outcome, n, nbytes, rejected in rows
            ],
            "operations": [
                {"calling_ae_title": ae, "operation": op, "status": status_class, "count": n}
                for (ae, op, status_class), n in sorted(operations.items())
            ],
        }

    def prune(self, older_than: dt.datetime) -> int:
        with engines.write(self.engine) as conn:
            return int(
                conn.execute(
                    delete(association_log).where(association_log.c.started_at < older_than)
                ).rowcount
            )
