"""Operator statistics: the association log, the archive's gauges and its quarantine,
for the CLI and metrics."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from dicomhub.index.associations import AssociationLogRepository
from dicomhub.index.repository import IndexRepository
from dicomhub.model.associations import AssociationRecord

__all__ = ["StatisticsService"]

#: Rows older than this are pruned when new ones are written (at most once an hour).
RETENTION = dt.timedelta(days=30)


class StatisticsService:
    def __init__(self, log: AssociationLogRepository, index: IndexRepository) -> None:
        self.log = log
        self.index = index
        self._pruned_at: dt.datetime | None = None

    def record(self, records: Sequence[AssociationRecord]) -> None:
        self.log.add_many(records)
        now = dt.datetime.now(dt.UTC)
        if self._pruned_at is None or now - self._pruned_at > dt.timedelta(hours=1):
            self._pruned_at = now
            self.log.prune(now - RETENTION)

    def recent(self, limit: int = 100, calling_ae_title: str | None = None) -> list[dict[str, Any]]:
        return self.log.recent(limit, calling_ae_title)

    def totals(self) -> dict[str, list[dict[str, Any]]]:
        return self.log.totals()

    def archive_counts(self) -> dict[str, int]:
        """Patients, studies, series and instances held."""
        return self.index.counts()

    def pending_counts(self) -> dict[str, int]:
        """Work waiting for the background process, per queue (header metadata, data set digests)."""
        return self.index.pending_counts()

    def refused_copies(self) -> list[dict[str, Any]]:
        """The refused copies kept in quarantine, with why (``dicomhub conflicts``)."""
        return self.index.conflicts()
