"""Security-relevant events, as the audit log records them.

One :class:`AuditEvent` per operation: an association or login, a query, a
retrieval, a store, a delete, an export, a de-identification or
re-identification, a change of users, AEs or grants. The studies it touched
are listed so the log answers "who saw or changed this study". The services
record events through an :class:`AuditRecorder`; how they are stored and
exported (JSON lines, DICOM audit messages of PS3.15 Annex A.5) is not the
recorder's caller's business.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from dicomhub.model.caller import Caller

__all__ = [
    "AuditAction",
    "AuditEvent",
    "AuditOutcome",
    "AuditRecord",
    "AuditRecorder",
    "AuditedStudy",
    "legacy_audit_codes",
]


class AuditAction(enum.Enum):
    LOGIN = "login"  # an association accepted or refused, an HTTP authentication failure
    QUERY = "query"
    RETRIEVE = "retrieve"
    STORE = "store"
    DELETE = "delete"
    EXPORT = "export"
    LABEL = "label"
    DEIDENTIFY = "deidentify"
    REIDENTIFY = "reidentify"
    SECURITY_CHANGE = "security-change"  # users, tokens, AEs, grants
    ORDER_RECORD = "order-record"  # an order created, changed, cancelled or discontinued
    PATIENT_RECORD = "patient-record"  # demographics of record created, changed or merged
    CORRECTION = "correction"  # stored studies modified, split or merged by an operator


class AuditOutcome(enum.Enum):
    """RFC 3881 / PS3.15 A.5 EventOutcomeIndicator values."""

    SUCCESS = "0"
    MINOR_FAILURE = "4"  # e.g. some of the instances failed
    SERIOUS_FAILURE = "8"  # refused, not permitted
    MAJOR_FAILURE = "12"  # the operation could not be carried out at all


@dataclass(frozen=True, slots=True)
class AuditedStudy:
    study_instance_uid: str
    patient_id: str = ""
    series_instance_uids: tuple[str, ...] = ()
    number_of_instances: int = 0


@dataclass(frozen=True, slots=True)
class AuditEvent:
    action: AuditAction
    outcome: AuditOutcome
    caller: Caller
    studies: tuple[AuditedStudy, ...] = ()
    # Free, small, JSON-serialisable facts: the query keys, the C-MOVE
    # destination, the HTTP route, the grant changed, the failure reason.
    detail: Mapping[str, Any] = field(default_factory=dict)


class AuditRecorder(Protocol):
    def record(self, event: AuditEvent) -> None:
        """Append ``event`` to the audit log; raises when it cannot be written."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One stored audit event, as the log gives it back for queries and export."""

    id: int
    at: datetime  # UTC
    action: AuditAction
    outcome: AuditOutcome
    principal: str  # Caller.who at the time
    channel: str  # Channel value: dimse, http, cli, internal
    ae_title: str  # the calling AE title for DIMSE, else ""
    address: str
    studies: tuple[AuditedStudy, ...] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)


def legacy_audit_codes(action: str, outcome: str) -> tuple[str, str]:
    """The AuditAction and AuditOutcome values of a de-identification audit entry
    written with its own words (``deid-run-start``/``accepted``, ``reidentify``/
    ``forbidden``...), which stay in the event's detail as ``event`` and ``result``."""
    if action == "reidentify":
        code = "reidentify"
    elif action.startswith("deid"):
        code = "deidentify"
    else:
        code = "security-change"
    if outcome in ("unauthenticated", "forbidden"):
        result = "8"
    elif outcome in ("not-found", "invalid", "failed"):
        result = "4"
    else:
        result = "0"
    return code, result
