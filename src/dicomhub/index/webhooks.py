"""Where each webhook is in the change log, and the log of its deliveries
(:mod:`dicomhub.index.schema.webhooks`).

The row that ends an entry's delivery (delivered or given up) and the move of the
webhook's cursor past it are one transaction: a crash between sending and recording
sends the entry again (at least once), never skips it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, insert, select

from dicomhub.index import engine as engines
from dicomhub.index.cursors import change_log_position, move_cursor
from dicomhub.index.schema import webhook_delivery

__all__ = ["WebhookRepository"]


def _cursor_name(webhook: str) -> str:
    return f"webhook:{webhook}"  # worker_cursor.name holds 32 characters; names hold 24


class WebhookRepository:
    """Cursors and delivery log of the configured webhooks."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def position(self, webhook: str) -> int:
        """The last change log entry the webhook is done with.

        A webhook seen for the first time starts at the newest entry: it reports what
        happens from now on, not the archive's whole history.
        """
        return change_log_position(self.engine, _cursor_name(webhook))

    def record(
        self,
        webhook: str,
        seq: int,
        event: str,
        uid: str,
        attempt: int,
        outcome: str,
        status_code: int | None,
        error: str,
        at: dt.datetime,
        *,
        done_up_to: int | None,
    ) -> None:
        """Log one attempt; with ``done_up_to`` also move the cursor there."""
        with engines.write(self.engine) as conn:
            conn.execute(
                insert(webhook_delivery).values(
                    webhook=webhook, seq=seq, event=event, uid=uid[:64], attempt=attempt, outcome=outcome,
                    status_code=status_code, error=error[:2000], at=at,
                )
            )  # fmt: skip
            if done_up_to is not None:
                move_cursor(conn, _cursor_name(webhook), done_up_to)

    def skip_to(self, webhook: str, position: int) -> None:
        """Move the cursor past entries that are no event of this webhook."""
        with engines.write(self.engine) as conn:
            move_cursor(conn, _cursor_name(webhook), position)

    def deliveries(self, webhook: str, limit: int = 100) -> list[dict[str, Any]]:
        """The newest attempts first."""
        with engines.read(self.engine) as conn:
            rows = conn.execute(
                select(webhook_delivery)
                .where(webhook_delivery.c.webhook == webhook)
                .order_by(webhook_delivery.c.pk.desc())
                .limit(limit)
            ).mappings()
            return [
                {k: (v.isoformat() if k == "at" else v) for k, v in r.items() if k != "pk"} for r in rows
            ]
