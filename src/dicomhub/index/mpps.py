"""The repository of Modality Performed Procedure Steps and of the HL7 v2 outbox
(tables in :mod:`dicomhub.index.schema.mpps`; rules in :mod:`dicomhub.model.mpps`).

A step, its links and the status messages that report a change are written in
one transaction: a change is never acknowledged without its message queued,
and a message never goes out for a change that was rolled back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from dicomhub.index import engine as engines
from dicomhub.index.schema import hl7_outbox, performed_procedure_step, performed_step_link
from dicomhub.model.mpps import (
    DuplicatePerformedStep,
    Hl7Outgoing,
    PerformedProcedureStep,
    PerformedStepStatus,
    ScheduledStepRef,
)
from dicomhub.model.timestamps import utc_now

__all__ = ["PENDING", "MppsRepository", "OutboxEntry"]

PENDING = "pending"
DELIVERED = "delivered"
GAVE_UP = "gave-up"

#: A performed step's links: each scheduled step reference with the id of the order it matched ("": none).
Links = Sequence[tuple[ScheduledStepRef, str]]


def _cut(value: str, length: int = 64) -> str:
    return value[:length]


class OutboxEntry:
    """A queued HL7 message as the delivery loop sees it."""

    __slots__ = ("attempts", "created_at", "message", "next_attempt_at", "pk")

    def __init__(
        self,
        pk: int,
        message: Hl7Outgoing,
        attempts: int,
        created_at: dt.datetime,
        next_attempt_at: dt.datetime,
    ) -> None:
        self.pk = pk
        self.message = message
        self.attempts = attempts
        self.created_at = created_at
        self.next_attempt_at = next_attempt_at


class MppsRepository:
    """Performed procedure steps, their links, and the HL7 outbox, in the index."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------ steps

    def _links(self, conn: Connection, step_pk: int) -> list[Any]:
        return list(
            conn.execute(
                select(performed_step_link)
                .where(performed_step_link.c.step_pk == step_pk)
                .order_by(performed_step_link.c.pk)
            ).all()
        )

    def _load(self, conn: Connection, row: Any) -> PerformedProcedureStep:
        links = self._links(conn, row.pk)
        return PerformedProcedureStep(
            sop_instance_uid=row.sop_instance_uid,
            status=PerformedStepStatus(row.status),
            refs=tuple(
                ScheduledStepRef(
                    link.accession_number,
                    link.requested_procedure_id,
                    link.scheduled_procedure_step_id,
                    link.study_instance_uid,
                )
                for link in links
            ),
            attributes=row.attributes,
            calling_ae_title=row.calling_ae_title,
            modality=row.modality,
            patient_id=row.patient_id,
            linked_orders=tuple(dict.fromkeys(link.order_id for link in links if link.order_id)),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def _queue(self, conn: Connection, messages: Sequence[Hl7Outgoing], now: dt.datetime) -> None:
        if messages:
            conn.execute(
                insert(hl7_outbox),
                [
                    {
                        "destination": m.destination,
                        "control_id": m.control_id,
                        "message": m.message,
                        "subject": _cut(m.subject),
                        "state": PENDING,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "last_error": "",
                        "created_at": now,
                    }
                    for m in messages
                ],
            )

    def create(
        self, step: PerformedProcedureStep, links: Links, messages: Sequence[Hl7Outgoing] = ()
    ) -> PerformedProcedureStep:
        """Insert ``step`` with its links and queue ``messages``, in one transaction.

        Raises
        ------
        DuplicatePerformedStep
            When a step with this SOP Instance UID exists.
        """
        now = utc_now()
        try:
            with engines.write(self.engine) as conn:
                if conn.execute(
                    select(performed_procedure_step.c.pk).where(
                        performed_procedure_step.c.sop_instance_uid == step.sop_instance_uid
                    )
                ).first():
                    raise DuplicatePerformedStep(f"performed procedure step {step.sop_instance_uid} exists")
                result = conn.execute(
                    insert(performed_procedure_step).values(
                        sop_instance_uid=step.sop_instance_uid,
                        status=step.status.value,
                        modality=_cut(step.modality, 16),
                        patient_id=_cut(step.patient_id),
                        calling_ae_title=_cut(step.calling_ae_title, 16),
                        attributes=step.attributes,
                        created_at=now,
                        updated_at=now,
                    )
                )
                key = result.inserted_primary_key
                assert key is not None
                if links:
                    conn.execute(
                        insert(performed_step_link),
                        [
                            {
                                "step_pk": int(key[0]),
                                "accession_number": _cut(ref.accession_number),
                                "requested_procedure_id": _cut(ref.requested_procedure_id),
                                "scheduled_procedure_step_id": _cut(ref.scheduled_procedure_step_id),
                                "study_instance_uid": _cut(ref.study_instance_uid),
                                "order_id": order_id,
                            }
                            for ref, order_id in links
                        ],
                    )
                self._queue(conn, messages, now)
                row = conn.execute(
                    select(performed_procedure_step).where(performed_procedure_step.c.pk == key[0])
                ).one()
                return self._load(conn, row)
        except IntegrityError:
            # Two N-CREATEs of one instance at once: the unique constraint decided.
            raise DuplicatePerformedStep(f"performed procedure step {step.sop_instance_uid} exists") from None

    def change(
        self,
        sop_instance_uid: str,
        change: Callable[
            [PerformedProcedureStep | None], tuple[PerformedProcedureStep, Sequence[Hl7Outgoing]]
        ],
    ) -> PerformedProcedureStep:
        """Read the step (locked), write ``change(it)``'s step and queue its messages,
        in one transaction; ``change`` raises to refuse (nothing is written)."""
        now = utc_now()
        with engines.write(self.engine) as conn:
            query = select(performed_procedure_step).where(
                performed_procedure_step.c.sop_instance_uid == sop_instance_uid
            )
            if engines.is_postgresql(conn):
                query = query.with_for_update()  # SQLite: BEGIN IMMEDIATE already serialises
            row = conn.execute(query).first()
            after, messages = change(None if row is None else self._load(conn, row))
            assert row is not None
            conn.execute(
                update(performed_procedure_step)
                .where(performed_procedure_step.c.pk == row.pk)
                .values(status=after.status.value, attributes=after.attributes, updated_at=now)
            )
            self._queue(conn, messages, now)
            stored = conn.execute(
                select(performed_procedure_step).where(performed_procedure_step.c.pk == row.pk)
            ).one()
            return self._load(conn, stored)

    def get(self, sop_instance_uid: str) -> PerformedProcedureStep | None:
        with engines.read(self.engine) as conn:
            row = conn.execute(
                select(performed_procedure_step).where(
                    performed_procedure_step.c.sop_instance_uid == sop_instance_uid
                )
            ).first()
            return None if row is None else self._load(conn, row)

    def steps(
        self, *, status: Sequence[PerformedStepStatus] = (), limit: int = 1000
    ) -> list[PerformedProcedureStep]:
        """Steps, oldest first."""
        query = select(performed_procedure_step).order_by(performed_procedure_step.c.pk).limit(limit)
        if status:
            query = query.where(performed_procedure_step.c.status.in_([s.value for s in status]))
        with engines.read(self.engine) as conn:
            return [self._load(conn, r) for r in conn.execute(query).all()]

    # ------------------------------------------------------------ outbox

    def pending(self, limit: int = 100) -> list[OutboxEntry]:
        """Messages still to deliver, oldest first (due or not: the delivery keeps each
        destination's order, so a message waits while an older one to it is pending)."""
        with engines.read(self.engine) as conn:
            rows = conn.execute(
                select(hl7_outbox).where(hl7_outbox.c.state == PENDING).order_by(hl7_outbox.c.pk).limit(limit)
            ).all()
        return [
            OutboxEntry(
                int(r.pk),
                Hl7Outgoing(r.destination, r.control_id, r.message, r.subject),
                int(r.attempts),
                r.created_at,
                r.next_attempt_at,
            )
            for r in rows
        ]

    def delivered(self, pk: int) -> None:
        with engines.write(self.engine) as conn:
            conn.execute(
                update(hl7_outbox)
                .where(hl7_outbox.c.pk == pk)
                .values(state=DELIVERED, delivered_at=utc_now(), attempts=hl7_outbox.c.attempts + 1)
            )

    def attempt_failed(self, pk: int, error: str, retry_at: dt.datetime | None) -> None:
        """Count a failed attempt; ``retry_at`` None: give up."""
        values: dict[str, Any] = {"attempts": hl7_outbox.c.attempts + 1, "last_error": error[:1000]}
        if retry_at is None:
            values["state"] = GAVE_UP
        else:
            values["next_attempt_at"] = retry_at
        with engines.write(self.engine) as conn:
            conn.execute(update(hl7_outbox).where(hl7_outbox.c.pk == pk).values(**values))

    def outbox(self, limit: int = 100) -> list[dict[str, object]]:
        """The newest queued messages with their delivery state (for listing)."""
        with engines.read(self.engine) as conn:
            rows = (
                conn.execute(select(hl7_outbox).order_by(hl7_outbox.c.pk.desc()).limit(limit))
                .mappings()
                .all()
            )
        out = []
        for r in rows:
            item = {
                k: r[k] for k in ("control_id", "destination", "subject", "state", "attempts", "last_error")
            }
            for key in ("created_at", "next_attempt_at", "delivered_at"):
                item[key] = None if r[key] is None else r[key].isoformat()
            out.append(item)
        return out

    def count_outbox(self) -> dict[str, int]:
        with engines.read(self.engine) as conn:
            rows = conn.execute(select(hl7_outbox.c.state, func.count()).group_by(hl7_outbox.c.state)).all()
        return {str(state): int(n) for state, n in rows}
