"""Retention: apply the ``[[retention]]`` rules (:mod:`dicomhub.model.retention`).

Each ``delete`` rule's studies are deleted through the one delete
(:class:`~dicomhub.services.delete.DeleteService`), so they go to the trash (for
``trash_keep``) and the change log says ``deleted``; each ``reject`` rule's studies
are rejected through the one rejection (:class:`~dicomhub.services.rejection.
RejectionService`: a stored note titled "Data Retention Policy Expired", audited and
applied like one received). Every study a run takes is one DELETE audit event naming
the rule. ``dicomhub retention run --dry-run`` lists
what a run would take without deleting. The background process applies the rules
every ``retention_interval`` seconds; the time of the last run is kept in the index
and the job is claimed, so with several nodes one of them runs it, once per interval.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from dicomhub.errors import DicomhubError, IndexUnavailable, NotFound
from dicomhub.index.retention import RetentionCandidate, RetentionRepository
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditEvent, AuditOutcome, AuditRecorder
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.rejection import RejectionReason
from dicomhub.model.retention import RetentionAction, RetentionRule
from dicomhub.model.timestamps import utc_now
from dicomhub.services.background import run_until_stopped
from dicomhub.services.delete import DeleteService
from dicomhub.services.rejection import RejectionService

__all__ = ["RetentionCandidate", "RetentionReport", "RetentionService", "RuleOutcome"]

LOGGER = logging.getLogger("dicomhub.retention")

RETENTION_CALLER = Caller(Channel.INTERNAL, "retention")
_BATCH = 200  # studies asked for at a time


@dataclass
class RuleOutcome:
    """What one rule took (or, in a dry run, would take)."""

    rule: RetentionRule
    studies: list[RetentionCandidate] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # by a reject rule
    failed: list[tuple[str, str]] = field(default_factory=list)  # (Study Instance UID, why)


@dataclass
class RetentionReport:
    """One run of the rules, in their order."""

    dry_run: bool
    at: dt.datetime
    rules: list[RuleOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(r.failed for r in self.rules)


class RetentionService:
    """Applies the retention rules, by command or every ``interval`` seconds."""

    def __init__(
        self,
        repository: RetentionRepository,
        delete: DeleteService,
        rules: Sequence[RetentionRule],
        interval: float,
        audit: AuditRecorder | None = None,
        claim: Callable[[str], AbstractContextManager[bool]] | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        rejection: RejectionService | None = None,
    ) -> None:
        self.repository = repository
        self.rejection = rejection
        self.delete = delete
        self.rules = tuple(rules)
        self.interval = float(interval)
        self._audit = audit
        self._claim = claim
        self._clock = clock

    def run(
        self, *, dry_run: bool = False, caller: Caller = RETENTION_CALLER, limit: int = 100_000
    ) -> RetentionReport:
        """Apply every rule (``dry_run``: only list the studies each would take).

        At most ``limit`` studies per rule; a study deleted by another rule or
        another node meanwhile is skipped.

        Raises
        ------
        IndexUnavailable
            When the index cannot be read or written (the run stops there).
        """
        now = self._clock()
        report = RetentionReport(dry_run, now)
        for rule in self.rules:
            outcome = RuleOutcome(rule)
            report.rules.append(outcome)
            if dry_run:
                outcome.studies = self.repository.candidates(rule, now, limit)
                continue
            while len(outcome.studies) < limit:
                batch = self.repository.candidates(rule, now, min(_BATCH, limit - len(outcome.studies)))
                batch = [
                    c
                    for c in batch
                    if c.study_instance_uid not in {s.study_instance_uid for s in outcome.studies}
                ]
                if not batch:
                    break
                for candidate in batch:
                    outcome.studies.append(candidate)
                    self._apply(rule, candidate, caller, outcome)
        return report

    def _apply(
        self, rule: RetentionRule, candidate: RetentionCandidate, caller: Caller, outcome: RuleOutcome
    ) -> None:
        uid = candidate.study_instance_uid
        if rule.action is RetentionAction.REJECT:
            self._reject(rule, candidate, caller, outcome)
            return
        try:
            result = self.delete.delete_study(uid, caller, reason=f"retention rule {rule.name}")
        except NotFound:
            return  # deleted meanwhile (by hand, another rule, another node)
        except IndexUnavailable:
            raise
        except DicomhubError as exc:
            outcome.failed.append((uid, str(exc)))
            self._record(caller, AuditOutcome.MAJOR_FAILURE, rule, AuditedStudy(uid, candidate.patient_id),
                         {"error": str(exc)[:256]})  # fmt: skip
            return
        outcome.deleted.append(uid)
        studied = AuditedStudy(uid, candidate.patient_id, result.series, len(result.instances))
        self._record(caller, AuditOutcome.SUCCESS, rule, studied, {"trash": result.trashed})
        LOGGER.info(
            "retention rule %s: study %s (%d instances) deleted%s",
            rule.name, uid, len(result.instances), " into the trash" if result.trashed else "",
        )  # fmt: skip

    def _reject(
        self, rule: RetentionRule, candidate: RetentionCandidate, caller: Caller, outcome: RuleOutcome
    ) -> None:
        uid = candidate.study_instance_uid
        try:
            if self.rejection is None:
                raise DicomhubError("no rejection service to apply a reject rule")
            note = self.rejection.reject(caller, RejectionReason.RETENTION, uid)
        except NotFound:
            return  # rejected or deleted meanwhile
        except IndexUnavailable:
            raise
        except DicomhubError as exc:
            outcome.failed.append((uid, str(exc)))
            self._record(caller, AuditOutcome.MAJOR_FAILURE, rule, AuditedStudy(uid, candidate.patient_id),
                         {"action": "reject", "error": str(exc)[:256]})  # fmt: skip
            return
        outcome.rejected.append(uid)
        studied = AuditedStudy(uid, candidate.patient_id, number_of_instances=candidate.instances)
        self._record(caller, AuditOutcome.SUCCESS, rule, studied,
                     {"action": "reject", "rejected": RejectionReason.RETENTION.code_value,
                      "rejection_note": note.sop_instance_uid})  # fmt: skip
        LOGGER.info("retention rule %s: study %s rejected (note %s)", rule.name, uid, note.sop_instance_uid)

    def _record(
        self,
        caller: Caller,
        outcome: AuditOutcome,
        rule: RetentionRule,
        study: AuditedStudy,
        detail: dict[str, object],
    ) -> None:
        if self._audit is not None:
            event = AuditEvent(
                AuditAction.DELETE, outcome, caller, (study,), {"retention": rule.name, **detail}
            )
            self._audit.record(event)

    # ------------------------------------------------------------ the background run

    def step(self) -> int:
        """Apply the rules when ``interval`` seconds have passed since the last run.

        Returns 0 (the background loop then waits): a run is once per interval.
        """
        now = self._clock()
        last = self.repository.last_run()
        if last is not None and (now - last).total_seconds() < self.interval:
            return 0
        report = self.run()
        # Recorded at the start of the run: the next one comes one interval after this one began.
        self.repository.set_last_run(now)
        deleted = sum(len(r.deleted) for r in report.rules)
        rejected = sum(len(r.rejected) for r in report.rules)
        if deleted or rejected:
            LOGGER.info("retention run: %d studies deleted, %d rejected", deleted, rejected)
        return 0  # one run per interval: nothing more to do in this turn

    def run_worker(self, stop: threading.Event) -> None:
        """Apply the rules every ``interval`` seconds until ``stop`` (nothing without rules or interval)."""
        if not self.rules or self.interval <= 0:
            return
        claim = self._claim
        run_until_stopped(
            stop,
            self.step,
            "retention",
            LOGGER,
            idle=min(60.0, max(0.5, self.interval / 4)),
            claim=(lambda: claim("retention")) if claim is not None else None,
        )
