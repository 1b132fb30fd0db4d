"""The audit log: one :class:`AuditEvent` per operation, stored before the call returns."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from dicomhub.index.security import AuditRepository
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditEvent, AuditOutcome, AuditRecord

__all__ = ["AuditService"]

_MAX_DETAIL = 8192

LOGGER = logging.getLogger("dicomhub.audit")


class AuditService:
    """Implements :class:`dicomhub.model.audit.AuditRecorder` on the index."""

    def __init__(
        self, repo: AuditRepository, forward: Callable[[Sequence[AuditRecord]], None] | None = None
    ) -> None:
        """``forward`` receives the records once they are committed (the syslog audit
        feed, :mod:`dicomhub.telemetry.syslog`); it must not block, and its failures
        are logged, never raised: the event is already in the audit log."""
        self.repo = repo
        self.forward = forward

    def record(self, event: AuditEvent) -> None:
        """Append ``event`` (committed when this returns); raises when it cannot be written."""
        self.record_many([event])

    def record_many(self, events: Sequence[AuditEvent]) -> None:
        """Append ``events`` in one transaction (committed when this returns)."""
        rows = [_row(event) for event in events]
        at = dt.datetime.now(dt.UTC)
        pks = self.repo.append_many(rows)
        if self.forward is None or not pks:
            return
        try:
            self.forward(
                [
                    _record({**values, "pk": pk, "at": at, "detail": event.detail}, studies)
                    for pk, event, (values, studies) in zip(pks, events, rows, strict=True)
                ]
            )
        except Exception:  # noqa: BLE001 - the event is stored; the feed must not fail the caller
            LOGGER.exception("could not forward %d audit events", len(pks))

    def events(
        self,
        study_instance_uid: str | None = None,
        principal: str | None = None,
        action: AuditAction | str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 1000,
    ) -> list[AuditRecord]:
        """The newest ``limit`` matching events, newest first."""
        code = action.value if isinstance(action, AuditAction) else action
        return [
            _record(row, studies)
            for row, studies in self.repo.events(
                study_instance_uid, principal, code, since, until, max(1, min(limit, 100000))
            )
        ]


def _row(event: AuditEvent) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The audit_event values and the audit_study rows of an event."""
    caller = event.caller
    detail = json.dumps(dict(event.detail), sort_keys=True, default=str)
    if len(detail) > _MAX_DETAIL:
        detail = json.dumps({"truncated": detail[:_MAX_DETAIL]})
    values = {
        "action": event.action.value,
        "outcome": event.outcome.value,
        "principal": caller.who[:128],
        "channel": caller.channel.value,
        "ae_title": (caller.ae_title or "")[:16],
        "address": caller.address[:64],
        "detail_json": detail,
    }
    studies = [
        {
            "study_instance_uid": s.study_instance_uid[:64],
            "patient_id": s.patient_id[:64],
            "series_instance_uids": "\\".join(s.series_instance_uids),
            "number_of_instances": s.number_of_instances,
        }
        for s in event.studies
    ]
    return values, studies


def _record(row: dict[str, Any], studies: list[dict[str, Any]]) -> AuditRecord:
    return AuditRecord(
        id=int(row["pk"]),
        at=row["at"],
        action=AuditAction(row["action"]),
        outcome=AuditOutcome(row["outcome"]),
        principal=row["principal"],
        channel=row["channel"],
        ae_title=row["ae_title"],
        address=row["address"],
        studies=tuple(
            AuditedStudy(
                s["study_instance_uid"],
                s["patient_id"],
                tuple(v for v in str(s["series_instance_uids"]).split("\\") if v),
                int(s["number_of_instances"]),
            )
            for s in studies
        ),
        detail=row["detail"],
    )


def record_dict(record: AuditRecord) -> dict[str, Any]:
    """The JSON form of a record (HTTP /audit, ``dicomhub audit --json``)."""
    return {
        "id": record.id,
        "at": record.at.isoformat(),
        "action": record.action.value,
        "outcome": record.outcome.value,
        "principal": record.principal,
        "channel": record.channel,
        "ae_title": record.ae_title,
        "address": record.address,
        "studies": [
            {
                "study_instance_uid": s.study_instance_uid,
                "patient_id": s.patient_id,
                "series_instance_uids": list(s.series_instance_uids),
                "number_of_instances": s.number_of_instances,
            }
            for s in record.studies
        ],
        "detail": dict(record.detail),
    }
