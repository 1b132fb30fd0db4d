"""Who may do what, and the record of what was done: API tokens, role grants, the audit log.

Tokens are random 256-bit values shown once; the index keeps only their
SHA-256, so a copy of the database lets nobody act as a principal. A grant is
(principal, role, scope); for de-identification the scope is a project name.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

from dicomhub.errors import DicomhubError, InvalidRequest
from dicomhub.index.deid import SecurityRepository

__all__ = [
    "ROLES",
    "ROLE_DEIDENTIFIER",
    "ROLE_REIDENTIFIER",
    "Forbidden",
    "GovernanceService",
    "Unauthenticated",
    "token_digest",
]

ROLE_DEIDENTIFIER = "deidentifier"
ROLE_REIDENTIFIER = "reidentifier"
ROLES = (ROLE_DEIDENTIFIER, ROLE_REIDENTIFIER)

_TOKEN_PREFIX = "dh_"
# Principals are user or service names: printable, no spaces at the ends.
_NAME = re.compile(r"^[A-Za-z0-9._@+-][A-Za-z0-9._@+ -]{0,126}[A-Za-z0-9._@+-]$|^[A-Za-z0-9._@+-]$")


class Unauthenticated(DicomhubError):
    """No credentials, or credentials that name nobody (a wrong or revoked token)."""


class Forbidden(DicomhubError):
    """The principal is known but holds no grant for the operation."""


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def require_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidRequest(f"{what} must be 1-128 characters: letters, digits, space and . _ @ + -")
    return value


class GovernanceService:
    """API tokens, role grants and the append-only audit log."""

    def __init__(self, security: SecurityRepository) -> None:
        self.security = security

    def create_token(self, principal: str, label: str = "") -> tuple[int, str]:
        """A new token for ``principal`` (created when new): its id and the token itself,
        which is never stored nor shown again."""
        require_name(principal, "a principal name")
        token = _TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = self.security.add_token(principal, token_digest(token), label[:128])
        return token_id, token

    def revoke_tokens(self, principal: str, token_id: int | None = None) -> int:
        return self.security.revoke_tokens(principal, token_id)

    def tokens(self, principal: str | None = None) -> list[dict[str, Any]]:
        return self.security.tokens(principal)

    def principal_of(self, authorization: str | None) -> str | None:
        """The principal an ``Authorization: Bearer <token>`` header names, or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token.startswith(_TOKEN_PREFIX) or len(token) > 256:
            return None
        return self.security.principal_of_token(token_digest(token))

    def grant(self, principal: str, role: str, scope: str, granted_by: str) -> bool:
        require_name(principal, "a principal name")
        if role not in ROLES:
            raise InvalidRequest(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        return self.security.grant(principal, role, scope, granted_by)

    def revoke_grant(self, principal: str, role: str, scope: str) -> bool:
        return self.security.revoke_grant(principal, role, scope)

    def grants(self) -> list[dict[str, Any]]:
        return self.security.grants()

    def has_grant(self, principal: str, role: str, scope: str) -> bool:
        return self.security.has_grant(principal, role, scope)

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
    ) -> int:
        return self.security.audit(
            actor,
            action,
            outcome,
            source_address=source_address,
            project=project,
            study_uid=study_uid,
            detail=detail,
        )

    def audit_events(
        self, study_uid: str | None = None, actor: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        return self.security.audit_events(study_uid, actor, limit)
