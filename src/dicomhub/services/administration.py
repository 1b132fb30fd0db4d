"""Changes to users, tokens, grants and labels, each with its audit record.

Shared by the CLI and the HTTP administration API so that both record the
same events: SECURITY_CHANGE for users, tokens and grants, LABEL for labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dicomhub.errors import Conflict, NotFound
from dicomhub.model.access import Action
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditEvent, AuditOutcome
from dicomhub.model.caller import Caller
from dicomhub.services.access import AccessService, Forbidden, require_name
from dicomhub.services.audit import AuditService

__all__ = ["SecurityAdministration"]


class SecurityAdministration:
    def __init__(self, access: AccessService, audit: AuditService) -> None:
        self.access = access
        self.audit = audit

    def _record(
        self,
        caller: Caller,
        detail: dict[str, Any],
        action: AuditAction = AuditAction.SECURITY_CHANGE,
        outcome: AuditOutcome = AuditOutcome.SUCCESS,
        study: str | None = None,
    ) -> None:
        studies = (AuditedStudy(study),) if study else ()
        self.audit.record(AuditEvent(action, outcome, caller, studies, detail))

    # ---------------------------------------------------------------- users and tokens

    def add_user(
        self,
        caller: Caller,
        name: str,
        kind: str = "user",
        grants: Sequence[tuple[str, str]] = (),
        expires_in_days: float | None = None,
    ) -> dict[str, Any]:
        """A new principal with its grants and a first token (shown only in the answer)."""
        for role, scope in grants:  # every grant valid before anything is written
            self.access.parse_grant(role, scope)
        require_name(name, "a user name")
        if not self.access.add_principal(name, kind):
            raise Conflict(f"a principal named {name!r} exists already")
        for role, scope in grants:
            self.access.grant(name, role, scope, caller.who)
        token_id, token = self.access.create_token(name, "first", expires_in_days)
        self._record(
            caller,
            {
                "change": "user-add",
                "user": name,
                "kind": kind,
                "grants": [f"{r}@{s}" for r, s in grants],
                "token_id": token_id,
            },
        )
        return {"name": name, "kind": kind, "token_id": token_id, "token": token}

    def new_token(
        self, caller: Caller, name: str, label: str = "", expires_in_days: float | None = None
    ) -> dict[str, Any]:
        token_id, token = self.access.create_token(name, label, expires_in_days)
        self._record(caller, {"change": "token-create", "user": name, "token_id": token_id})
        return {"name": name, "token_id": token_id, "token": token}

    def revoke(self, caller: Caller, name: str, token_id: int | None = None) -> int:
        count = self.access.revoke_tokens(name, token_id)
        self._record(caller, {"change": "token-revoke", "user": name, "token_id": token_id, "revoked": count})
        return count

    # ---------------------------------------------------------------- grants

    def grant(self, caller: Caller, principal: str, role: str, scope: str) -> bool:
        added = self.access.grant(principal, role, scope, caller.who)
        self._record(
            caller,
            {"change": "grant-add", "principal": principal, "role": role, "scope": scope, "added": added},
        )
        return added

    def revoke_grant(self, caller: Caller, principal: str, role: str, scope: str) -> bool:
        removed = self.access.revoke_grant(principal, role, scope)
        self._record(
            caller,
            {
                "change": "grant-remove",
                "principal": principal,
                "role": role,
                "scope": scope,
                "removed": removed,
            },
        )
        return removed

    # ---------------------------------------------------------------- labels

    def _label_gate(self, caller: Caller, study: str) -> None:
        """LABEL on the study; one the caller may not even see is not found."""
        access = caller.access
        if access.unrestricted:
            return
        facts = self.access.study_facts(study)
        if facts is None:
            return  # the label service reports the missing study
        if access.permits(Action.LABEL, facts):
            return
        self._record(
            caller,
            {"change": "label", "refused": True},
            AuditAction.LABEL,
            AuditOutcome.SERIOUS_FAILURE,
            study,
        )
        if access.permits(Action.QUERY, facts) or access.permits(Action.RETRIEVE, facts):
            raise Forbidden(f"{caller.who} may not label study {study}")
        raise NotFound(f"no study {study}")

    def add_label(self, caller: Caller, study: str, label: str) -> bool:
        self._label_gate(caller, study)
        added = self.access.add_label(study, label)
        self._record(
            caller, {"change": "label-add", "label": label, "added": added}, AuditAction.LABEL, study=study
        )
        return added

    def remove_label(self, caller: Caller, study: str, label: str) -> bool:
        self._label_gate(caller, study)
        removed = self.access.remove_label(study, label)
        self._record(
            caller,
            {"change": "label-remove", "label": label, "removed": removed},
            AuditAction.LABEL,
            study=study,
        )
        return removed
