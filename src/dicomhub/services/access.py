"""Who is calling and what they may do: principals, API tokens, OIDC bearer
tokens, role grants and study labels.

Tokens are random 256-bit values shown once; the index keeps only their
SHA-256, so a copy of the database lets nobody act as a principal. A grant is
(principal, role, scope) with the scope text of :class:`Scope`; the resolved
grants of a principal are an :class:`Access`, which adapters consult.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dicomhub.errors import ConfigurationError, DicomhubError, InvalidRequest, NotFound
from dicomhub.index.security import SecurityRepository
from dicomhub.model.access import ROLES, Access, Action, ClaimGrant, Grant, LabelRule, Scope, StudyFacts
from dicomhub.model.attributes import BY_KEYWORD
from dicomhub.model.caller import Caller
from dicomhub.model.identifiers import Level
from dicomhub.model.records import InstanceHeader
from dicomhub.services.oidc import OidcVerifier, TokenRejected

__all__ = [
    "AccessService",
    "Authentication",
    "Forbidden",
    "Unauthenticated",
    "parse_claim_grants",
    "refuse_unless",
    "require_name",
    "token_digest",
]

TOKEN_PREFIX = "dh_"
PRINCIPAL_KINDS = ("user", "service")
# Principals are user or service names: printable, no spaces at the ends.
_NAME = re.compile(r"^[A-Za-z0-9._@+-][A-Za-z0-9._@+ -]{0,126}[A-Za-z0-9._@+-]$|^[A-Za-z0-9._@+-]$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class Unauthenticated(DicomhubError):
    """No credentials, or credentials that name nobody (a wrong, expired or revoked token)."""


class Forbidden(DicomhubError):
    """The principal is known but holds no grant for the operation."""


def refuse_unless(access: Access, action: Action, facts: StudyFacts, who: str) -> None:
    """Raise unless ``access`` permits ``action`` on the study: :class:`Forbidden` when
    the caller may see the study, else :class:`NotFound`, so that a refusal never
    reveals that a study the caller may not see exists."""
    if access.permits(action, facts):
        return
    if access.permits(Action.QUERY, facts) or access.permits(Action.RETRIEVE, facts):
        raise Forbidden(f"{who} may not {action.value} study {facts.study_instance_uid}")
    raise NotFound(f"no study {facts.study_instance_uid}")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def require_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidRequest(f"{what} must be 1-128 characters: letters, digits, space and . _ @ + -")
    return value


def require_label(value: str) -> str:
    if not isinstance(value, str) or not _LABEL.match(value):
        raise InvalidRequest(f"label {value[:70]!r}: 1-64 letters, digits and . _ -")
    return value


def require_study_uid(value: str) -> str:
    if not isinstance(value, str) or len(value) > 64 or not _UID.match(value):
        raise InvalidRequest("a Study Instance UID is up to 64 digits and dots")
    return value


@dataclass(frozen=True, slots=True)
class Authentication:
    """The outcome of checking an Authorization header: a principal and its grants
    (when the token lookup gave them already), or why not."""

    principal: str | None
    reason: str = ""  # "missing", "invalid", "expired", "revoked" when principal is None
    detail: str = ""
    access: Access | None = None


class AccessService:
    """Principals, tokens, grants and labels; the Access of a principal."""

    def __init__(
        self,
        security: SecurityRepository,
        *,
        oidc: OidcVerifier | None = None,
        claim_grants: Sequence[ClaimGrant] = (),
        label_rules: Sequence[LabelRule] = (),
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.security = security
        self.oidc = oidc
        self.claim_grants = tuple(claim_grants)
        self.label_rules = tuple(label_rules)
        self._clock = clock

    # ---------------------------------------------------------------- authentication

    def authenticate(self, authorization: str | None) -> Authentication:
        """Check an ``Authorization: Bearer ...`` header: an API token, or a JWT when
        OpenID Connect is configured."""
        if not authorization or not authorization.strip():
            return Authentication(None, "missing", "no bearer token")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Authentication(None, "invalid", "use Authorization: Bearer <token>")
        if token.startswith(TOKEN_PREFIX) and len(token) <= 256:
            holder = self.security.token_holder(token_digest(token))
            if holder is None:
                return Authentication(None, "invalid", "unknown token")
            name, revoked_at, expires_at, grants = holder
            if revoked_at is not None:
                return Authentication(None, "revoked", "the token has been revoked")
            if expires_at is not None and expires_at <= self._clock():
                return Authentication(None, "expired", "the token has expired")
            return Authentication(name, access=_access(grants))
        if self.oidc is not None and token.count(".") == 2 and len(token) <= 16384:
            try:
                identity = self.oidc.verify(token)
            except TokenRejected as exc:
                reason = "expired" if "expired" in str(exc) else "invalid"
                return Authentication(None, reason, str(exc))
            mapped = self._grants_of_claims(identity.claim_values)
            if not mapped:
                return Authentication(identity.principal)
            # Grants add up: those the identity provider's roles give, and those
            # stored for the principal's name.
            stored = self.access_for(identity.principal)
            return Authentication(identity.principal, access=Access.of(stored.grants | mapped))
        return Authentication(None, "invalid", "unknown token")

    def _grants_of_claims(self, values: frozenset[str]) -> frozenset[Grant]:
        if not values:
            return frozenset()
        return frozenset(cg.grant for cg in self.claim_grants if cg.value in values)

    def authenticate_http(self, authorization: str | None) -> str | None:
        """The principal named by ``Authorization: Bearer ...``; None if absent or invalid."""
        return self.authenticate(authorization).principal

    def access_for(self, principal: str) -> Access:
        """The grants of ``principal`` (an unknown principal has none)."""
        return _access(self.security.grants_of(principal))

    def study_facts(self, study_instance_uid: str) -> StudyFacts | None:
        found = self.security.study_facts(study_instance_uid)
        if found is None:
            return None
        patient_id, labels = found
        return StudyFacts(study_instance_uid, patient_id, frozenset(labels))

    def permits_study(self, access: Access, action: Action, study_instance_uid: str) -> bool:
        """Whether ``access`` permits ``action`` on a stored study (False when not stored)."""
        if access.unrestricted:
            return True
        if not access.may(action):
            return False
        facts = self.study_facts(study_instance_uid)
        return facts is not None and access.permits(action, facts)

    # ---------------------------------------------------------------- principals and tokens

    def add_principal(self, name: str, kind: str = "user") -> bool:
        require_name(name, "a principal name")
        if kind not in PRINCIPAL_KINDS:
            raise InvalidRequest(f"a principal is a {' or a '.join(PRINCIPAL_KINDS)}")
        return self.security.add_principal(name, kind)

    def principals(self) -> list[dict[str, Any]]:
        return self.security.principals()

    def principal_exists(self, name: str) -> bool:
        return self.security.principal_exists(name)

    def create_token(
        self, principal: str, label: str = "", expires_in_days: float | None = None
    ) -> tuple[int, str]:
        """A new token for ``principal`` (created when new): its id and the token itself,
        which is never stored nor shown again."""
        require_name(principal, "a principal name")
        expires_at = None
        if expires_in_days is not None:
            if not 0 < expires_in_days <= 3650:
                raise InvalidRequest("a token expires after 0-3650 days")
            expires_at = self._clock() + dt.timedelta(days=expires_in_days)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = self.security.add_token(principal, token_digest(token), label[:128], expires_at)
        return token_id, token

    def revoke_tokens(self, principal: str, token_id: int | None = None) -> int:
        return self.security.revoke_tokens(principal, token_id)

    def tokens(self, principal: str | None = None) -> list[dict[str, Any]]:
        return self.security.tokens(principal)

    # ---------------------------------------------------------------- grants

    @staticmethod
    def parse_grant(role: str, scope: str) -> Grant:
        if role not in ROLES:
            raise InvalidRequest(f"unknown role {str(role)[:32]!r} (one of {', '.join(ROLES)})")
        try:
            return Grant(role, Scope.parse(scope))
        except (ValueError, AttributeError) as exc:
            raise InvalidRequest(str(exc)) from exc

    def grant(self, principal: str, role: str, scope: str, granted_by: str) -> bool:
        """Add a grant; False when the principal held it already."""
        require_name(principal, "a principal name")
        parsed = self.parse_grant(role, scope)
        return self.security.grant(principal, parsed.role, str(parsed.scope), granted_by[:128])

    def revoke_grant(self, principal: str, role: str, scope: str) -> bool:
        parsed = self.parse_grant(role, scope)
        return self.security.revoke_grant(principal, parsed.role, str(parsed.scope))

    def grants(self, principal: str | None = None) -> list[dict[str, Any]]:
        return self.security.grants(principal)

    # ---------------------------------------------------------------- labels

    def add_label(self, study_instance_uid: str, label: str) -> bool:
        """Label a stored study; False when it had the label already."""
        require_study_uid(study_instance_uid)
        require_label(label)
        if self.security.study_facts(study_instance_uid) is None:
            raise NotFound(f"no study {study_instance_uid}")
        return self.security.add_label(study_instance_uid, label)

    def remove_label(self, study_instance_uid: str, label: str) -> bool:
        require_study_uid(study_instance_uid)
        require_label(label)
        return self.security.remove_label(study_instance_uid, label)

    def labels_of(self, study_instance_uid: str) -> list[str]:
        require_study_uid(study_instance_uid)
        facts = self.security.study_facts(study_instance_uid)
        if facts is None:
            raise NotFound(f"no study {study_instance_uid}")
        return facts[1]

    def labels(self) -> list[dict[str, Any]]:
        return [{"label": label, "studies": count} for label, count in self.security.labels()]

    def ingest_labels(self, calling_ae: str | None, attributes: Mapping[str, str | None]) -> frozenset[str]:
        """The labels the ingest rules give an object from ``calling_ae`` with these
        attribute values (keyword -> value as stored)."""
        return frozenset(rule.label for rule in self.label_rules if rule.applies(calling_ae, attributes.get))

    def labels_for_object(self, caller: Caller, header: InstanceHeader) -> frozenset[str]:
        """The labels the ingest rules give an object stored by ``caller`` (ingest writes
        them in the instance row's transaction)."""
        if not self.label_rules:
            return frozenset()
        return self.ingest_labels(caller.ae_title, _HeaderValues(header))

    def check_store(self, caller: Caller, header: InstanceHeader) -> None:
        """Raise :class:`Forbidden` unless ``caller`` may store this object: judged on the
        stored study when there is one, else on the object's Patient ID and the
        labels the ingest rules would give it."""
        access = caller.access
        if access.unrestricted:
            return
        if not access.may(Action.STORE):
            raise Forbidden(f"{caller.who} may not store")
        uid = header.study_instance_uid
        facts = self.study_facts(uid) or StudyFacts(
            uid, header.patient_id, self.labels_for_object(caller, header)
        )
        if not access.permits(Action.STORE, facts):
            raise Forbidden(f"{caller.who} may not store into study {uid}")


def _access(grants: Iterable[tuple[str, str]]) -> Access:
    parsed = []
    for role, scope in grants:
        try:
            parsed.append(Grant(role, Scope.parse(scope)))
        except ValueError:
            continue  # a scope written by a newer version: ignored, never widened
    return Access.of(parsed)


class _HeaderValues(Mapping[str, "str | None"]):
    """An object's indexed values by attribute keyword, for the label rules."""

    def __init__(self, header: InstanceHeader) -> None:
        self._levels = {
            Level.PATIENT: header.patient,
            Level.STUDY: header.study,
            Level.SERIES: header.series,
            Level.IMAGE: header.instance,
        }

    def __getitem__(self, keyword: str) -> str | None:
        attr = BY_KEYWORD.get(keyword)
        if attr is None:
            raise KeyError(keyword)
        value = self._levels[attr.level].get(attr.column)
        return None if value is None else str(value)

    def __iter__(self) -> Iterator[str]:
        return iter(BY_KEYWORD)

    def __len__(self) -> int:
        return len(BY_KEYWORD)


def parse_label_rules(texts: Iterable[str]) -> list[LabelRule]:
    """The ingest label rules of the settings; the attribute of a rule must be one the
    index keeps (the rules are applied to the indexed values, not to the whole data set)."""
    rules = []
    for text in texts:
        try:
            rule = LabelRule.parse(text)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        if rule.keyword != LabelRule.CALLING_AE and rule.keyword not in BY_KEYWORD:
            raise ConfigurationError(
                f"label rule {text!r}: {rule.keyword} is not an indexed attribute "
                f"(one of {', '.join(sorted(BY_KEYWORD))})"
            )
        rules.append(rule)
    return rules


def parse_claim_grants(texts: Iterable[str]) -> list[ClaimGrant]:
    """The grants that values of the OpenID Connect role claim give (setting
    ``oidc_roles``, each ``VALUE=ROLE`` or ``VALUE=ROLE@SCOPE``).

    Raises
    ------
    ConfigurationError
        For an entry of another form, an unknown role or scope, or the
        ``reidentifier`` role: every person able to reverse a pseudonym is named in
        a grant of their own, never given the right by a group of the identity provider.
    """
    grants = []
    for text in texts:
        try:
            grant = ClaimGrant.parse(text)
        except ValueError as exc:
            raise ConfigurationError(f"oidc_roles {exc}") from exc
        if Action.REIDENTIFY in grant.grant.actions:
            raise ConfigurationError(
                f"oidc_roles {text!r}: re-identification is granted to named principals only "
                "(dicomhub grant add NAME reidentifier project:NAME), never by a role claim"
            )
        grants.append(grant)
    return grants
