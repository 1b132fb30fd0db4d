"""What a caller may do: actions, roles, scopes and the grants that join them.

A grant gives a principal a *role* at a *scope*. A role is a fixed set of
actions; a scope says which studies the grant covers: the whole archive, the
studies carrying a label, the studies of one patient (by Patient ID), one
study, or a de-identification project (for the de-identify and re-identify
actions, whose object is a project rather than a study).

An :class:`Access` is the resolved set of grants of one caller. Adapters never
test roles: they ask the access for a :class:`StudyFilter` (queries, which the
index applies inside the SQL so that counts, limits and offsets only ever see
permitted rows) or whether one study is permitted (retrieval, store, delete).
A refused retrieval answers as if the study did not exist.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "ROLES",
    "Access",
    "Action",
    "ClaimGrant",
    "Grant",
    "LabelRule",
    "Scope",
    "ScopeKind",
    "StudyFacts",
    "StudyFilter",
]


class Action(enum.Enum):
    STORE = "store"
    QUERY = "query"
    RETRIEVE = "retrieve"
    DELETE = "delete"
    EXPORT = "export"  # send to a destination other than the caller (C-MOVE, push)
    LABEL = "label"  # attach and remove labels
    DEIDENTIFY = "deidentify"
    REIDENTIFY = "reidentify"
    ADMINISTER = "administer"  # users, AEs, grants, audit log
    SCHEDULE = "schedule"  # create and change orders and patients of record (HL7, FHIR, CLI, REST)


# The built-in roles. Re-identification is deliberately in no role but its own:
# even an admin must be granted it explicitly, so that every person able to
# reverse a pseudonym is named in a grant.
ROLES: dict[str, frozenset[Action]] = {
    "admin": frozenset(set(Action) - {Action.REIDENTIFY}),
    "uploader": frozenset({Action.STORE}),
    "reader": frozenset({Action.QUERY, Action.RETRIEVE}),
    "exporter": frozenset({Action.QUERY, Action.RETRIEVE, Action.EXPORT}),
    "curator": frozenset({Action.QUERY, Action.RETRIEVE, Action.LABEL, Action.DELETE}),
    "deidentifier": frozenset({Action.DEIDENTIFY}),
    "reidentifier": frozenset({Action.REIDENTIFY}),
    # An order system's (or a front desk's) account: it writes orders and reads them back.
    "scheduler": frozenset({Action.SCHEDULE, Action.QUERY}),
}


class ScopeKind(enum.Enum):
    ARCHIVE = "archive"
    LABEL = "label"
    PATIENT = "patient"
    STUDY = "study"
    PROJECT = "project"


# Labels and project names: short printable words, safe in URLs and logs.
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True, slots=True)
class Scope:
    """The studies a grant covers, written ``archive``, ``label:NAME``,
    ``patient:PATIENT-ID``, ``study:UID`` or ``project:NAME``."""

    kind: ScopeKind
    value: str = ""

    @classmethod
    def parse(cls, text: str) -> Scope:
        text = text.strip()
        if text in ("archive", "*"):
            return cls(ScopeKind.ARCHIVE)
        prefix, sep, value = text.partition(":")
        try:
            kind = ScopeKind(prefix)
        except ValueError:
            kind = None
        if not sep or kind is None or kind is ScopeKind.ARCHIVE:
            raise ValueError(
                f"scope {text!r}: use archive, label:NAME, patient:ID, study:UID or project:NAME"
            )
        if kind in (ScopeKind.LABEL, ScopeKind.PROJECT) and not _LABEL.match(value):
            raise ValueError(f"{kind.value} name {value!r}: 1-64 letters, digits and . _ -")
        if kind is ScopeKind.STUDY and (not _UID.match(value) or len(value) > 64):
            raise ValueError(f"study scope {value!r} is not a UID")
        if kind is ScopeKind.PATIENT and (not 0 < len(value) <= 64 or "\\" in value):
            raise ValueError("a patient scope names one Patient ID of 1-64 characters")
        return cls(kind, value)

    def __str__(self) -> str:
        return self.kind.value if self.kind is ScopeKind.ARCHIVE else f"{self.kind.value}:{self.value}"


@dataclass(frozen=True, slots=True)
class Grant:
    role: str
    scope: Scope

    @property
    def actions(self) -> frozenset[Action]:
        return ROLES.get(self.role, frozenset())


@dataclass(frozen=True, slots=True)
class StudyFacts:
    """What decides whether a study is in a scope."""

    study_instance_uid: str
    patient_id: str = ""
    labels: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class StudyFilter:
    """The studies one action may touch: everything, or the union of the
    studies with one of ``labels``, of the patients ``patient_ids`` and the
    studies ``study_uids``. An empty filter that is not ``everything``
    permits nothing; the index turns it into a predicate on the study table."""

    everything: bool = False
    labels: frozenset[str] = frozenset()
    patient_ids: frozenset[str] = frozenset()
    study_uids: frozenset[str] = frozenset()

    @property
    def nothing(self) -> bool:
        return not (self.everything or self.labels or self.patient_ids or self.study_uids)

    def permits(self, study: StudyFacts) -> bool:
        return (
            self.everything
            or study.study_instance_uid in self.study_uids
            or (bool(study.patient_id) and study.patient_id in self.patient_ids)
            or bool(self.labels & study.labels)
        )


@dataclass(frozen=True, slots=True)
class Access:
    """The grants of one caller. ``UNRESTRICTED`` is what every caller holds when
    access control is off (the loopback default) and what internal jobs hold."""

    UNRESTRICTED: ClassVar[Access]

    grants: frozenset[Grant] = field(default_factory=frozenset)
    unrestricted: bool = False

    @classmethod
    def of(cls, grants: Iterable[Grant]) -> Access:
        return cls(frozenset(grants))

    def study_filter(self, action: Action) -> StudyFilter:
        if self.unrestricted:
            return StudyFilter(everything=True)
        labels: set[str] = set()
        patients: set[str] = set()
        studies: set[str] = set()
        for grant in self.grants:
            if action not in grant.actions:
                continue
            kind, value = grant.scope.kind, grant.scope.value
            if kind is ScopeKind.ARCHIVE:
                return StudyFilter(everything=True)
            if kind is ScopeKind.LABEL:
                labels.add(value)
            elif kind is ScopeKind.PATIENT:
                patients.add(value)
            elif kind is ScopeKind.STUDY:
                studies.add(value)
        return StudyFilter(False, frozenset(labels), frozenset(patients), frozenset(studies))

    def permits(self, action: Action, study: StudyFacts) -> bool:
        return self.study_filter(action).permits(study)

    def may(self, action: Action) -> bool:
        """Whether any grant carries ``action`` at all (a first, study-blind gate)."""
        return self.unrestricted or any(action in g.actions for g in self.grants)

    def permits_project(self, action: Action, project: str) -> bool:
        """De-identification rights: a grant at the project or the whole archive."""
        if self.unrestricted and action is not Action.REIDENTIFY:
            return True
        return any(
            action in g.actions
            and (
                g.scope.kind is ScopeKind.ARCHIVE
                or (g.scope.kind is ScopeKind.PROJECT and g.scope.value == project)
            )
            for g in self.grants
        )


Access.UNRESTRICTED = Access(unrestricted=True)


_KEYWORD = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")


@dataclass(frozen=True, slots=True)
class LabelRule:
    """An ingest rule: ``LABEL=calling_ae:AET`` labels what an AE sends,
    ``LABEL=Keyword:value`` what carries that exact attribute value."""

    label: str
    keyword: str  # "calling_ae" or an attribute keyword
    value: str

    CALLING_AE: ClassVar[str] = "calling_ae"

    @classmethod
    def parse(cls, text: str) -> LabelRule:
        label, sep, rest = text.partition("=")
        keyword, sep2, value = rest.partition(":")
        label, keyword = label.strip(), keyword.strip()
        if not (sep and sep2) or not _LABEL.match(label) or not (
            keyword == cls.CALLING_AE or _KEYWORD.match(keyword)
        ):
            raise ValueError(f"label rule {text!r}: use LABEL=calling_ae:AET or LABEL=Keyword:value")
        return cls(label, keyword, value.strip() if keyword == cls.CALLING_AE else value)

    def applies(self, calling_ae: str | None, value_of: Callable[[str], str | None]) -> bool:
        if self.keyword == self.CALLING_AE:
            return calling_ae is not None and calling_ae.strip() == self.value
        return value_of(self.keyword) == self.value


@dataclass(frozen=True, slots=True)
class ClaimGrant:
    """A grant that comes with a value of an identity provider's role claim:
    ``VALUE=ROLE`` (the whole archive) or ``VALUE=ROLE@SCOPE``.

    A caller whose token carries VALUE in the configured claim (a Keycloak realm
    role, an Entra ID app role or group object id...) holds ROLE at SCOPE for that
    request, on top of the grants stored for its name. VALUE is everything before
    the first ``=``, so it may hold ``/`` and ``@`` (Keycloak group paths, e-mail
    like names) but not ``=``.
    """

    value: str
    grant: Grant

    @classmethod
    def parse(cls, text: str) -> ClaimGrant:
        value, sep, rest = text.partition("=")
        role, at, scope = rest.strip().partition("@")
        value, role = value.strip(), role.strip()
        if not sep or not value or not role:
            raise ValueError(f"{text!r}: use VALUE=ROLE or VALUE=ROLE@SCOPE")
        if role not in ROLES:
            raise ValueError(f"{text!r}: unknown role {role!r} (one of {', '.join(ROLES)})")
        return cls(value, Grant(role, Scope.parse(scope) if at else Scope(ScopeKind.ARCHIVE)))

    def __str__(self) -> str:
        return f"{self.value}={self.grant.role}@{self.grant.scope}"
