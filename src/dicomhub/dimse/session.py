"""Who is on one association, and what it did that the audit log must hear of.

One :class:`AssociationSession` per connection. It authenticates the
association request (with access control on: a registered calling AE title,
from its host, with its TLS certificate when one is registered), holds the
resulting :class:`~dicomhub.model.caller.Caller` for the handlers, and writes
the audit events of the association: one LOGIN per attempt, and one STORE per
study when the association ends ("DICOM Instances Transferred"), so that the
C-STORE hot path costs no extra transaction. A crash of the worker loses the
STORE events of the associations in progress (the instances themselves are
stored and indexed). QUERY events go to the worker's
:class:`~dicomhub.services.audit_writer.AuditWriter`, committed in batches
just after the final C-FIND-RSP instead of before it (the matches have gone
out by then anyway); every other event is written as it happens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dicomhub.config import Settings
from dicomhub.dimse.requests import AssociationInfo, Rejection
from dicomhub.model.access import Access, Action, StudyFacts
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditEvent, AuditOutcome
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.peer import Peer, Role
from dicomhub.services.access import Forbidden
from dicomhub.services.archive import Archive
from dicomhub.services.audit_writer import AuditWriter
from dicomhub.services.peers import AssociationRefused

__all__ = ["AssociationSession", "record_audit"]

LOGGER = logging.getLogger("dicomhub.dimse")


def record_audit(archive: Archive, event: AuditEvent) -> None:
    """Write ``event``; a failure is logged, never turned into a DIMSE failure of an
    operation that already happened."""
    try:
        archive.audit.record(event)
    except Exception:  # noqa: BLE001 - the audit store may be down; the transfer is done
        LOGGER.exception("cannot write the %s audit event of %s", event.action.value, event.caller.who)


@dataclass
class _Stored:
    series: set[str] = field(default_factory=set)
    instances: int = 0
    failures: int = 0


class AssociationSession:
    """The caller of one association and its pending audit events."""

    def __init__(
        self,
        archive: Archive,
        settings: Settings,
        host: str,
        tls_subject: str | None,
        tls: bool = False,
        audit_writer: AuditWriter | None = None,
    ) -> None:
        """``tls``: the connection came on the DICOM TLS port; ``tls_subject``: the Common
        Name of its verified client certificate (None without one); ``audit_writer``:
        where :meth:`audit_later` queues events (without one they are written at once)."""
        self.archive = archive
        self.audit_writer = audit_writer
        self._queued = False
        self.settings = settings
        self.host = host
        self.tls = tls
        self.tls_subject = tls_subject
        self.caller = Caller(Channel.DIMSE, "", host)
        self._facts: dict[str, StudyFacts | None] = {}
        self._stored: dict[str, _Stored] = {}
        self._everything: dict[Action, bool] = {}
        # The calling peer when its roles are enforced (access control or
        # --known-aes-only), else None: every DIMSE service is open.
        self.peer: Peer | None = None

    @property
    def auth(self) -> bool:
        return self.settings.auth_required

    # -- association ---------------------------------------------------------

    def accept(self, info: AssociationInfo) -> str | Rejection | None:
        """Authenticate the A-ASSOCIATE-RQ; a refusal is the A-ASSOCIATE-RJ reason
        (permanent, service user, calling AE title not recognised)."""
        self.caller = Caller(Channel.DIMSE, info.calling_ae_title, info.peer_host)
        detail: dict[str, object] = {
            "called_ae_title": info.called_ae_title,
            "tls": self.tls or None,
            "tls_subject": self.tls_subject,
        }
        if self.settings.known_aes_only and not self.auth:
            self.peer = self.archive.peers.by_ae_title(info.calling_ae_title)
        if self.auth:
            try:
                entity = self.peer = self.archive.peers.authenticate(
                    info.calling_ae_title, info.peer_host, self.tls_subject
                )
            except AssociationRefused as exc:
                LOGGER.warning("association from %s refused: %s", info.peer_host, exc)
                self.audit(
                    AuditAction.LOGIN, AuditOutcome.SERIOUS_FAILURE, detail={**detail, "reason": str(exc)}
                )
                return str(exc)
            principal = entity.principal_name
            self.caller = Caller(
                Channel.DIMSE,
                info.calling_ae_title,
                info.peer_host,
                principal=principal,
                access=self.archive.access.access_for(principal),
            )
        self.audit(AuditAction.LOGIN, AuditOutcome.SUCCESS, detail=detail)
        return None

    def require(self, role: Role) -> None:
        """Raise :class:`Forbidden` when the calling peer's roles do not include ``role``.

        Objects may also come from a migration source (the C-STORE sub-operations
        of a C-MOVE that dicomhub asked it for)."""
        if self.peer is None:
            return
        if self.peer.may(role) or (role is Role.STORE and self.peer.may(Role.MIGRATION_SOURCE)):
            return
        raise Forbidden(f"peer {self.peer.name} does not have the role {role.value}")

    def refused(self, info: AssociationInfo, reason: str) -> None:
        """An association request refused before authentication (policy, load)."""
        self.caller = Caller(Channel.DIMSE, info.calling_ae_title, info.peer_host)
        self.audit(AuditAction.LOGIN, AuditOutcome.SERIOUS_FAILURE, detail={"reason": reason})

    def handshake_failed(self, reason: str) -> None:
        self.audit(AuditAction.LOGIN, AuditOutcome.SERIOUS_FAILURE, detail={"reason": reason, "tls": True})

    def end(self) -> None:
        """The association is over: write its STORE events, one per study, and wait for
        its queued events."""
        if self.audit_writer is not None and self._queued:
            self.audit_writer.flush()
        stored, self._stored = self._stored, {}
        for study_uid, tally in stored.items():
            outcome = (
                AuditOutcome.SUCCESS
                if not tally.failures
                else AuditOutcome.MINOR_FAILURE
                if tally.instances
                else AuditOutcome.SERIOUS_FAILURE
            )
            studies: tuple[AuditedStudy, ...] = ()
            if study_uid:
                # The audit log fills in the Patient ID from the index.
                studies = (AuditedStudy(study_uid, "", tuple(sorted(tally.series)), tally.instances),)
            detail: dict[str, object] = {"failed": tally.failures} if tally.failures else {}
            self.audit(AuditAction.STORE, outcome, studies, detail)

    # -- permissions ---------------------------------------------------------

    def access_for(self, principal: str) -> Access:
        return self.archive.access.access_for(principal) if self.auth else Access.UNRESTRICTED

    def restricted(self, action: Action) -> bool:
        """Whether ``action`` needs a per-study decision (else every study is permitted)."""
        everything = self._everything.get(action)
        if everything is None:
            everything = self._everything[action] = self.caller.access.study_filter(action).everything
        return not everything

    def facts(self, study_uid: str) -> StudyFacts | None:
        """What decides whether a stored study is in a scope (None: not stored)."""
        if study_uid in self._facts:
            return self._facts[study_uid]
        facts = self.archive.access.study_facts(study_uid)
        self._facts[study_uid] = facts
        return facts

    def permits(self, action: Action, study_uid: str, access: Access | None = None) -> bool:
        access = self.caller.access if access is None else access
        if access.study_filter(action).everything:
            return True
        facts = self.facts(study_uid)
        return facts is not None and access.permits(action, facts)

    # -- audit -----------------------------------------------------------------

    def stored(self, study_uid: str, series_uid: str, ok: bool) -> None:
        """Count one C-STORE for the association's STORE event of ``study_uid``
        ("" for refused objects whose study the caller is not told about)."""
        tally = self._stored.get(study_uid)
        if tally is None:
            tally = self._stored[study_uid] = _Stored()
        if ok:
            tally.instances += 1
            if series_uid:
                tally.series.add(series_uid)
        else:
            tally.failures += 1

    def audit_later(
        self,
        action: AuditAction,
        outcome: AuditOutcome,
        studies: tuple[AuditedStudy, ...] = (),
        detail: dict[str, object] | None = None,
    ) -> None:
        """Like :meth:`audit`, but committed by the audit writer shortly after (see the module)."""
        if self.audit_writer is None:
            self.audit(action, outcome, studies, detail)
            return
        self._queued = True
        self.audit_writer.submit(self._event(action, outcome, studies, detail))

    def _event(
        self,
        action: AuditAction,
        outcome: AuditOutcome,
        studies: tuple[AuditedStudy, ...],
        detail: dict[str, object] | None,
    ) -> AuditEvent:
        return AuditEvent(
            action, outcome, self.caller, studies, {k: v for k, v in (detail or {}).items() if v is not None}
        )

    def audit(
        self,
        action: AuditAction,
        outcome: AuditOutcome,
        studies: tuple[AuditedStudy, ...] = (),
        detail: dict[str, object] | None = None,
    ) -> None:
        record_audit(self.archive, self._event(action, outcome, studies, detail))
