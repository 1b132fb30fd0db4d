"""Principals, API tokens, role grants, study labels and the audit log: reads and
writes of the security tables (:mod:`dicomhub.index.schema.security`).

Every value comes in as a bound parameter; nothing here builds SQL text.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from dicomhub.index import engine as engines
from dicomhub.index.schema import (
    api_token,
    audit_event,
    audit_study,
    patient,
    principal,
    role_grant,
    study,
    study_label,
)
from dicomhub.model.timestamps import iso_utc, utc_now

__all__ = ["AuditRepository", "SecurityRepository"]






def insert_labels(conn: Connection, study_instance_uid: str, labels: Iterable[str]) -> None:
    """Attach ``labels`` to a study inside the caller's transaction (existing ones kept)."""
    from sqlalchemy.dialects import postgresql, sqlite

    rows = [
        {"study_instance_uid": study_instance_uid, "label": label, "created_at": utc_now()}
        for label in sorted(set(labels))
    ]
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(study_label).on_conflict_do_nothing(index_elements=["study_instance_uid", "label"]),
        rows,
    )


class SecurityRepository:
    """Principals, API tokens (by SHA-256), role grants and study labels."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ---------------------------------------------------------------- principals

    @staticmethod
    def _principal_pk(conn: Connection, name: str, create: bool, kind: str = "user") -> int | None:
        pk = conn.execute(select(principal.c.pk).where(principal.c.name == name)).scalar()
        if pk is None and create:
            inserted = conn.execute(
                insert(principal).values(name=name, kind=kind, created_at=utc_now())
            ).inserted_primary_key
            assert inserted is not None
            pk = inserted[0]
        return int(pk) if pk is not None else None

    def add_principal(self, name: str, kind: str) -> bool:
        """Create a principal; False when it exists already."""
        try:
            with engines.write(self.engine) as conn:
                if self._principal_pk(conn, name, create=False) is not None:
                    return False
                self._principal_pk(conn, name, create=True, kind=kind)
        except IntegrityError:
            return False
        return True

    def principal_exists(self, name: str) -> bool:
        with engines.read(self.engine) as conn:
            return self._principal_pk(conn, name, create=False) is not None

    def principals(self) -> list[dict[str, Any]]:
        now = utc_now()
        active = (
            select(func.count(api_token.c.pk))
            .where(
                api_token.c.principal_pk == principal.c.pk,
                api_token.c.revoked_at.is_(None),
                (api_token.c.expires_at.is_(None)) | (api_token.c.expires_at > now),
            )
            .scalar_subquery()
        )
        with engines.read(self.engine) as conn:
            rows = conn.execute(
                select(principal.c.name, principal.c.kind, principal.c.created_at, active).order_by(
                    principal.c.name
                )
            ).all()
            grants = self.grants(conn=conn)
        by_name: dict[str, list[str]] = {}
        for g in grants:
            by_name.setdefault(g["principal"], []).append(f"{g['role']}@{g['scope']}")
        return [
            {
                "name": r[0],
                "kind": r[1],
                "created_at": iso_utc(r[2]),
                "active_tokens": int(r[3]),
                "grants": by_name.get(r[0], []),
            }
            for r in rows
        ]

    # ---------------------------------------------------------------- tokens

    def add_token(
        self, principal_name: str, token_sha256: str, label: str, expires_at: dt.datetime | None = None
    ) -> int:
        with engines.write(self.engine) as conn:
            principal_pk = self._principal_pk(conn, principal_name, create=True)
            pk = conn.execute(
                insert(api_token).values(
                    principal_pk=principal_pk,
                    token_sha256=token_sha256,
                    label=label,
                    created_at=utc_now(),
                    expires_at=expires_at,
                )
            ).inserted_primary_key
        assert pk is not None
        return int(pk[0])

    def revoke_tokens(self, principal_name: str, token_id: int | None) -> int:
        """Revoke one token of a principal (by id) or all of them; how many were revoked."""
        with engines.write(self.engine) as conn:
            principal_pk = self._principal_pk(conn, principal_name, create=False)
            if principal_pk is None:
                return 0
            query = update(api_token).where(
                api_token.c.principal_pk == principal_pk, api_token.c.revoked_at.is_(None)
            )
            if token_id is not None:
                query = query.where(api_token.c.pk == token_id)
            return int(conn.execute(query.values(revoked_at=utc_now())).rowcount)

    def tokens(self, principal_name: str | None = None) -> list[dict[str, Any]]:
        query = (
            select(
                api_token.c.pk,
                principal.c.name,
                api_token.c.label,
                api_token.c.created_at,
                api_token.c.revoked_at,
                api_token.c.expires_at,
            )
            .join(principal, principal.c.pk == api_token.c.principal_pk)
            .order_by(api_token.c.pk)
        )
        if principal_name is not None:
            query = query.where(principal.c.name == principal_name)
        with engines.read(self.engine) as conn:
            rows = conn.execute(query).all()
        return [
            {
                "id": r[0],
                "principal": r[1],
                "label": r[2],
                "created_at": iso_utc(r[3]),
                "revoked_at": iso_utc(r[4]),
                "expires_at": iso_utc(r[5]),
            }
            for r in rows
        ]

    def token_holder(
        self, token_sha256: str
    ) -> tuple[str, dt.datetime | None, dt.datetime | None, list[tuple[str, str]]] | None:
        """(principal, revoked at, expires at, its grants as (role, scope)) of the token
        with this digest, or None: one read for the whole authentication of a request."""
        with engines.read(self.engine) as conn:
            row = conn.execute(
                select(principal.c.pk, principal.c.name, api_token.c.revoked_at, api_token.c.expires_at)
                .join(api_token, api_token.c.principal_pk == principal.c.pk)
                .where(api_token.c.token_sha256 == token_sha256)
            ).first()
            if row is None:
                return None
            grants = conn.execute(
                select(role_grant.c.role, role_grant.c.scope).where(role_grant.c.principal_pk == row[0])
            ).all()
        return str(row[1]), row[2], row[3], [(str(g[0]), str(g[1])) for g in grants]

    # ---------------------------------------------------------------- grants

    def grant(self, principal_name: str, role: str, scope: str, granted_by: str) -> bool:
        """Add a grant; False when it was already there."""
        try:
            with engines.write(self.engine) as conn:
                principal_pk = self._principal_pk(conn, principal_name, create=True)
                conn.execute(
                    insert(role_grant).values(
                        principal_pk=principal_pk,
                        role=role,
                        scope=scope,
                        granted_by=granted_by,
                        granted_at=utc_now(),
                    )
                )
        except IntegrityError:
            return False
        return True

    def revoke_grant(self, principal_name: str, role: str, scope: str) -> bool:
        with engines.write(self.engine) as conn:
            principal_pk = self._principal_pk(conn, principal_name, create=False)
            if principal_pk is None:
                return False
            return bool(
                conn.execute(
                    delete(role_grant).where(
                        role_grant.c.principal_pk == principal_pk,
                        role_grant.c.role == role,
                        role_grant.c.scope == scope,
                    )
                ).rowcount
            )

    def grants_of(self, principal_name: str) -> list[tuple[str, str]]:
        """(role, scope) of every grant of a principal; none for an unknown one."""
        with engines.read(self.engine) as conn:
            rows = conn.execute(
                select(role_grant.c.role, role_grant.c.scope)
                .join(principal, principal.c.pk == role_grant.c.principal_pk)
                .where(principal.c.name == principal_name)
            ).all()
        return [(str(r[0]), str(r[1])) for r in rows]

    def grants(
        self, principal_name: str | None = None, conn: Connection | None = None
    ) -> list[dict[str, Any]]:
        query = (
            select(
                principal.c.name,
                role_grant.c.role,
                role_grant.c.scope,
                role_grant.c.granted_by,
                role_grant.c.granted_at,
            )
            .join(principal, principal.c.pk == role_grant.c.principal_pk)
            .order_by(principal.c.name, role_grant.c.role, role_grant.c.scope)
        )
        if principal_name is not None:
            query = query.where(principal.c.name == principal_name)
        if conn is None:
            with engines.read(self.engine) as own:
                rows = own.execute(query).all()
        else:
            rows = conn.execute(query).all()
        return [
            {"principal": r[0], "role": r[1], "scope": r[2], "granted_by": r[3], "granted_at": iso_utc(r[4])}
            for r in rows
        ]

    # ---------------------------------------------------------------- labels

    def add_label(self, study_instance_uid: str, label: str) -> bool:
        """Attach a label; False when the study had it already."""
        try:
            with engines.write(self.engine) as conn:
                conn.execute(
                    insert(study_label).values(
                        study_instance_uid=study_instance_uid, label=label, created_at=utc_now()
                    )
                )
        except IntegrityError:
            return False
        return True

    def add_labels(self, study_instance_uid: str, labels: Iterable[str]) -> None:
        """Attach labels, keeping those the study has already."""
        with engines.write(self.engine) as conn:
            insert_labels(conn, study_instance_uid, labels)

    def remove_label(self, study_instance_uid: str, label: str) -> bool:
        with engines.write(self.engine) as conn:
            return bool(
                conn.execute(
                    delete(study_label).where(
                        study_label.c.study_instance_uid == study_instance_uid, study_label.c.label == label
                    )
                ).rowcount
            )

    def labels(self) -> list[tuple[str, int]]:
        """Every label in use and the number of studies carrying it."""
        with engines.read(self.engine) as conn:
            rows = conn.execute(
                select(study_label.c.label, func.count(study_label.c.pk))
                .group_by(study_label.c.label)
                .order_by(study_label.c.label)
            ).all()
        return [(str(r[0]), int(r[1])) for r in rows]

    def study_facts(self, study_instance_uid: str) -> tuple[str, list[str]] | None:
        """(Patient ID, labels) of a stored study, or None when it is not stored."""
        with engines.read(self.engine) as conn:
            patient_id = conn.execute(
                select(patient.c.patient_id)
                .join(study, study.c.patient_pk == patient.c.pk)
                .where(study.c.study_instance_uid == study_instance_uid)
            ).scalar()
            if patient_id is None:
                return None
            labels = conn.execute(
                select(study_label.c.label).where(study_label.c.study_instance_uid == study_instance_uid)
            ).scalars()
            return str(patient_id), sorted(str(label) for label in labels)


class AuditRepository:
    """The append-only audit log."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def append(self, event: dict[str, Any], studies: Sequence[dict[str, Any]]) -> int:
        (pk,) = self.append_many([(event, studies)])
        return pk

    def append_many(self, events: Sequence[tuple[dict[str, Any], Sequence[dict[str, Any]]]]) -> list[int]:
        """Append events in one transaction: one multi-row INSERT each for the events
        and their studies, and one commit for the batch."""
        if not events:
            return []
        at = utc_now()
        with engines.write(self.engine) as conn:
            pks = [
                int(row[0])
                for row in conn.execute(
                    insert(audit_event).returning(audit_event.c.pk, sort_by_parameter_order=True),
                    [{"at": at, **event} for event, _studies in events],
                )
            ]
            rows = [
                {"event_pk": pk, **s}
                for pk, (_event, studies) in zip(pks, events, strict=True)
                for s in studies
            ]
            unknown = sorted({r["study_instance_uid"] for r in rows if not r["patient_id"]})
            if unknown:
                # The recorder knew the study, not its patient: the index does.
                owners: dict[str, str] = {
                    str(uid): str(pid)
                    for uid, pid in conn.execute(
                        select(study.c.study_instance_uid, patient.c.patient_id)
                        .join(patient, patient.c.pk == study.c.patient_pk)
                        .where(study.c.study_instance_uid.in_(unknown))
                    )
                }
                for r in rows:
                    if not r["patient_id"]:
                        r["patient_id"] = owners.get(r["study_instance_uid"]) or ""
            if rows:
                conn.execute(insert(audit_study), rows)
        return pks

    def events(
        self,
        study_instance_uid: str | None,
        principal_name: str | None,
        action: str | None,
        since: dt.datetime | None,
        until: dt.datetime | None,
        limit: int,
    ) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """The newest ``limit`` events matching, newest first, each with its studies."""
        query = select(audit_event).order_by(audit_event.c.pk.desc()).limit(limit)
        if study_instance_uid is not None:
            query = query.where(
                audit_event.c.pk.in_(
                    select(audit_study.c.event_pk).where(
                        audit_study.c.study_instance_uid == study_instance_uid
                    )
                )
            )
        if principal_name is not None:
            query = query.where(audit_event.c.principal == principal_name)
        if action is not None:
            query = query.where(audit_event.c.action == action)
        if since is not None:
            query = query.where(audit_event.c.at >= since)
        if until is not None:
            query = query.where(audit_event.c.at < until)
        with engines.read(self.engine) as conn:
            rows = [dict(r) for r in conn.execute(query).mappings().all()]
            studies: dict[int, list[dict[str, Any]]] = {}
            pks = [r["pk"] for r in rows]
            for start in range(0, len(pks), 500):
                for s in conn.execute(
                    select(audit_study).where(audit_study.c.event_pk.in_(pks[start : start + 500]))
                ).mappings():
                    studies.setdefault(int(s["event_pk"]), []).append(dict(s))
        for row in rows:
            row["at"] = row["at"]
            row["detail"] = json.loads(row.pop("detail_json"))
        return [(row, studies.get(int(row["pk"]), [])) for row in rows]
