"""The governed side of de-identification: projects, runs and their items, and
the original -> replacement mappings re-identification reads (the tables are in
:mod:`dicomhub.index.schema.deid`).

Every value comes in as a bound parameter; nothing here builds SQL text.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from dicomhub.index import engine as engines
from dicomhub.index.schema import (
    MAPPING_VALUE_LENGTH,
    deid_mapping,
    deid_project,
    deid_run,
    deid_run_item,
)
from dicomhub.index.security import SecurityRepository
from dicomhub.model.timestamps import iso_utc, utc_now

__all__ = ["DeidRepository", "SecurityRepository"]



def _insert_ignoring_duplicates(conn: Connection, table: Table, unique: list[str]) -> Any:
    """INSERT ... ON CONFLICT (unique) DO NOTHING, in the connection's dialect."""
    from sqlalchemy.dialects import postgresql, sqlite

    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=unique)
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=unique)




def _run_dict(row: Any) -> dict[str, Any]:
    item = dict(row)
    item["id"] = item.pop("pk")
    item["options"] = json.loads(item["options"])
    for key in ("created_at", "started_at", "finished_at"):
        item[key] = iso_utc(item[key])
    return item


class DeidRepository:
    """Projects, runs with their items, and the mapping."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ---------------------------------------------------------------- projects

    def project(self, name: str) -> tuple[int, str] | None:
        """(pk, key fingerprint) of a project, or None."""
        with engines.read(self.engine) as conn:
            row = conn.execute(
                select(deid_project.c.pk, deid_project.c.key_fingerprint).where(deid_project.c.name == name)
            ).first()
        return (int(row[0]), str(row[1])) if row else None

    def ensure_project(self, name: str, fingerprint: str) -> tuple[int, str]:
        """The project's (pk, recorded fingerprint); created with ``fingerprint`` when new."""
        found = self.project(name)
        if found is not None:
            return found
        try:
            with engines.write(self.engine) as conn:
                pk = conn.execute(
                    insert(deid_project).values(name=name, key_fingerprint=fingerprint, created_at=utc_now())
                ).inserted_primary_key
        except IntegrityError:  # created meanwhile by another process
            found = self.project(name)
            assert found is not None
            return found
        assert pk is not None
        return int(pk[0]), fingerprint

    def projects(self) -> list[dict[str, Any]]:
        with engines.read(self.engine) as conn:
            rows = conn.execute(
                select(deid_project.c.name, deid_project.c.created_at).order_by(deid_project.c.name)
            ).all()
        return [{"name": r[0], "created_at": iso_utc(r[1])} for r in rows]

    # ---------------------------------------------------------------- runs

    def create_run(self, values: dict[str, Any], source_instance_uids: Sequence[str]) -> int:
        """A new run with one pending item per source instance; its pk."""
        with engines.write(self.engine) as conn:
            row = dict(values)
            row["options"] = json.dumps(row["options"], sort_keys=True)
            row.setdefault("created_at", utc_now())
            if row.get("status") == "running":
                row.setdefault("started_at", row["created_at"])
            row["total"] = len(source_instance_uids)
            pk = conn.execute(insert(deid_run).values(**row)).inserted_primary_key
            assert pk is not None
            run_pk = int(pk[0])
            if source_instance_uids:
                conn.execute(
                    insert(deid_run_item),
                    [
                        {"run_pk": run_pk, "source_sop_instance_uid": uid, "status": "pending"}
                        for uid in source_instance_uids
                    ],
                )
        return run_pk

    def run(self, run_pk: int) -> dict[str, Any] | None:
        with engines.read(self.engine) as conn:
            row = conn.execute(self._run_select().where(deid_run.c.pk == run_pk)).mappings().first()
        return _run_dict(row) if row else None

    def runs(self, limit: int = 100, status: str | None = None) -> list[dict[str, Any]]:
        query = self._run_select().order_by(deid_run.c.pk.desc()).limit(limit)
        if status:
            query = query.where(deid_run.c.status == status)
        with engines.read(self.engine) as conn:
            rows = conn.execute(query).mappings().all()
        return [_run_dict(r) for r in rows]

    @staticmethod
    def _run_select() -> Any:
        cols = [c for c in deid_run.c if c.name not in ("project_pk", "owner")]
        return select(*cols, deid_project.c.name.label("project")).join(
            deid_project, deid_project.c.pk == deid_run.c.project_pk
        )

    def items(self, run_pk: int, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        query = (
            select(
                deid_run_item.c.source_sop_instance_uid,
                deid_run_item.c.target_sop_instance_uid,
                deid_run_item.c.status,
                deid_run_item.c.detail,
            )
            .where(deid_run_item.c.run_pk == run_pk)
            .order_by(deid_run_item.c.pk)
        )
        if status is not None:
            query = query.where(deid_run_item.c.status == status)
        if limit is not None:
            query = query.limit(limit)
        with engines.read(self.engine) as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def claim_run(self, owner: str, stale_owner_prefix: str | None = None) -> int | None:
        """Take the oldest pending run for ``owner`` (status running); None when there is none.

        With ``stale_owner_prefix``, runs left running by an owner of that prefix
        (a previous server process, ended by a crash) are taken over too.
        """
        with engines.write(self.engine) as conn:
            claimable = deid_run.c.status == "pending"
            if stale_owner_prefix is not None:
                claimable = or_(
                    claimable,
                    and_(
                        deid_run.c.status == "running",
                        deid_run.c.owner.startswith(stale_owner_prefix, autoescape=True),
                        deid_run.c.owner != owner,
                    ),
                )
            pk = conn.execute(
                select(deid_run.c.pk)
                .where(claimable, deid_run.c.kind == "archive")
                .order_by(deid_run.c.pk)
                .limit(1)
            ).scalar()
            if pk is None:
                return None
            conn.execute(
                update(deid_run)
                .where(deid_run.c.pk == pk)
                .values(
                    status="running", owner=owner, started_at=func.coalesce(deid_run.c.started_at, utc_now())
                )
            )
        return int(pk)

    def is_owner(self, run_pk: int, owner: str) -> bool:
        with engines.read(self.engine) as conn:
            found = conn.execute(
                select(deid_run.c.pk).where(
                    deid_run.c.pk == run_pk, deid_run.c.owner == owner, deid_run.c.status == "running"
                )
            ).first()
        return found is not None

    def record_items(
        self,
        run_pk: int,
        project_pk: int,
        results: Iterable[tuple[str, str | None, str, str | None]],
        mappings: Iterable[tuple[str, str, str]],
        target_study_uid: str | None,
    ) -> None:
        """One transaction: item outcomes (source UID, target UID, status, detail), the
        new mappings (kind, original, replacement) and the run's counters."""
        results = list(results)
        with engines.write(self.engine) as conn:
            # Workers record their batches of one run side by side. Under READ
            # COMMITTED each count below would miss another batch still being
            # written and the last commit would store the smaller counters: the
            # run's row lock orders the batches so each count sees the ones
            # before it. (SQLite serializes writers already.)
            conn.execute(select(deid_run.c.pk).where(deid_run.c.pk == run_pk).with_for_update())
            for source, target, status, detail in results:
                conn.execute(
                    update(deid_run_item)
                    .where(
                        deid_run_item.c.run_pk == run_pk,
                        deid_run_item.c.source_sop_instance_uid == source,
                    )
                    .values(target_sop_instance_uid=target, status=status, detail=detail)
                )
            self._add_mappings(conn, project_pk, run_pk, mappings)
            counts: dict[str, int] = dict(
                conn.execute(
                    select(deid_run_item.c.status, func.count())
                    .where(deid_run_item.c.run_pk == run_pk)
                    .group_by(deid_run_item.c.status)
                )
                .tuples()
                .all()
            )
            values: dict[str, Any] = {
                "stored": counts.get("stored", 0),
                "already_present": counts.get("already-present", 0),
                "refused": counts.get("refused", 0),
                "failed": counts.get("failed", 0),
            }
            if target_study_uid:
                values["target_study_uid"] = target_study_uid
            conn.execute(update(deid_run).where(deid_run.c.pk == run_pk).values(**values))

    def finish_run(self, run_pk: int, status: str, error: str | None = None) -> None:
        with engines.write(self.engine) as conn:
            conn.execute(
                update(deid_run)
                .where(deid_run.c.pk == run_pk)
                .values(status=status, error=error, finished_at=utc_now(), owner=None)
            )

    def run_project_pk(self, run_pk: int) -> int:
        with engines.read(self.engine) as conn:
            return int(
                conn.execute(select(deid_run.c.project_pk).where(deid_run.c.pk == run_pk)).scalar_one()
            )

    # ---------------------------------------------------------------- mapping

    def add_mappings(
        self, project_pk: int, run_pk: int | None, mappings: Iterable[tuple[str, str, str]]
    ) -> None:
        with engines.write(self.engine) as conn:
            self._add_mappings(conn, project_pk, run_pk, mappings)

    @staticmethod
    def _add_mappings(
        conn: Connection, project_pk: int, run_pk: int | None, mappings: Iterable[tuple[str, str, str]]
    ) -> None:
        """Insert the pairs not yet mapped; a pair already there (from an earlier run, or
        from a concurrent export in another process) keeps its first run."""
        cut = MAPPING_VALUE_LENGTH
        wanted = {(kind, original[:cut]): replacement[:cut] for kind, original, replacement in mappings}
        if not wanted:
            return
        now = utc_now()
        rows = [
            {
                "project_pk": project_pk,
                "kind": kind,
                "original": original,
                "replacement": replacement,
                "first_run_pk": run_pk,
                "created_at": now,
            }
            for (kind, original), replacement in sorted(wanted.items())
        ]
        statement = _insert_ignoring_duplicates(conn, deid_mapping, ["project_pk", "kind", "original"])
        for start in range(0, len(rows), 500):
            conn.execute(statement, rows[start : start + 500])

    def originals(self, project_pk: int, replacements: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        """For each replacement value: the (kind, original) pairs it stands for."""
        out: dict[str, list[tuple[str, str]]] = {value: [] for value in replacements}
        with engines.read(self.engine) as conn:
            rows = conn.execute(
                select(deid_mapping.c.replacement, deid_mapping.c.kind, deid_mapping.c.original)
                .where(
                    deid_mapping.c.project_pk == project_pk,
                    deid_mapping.c.replacement.in_(list(replacements)),
                )
                .order_by(deid_mapping.c.pk)
            ).all()
        for replacement, kind, original in rows:
            out[str(replacement)].append((str(kind), str(original)))
        return out

    def replacements(self, project_pk: int, kind: str, originals: Sequence[str]) -> dict[str, str]:
        """original -> replacement of the ``kind`` values of ``originals`` that are mapped."""
        out: dict[str, str] = {}
        wanted = sorted(set(originals))
        with engines.read(self.engine) as conn:
            for start in range(0, len(wanted), 500):
                rows = conn.execute(
                    select(deid_mapping.c.original, deid_mapping.c.replacement).where(
                        deid_mapping.c.project_pk == project_pk,
                        deid_mapping.c.kind == kind,
                        deid_mapping.c.original.in_(wanted[start : start + 500]),
                    )
                ).all()
                out.update({str(o): str(r) for o, r in rows})
        return out

    def mapping_count(self, project_pk: int) -> int:
        with engines.read(self.engine) as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(deid_mapping)
                    .where(deid_mapping.c.project_pk == project_pk)
                ).scalar_one()
            )
