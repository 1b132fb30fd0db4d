"""Storage Commitment transactions: kept in the index so that a restart between the
request and the report loses nothing (PS3.4 J.3.3: the report may come later, on
another association)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Engine,
    func,
    insert,
    select,
    update,
)

from dicomhub.index import engine as engines
from dicomhub.index.schema import storage_commitment
from dicomhub.model.commitment import CommitmentItem, CommitmentRequest, CommitmentResult
from dicomhub.model.timestamps import utc_now

__all__ = ["CommitmentRepository", "StoredTransaction"]

PENDING = "pending"  # the report is still to be delivered
DELIVERED = "delivered"  # the requestor answered the N-EVENT-REPORT with success
GAVE_UP = "gave-up"  # no delivery possible within the retry window



@dataclass(frozen=True, slots=True)
class StoredTransaction:
    request: CommitmentRequest
    state: str
    attempts: int
    created_at: dt.datetime




class CommitmentRepository:
    """Transactions of the Storage Commitment SCP, with their delivery state."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def save_request(self, request: CommitmentRequest) -> None:
        """Record (or renew, for a repeated Transaction UID) a pending transaction."""
        items = json.dumps([[i.sop_class_uid, i.sop_instance_uid] for i in request.items])
        now = utc_now()
        values: dict[str, Any] = {
            "calling_ae_title": request.calling_ae_title[:16],
            "peer_host": request.peer_host[:64],
            "items_json": items,
            "state": PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "last_error": None,
            "result_json": None,
            "created_at": now,
            "delivered_at": None,
        }
        with engines.write(self.engine) as conn:
            renewed = conn.execute(
                update(storage_commitment)
                .where(storage_commitment.c.transaction_uid == request.transaction_uid)
                .values(**values)
            ).rowcount
            if not renewed:
                conn.execute(
                    insert(storage_commitment).values(transaction_uid=request.transaction_uid, **values)
                )

    def get(self, transaction_uid: str) -> StoredTransaction | None:
        with engines.read(self.engine) as conn:
            row = (
                conn.execute(
                    select(storage_commitment).where(storage_commitment.c.transaction_uid == transaction_uid)
                )
                .mappings()
                .first()
            )
        return _transaction(row) if row is not None else None

    def due(self, limit: int = 20) -> list[StoredTransaction]:
        """Pending transactions whose next delivery attempt is due, oldest first."""
        with engines.read(self.engine) as conn:
            rows = (
                conn.execute(
                    select(storage_commitment)
                    .where(
                        storage_commitment.c.state == PENDING,
                        storage_commitment.c.next_attempt_at <= utc_now(),
                    )
                    .order_by(storage_commitment.c.created_at)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        return [_transaction(r) for r in rows]

    def delivered(self, result: CommitmentResult) -> None:
        with engines.write(self.engine) as conn:
            conn.execute(
                update(storage_commitment)
                .where(storage_commitment.c.transaction_uid == result.transaction_uid)
                .values(
                    state=DELIVERED, delivered_at=utc_now(), result_json=_result_json(result), last_error=None
                )
            )

    def attempt_failed(self, transaction_uid: str, error: str, retry_at: dt.datetime | None) -> None:
        """Count a failed delivery; ``retry_at`` None means give up."""
        values: dict[str, Any] = {
            "attempts": storage_commitment.c.attempts + 1,
            "last_error": error[:2000],
        }
        if retry_at is None:
            values["state"] = GAVE_UP
        else:
            values["next_attempt_at"] = retry_at
        with engines.write(self.engine) as conn:
            conn.execute(
                update(storage_commitment)
                .where(storage_commitment.c.transaction_uid == transaction_uid)
                .values(**values)
            )

    def count_by_state(self) -> dict[str, int]:
        with engines.read(self.engine) as conn:
            rows = conn.execute(
                select(storage_commitment.c.state, func.count()).group_by(storage_commitment.c.state)
            ).all()
        return {state: int(n) for state, n in rows}

    def transactions(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first, JSON-ready (for operators)."""
        with engines.read(self.engine) as conn:
            rows = (
                conn.execute(
                    select(storage_commitment).order_by(storage_commitment.c.created_at.desc()).limit(limit)
                )
                .mappings()
                .all()
            )
        out = []
        for r in rows:
            item = {k: v for k, v in dict(r).items() if k not in ("items_json", "result_json")}
            item["items"] = len(json.loads(r["items_json"]))
            item["result"] = json.loads(r["result_json"]) if r["result_json"] else None
            for key in ("next_attempt_at", "created_at", "delivered_at"):
                if item[key] is not None:
                    item[key] = item[key].isoformat()
            out.append(item)
        return out


def _transaction(row: Any) -> StoredTransaction:
    items = tuple(CommitmentItem(c, i) for c, i in json.loads(row["items_json"]))
    request = CommitmentRequest(
        row["transaction_uid"], items, row["calling_ae_title"], row["peer_host"] or ""
    )
    return StoredTransaction(request, row["state"], int(row["attempts"]), row["created_at"])


def _result_json(result: CommitmentResult) -> str:
    return json.dumps(
        {
            "committed": [[i.sop_class_uid, i.sop_instance_uid] for i in result.successes],
            "failed": [[i.sop_class_uid, i.sop_instance_uid, reason] for i, reason in result.failures],
        }
    )
