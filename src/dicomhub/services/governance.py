"""The de-identification side's view of access control and the audit log.

De-identification grants are grants of the roles ``deidentifier`` and
``reidentifier`` at scope ``project:NAME`` (or ``archive``); their audit
entries keep their own words (``deid-run-start``/``accepted``,
``reidentify``/``forbidden``...) in the event's detail as ``event`` and
``result``, next to the general action and outcome codes.
"""

from __future__ import annotations

from typing import Any

from dicomhub.model.access import ROLES as ALL_ROLES
from dicomhub.model.access import Access
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditEvent, AuditOutcome, legacy_audit_codes
from dicomhub.model.caller import Caller, Channel
from dicomhub.services.access import AccessService, Forbidden, Unauthenticated, require_name, token_digest
from dicomhub.services.audit import AuditService

__all__ = [
    "ROLES",
    "ROLE_DEIDENTIFIER",
    "ROLE_REIDENTIFIER",
    "Forbidden",
    "GovernanceService",
    "Unauthenticated",
    "require_name",
    "token_digest",
]

ROLE_DEIDENTIFIER = "deidentifier"
ROLE_REIDENTIFIER = "reidentifier"
ROLES = (ROLE_DEIDENTIFIER, ROLE_REIDENTIFIER)


def project_scope(project: str) -> str:
    return project if project == "archive" or project.startswith("project:") else f"project:{project}"


class GovernanceService:
    """Tokens, project grants and audit entries for de-identification."""

    def __init__(self, access: AccessService, audit_log: AuditService) -> None:
        self.access = access
        self.audit_log = audit_log

    def create_token(self, principal: str, label: str = "") -> tuple[int, str]:
        return self.access.create_token(principal, label)

    def revoke_tokens(self, principal: str, token_id: int | None = None) -> int:
        return self.access.revoke_tokens(principal, token_id)

    def tokens(self, principal: str | None = None) -> list[dict[str, Any]]:
        return self.access.tokens(principal)

    def principal_of(self, authorization: str | None) -> str | None:
        """The principal an ``Authorization: Bearer <token>`` header names, or None."""
        return self.access.authenticate_http(authorization)

    def identify(self, authorization: str | None) -> tuple[str | None, Access | None]:
        """The principal an ``Authorization: Bearer <token>`` header names, with its grants
        when the token gives more than those stored for it (an OpenID Connect role claim
        mapped by ``oidc_roles``), else None for them; (None, None) for no principal."""
        found = self.access.authenticate(authorization)
        return found.principal, found.access if found.principal is not None else None

    def grant(self, principal: str, role: str, project: str, granted_by: str) -> bool:
        return self.access.grant(principal, role, project_scope(project), granted_by)

    def revoke_grant(self, principal: str, role: str, project: str) -> bool:
        return self.access.revoke_grant(principal, role, project_scope(project))

    def grants(self) -> list[dict[str, Any]]:
        return self.access.grants()

    def has_grant(self, principal: str, role: str, project: str, access: Access | None = None) -> bool:
        """Whether ``principal``'s grants permit every action of ``role`` on ``project``:
        ``access`` when given (what :meth:`identify` found), else the stored grants."""
        if access is None:
            access = self.access.access_for(principal)
        actions = ALL_ROLES.get(role, frozenset())
        return bool(actions) and all(access.permits_project(a, project) for a in actions)

    def audit(
        self,
        actor: str,
        action: str,
        outcome: str,
        *,
        source_address: str = "",
        project: str | None = None,
        study_uid: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        code, result = legacy_audit_codes(action, outcome)
        facts: dict[str, Any] = {**(detail or {}), "event": action, "result": outcome}
        if project is not None:
            facts["project"] = project
        channel = Channel.HTTP if source_address else Channel.CLI
        self.audit_log.record(
            AuditEvent(
                AuditAction(code),
                AuditOutcome(result),
                Caller(channel, actor, source_address, principal=actor),
                (AuditedStudy(study_uid),) if study_uid else (),
                facts,
            )
        )

    def audit_events(
        self, study_uid: str | None = None, actor: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Events in the de-identification side's words, newest first."""
        out = []
        for record in self.audit_log.events(study_uid, actor, limit=limit):
            detail = dict(record.detail)
            out.append(
                {
                    "id": record.id,
                    "at": record.at.isoformat(),
                    "actor": record.principal,
                    "source_address": record.address,
                    "action": detail.pop("event", record.action.value),
                    "outcome": detail.pop("result", record.outcome.value),
                    "project": detail.pop("project", None),
                    "study_uid": record.studies[0].study_instance_uid if record.studies else None,
                    "detail": detail,
                }
            )
        return out
