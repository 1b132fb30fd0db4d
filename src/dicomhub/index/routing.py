"""The outbound queue of routing in the index (:mod:`dicomhub.index.schema.routing`).

Rows are added in the transaction that moves the enqueuer's cursor past the change
log entries they come from, so a crash repeats entries (the unique key absorbs
them), never skips one. A node claims due rows with ``SELECT ... FOR UPDATE SKIP
LOCKED`` (PostgreSQL: two nodes never take the same row) and an owner with a
lease; SQLite has one node, whose write transactions are serial anyway. A row is
marked sent only by the owner that claimed it, so a node that lost its lease
while sending cannot overwrite another node's outcome.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Engine, and_, bindparam, func, insert, or_, select, update

from dicomhub.index import engine as engines
from dicomhub.index.cursors import change_log_position, move_cursor
from dicomhub.index.schema import (
    deid_mapping,
    deid_project,
    instance,
    patient,
    rejected_instance,
    route_item,
    series,
    study,
    study_label,
)
from dicomhub.model.attributes import INDEXED
from dicomhub.model.identifiers import Level
from dicomhub.model.records import InstanceRow
from dicomhub.model.routing import backoff

__all__ = ["CURSOR", "RouteRepository"]

CURSOR = "route-enqueue"
_TABLE = {Level.PATIENT: patient, Level.STUDY: study, Level.SERIES: series, Level.IMAGE: instance}
_CHUNK = 500  # UIDs per IN (...) list


def _facts_query() -> Any:
    columns = [_TABLE[a.level].c[a.column].label(a.keyword) for a in INDEXED if a.column in _TABLE[a.level].c]
    return select(
        *columns,
        instance.c.source_ae_title.label("calling_ae"),
        instance.c.sop_class_uid.label("sop_class"),
        instance.c.pk.label("_pk"),
        instance.c.transfer_syntax_uid.label("_ts"),
        instance.c.blob_key.label("_blob_key"),
        instance.c.size.label("_size"),
        instance.c.sha256.label("_sha256"),
        instance.c.content_sha256.label("_content_sha256"),
    ).select_from(instance.join(series).join(study).join(patient))


def _public(row: Any) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if key == "pk":
            continue
        out[key] = value.isoformat() if isinstance(value, dt.datetime) else value
    return out


class RouteRepository:
    """The enqueuer's cursor and the outbound queue."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ---------------------------------------------------------------- enqueue

    def position(self) -> int:
        """The last change log entry enqueued from; the newest entry the first time
        (routes forward what is stored from then on, not the archive's history)."""
        return change_log_position(self.engine, CURSOR)

    def facts(
        self, *, sop_instance_uids: Sequence[str] = (), study_instance_uid: str = ""
    ) -> list[tuple[InstanceRow, dict[str, set[str]]]]:
        """Stored instances (by SOP Instance UIDs, or all of a study) with what rules match on:
        each indexed attribute by keyword, ``calling_ae``, ``sop_class`` and ``label``."""
        queries = []
        if study_instance_uid:
            queries.append(_facts_query().where(study.c.study_instance_uid == study_instance_uid))
        uids = list(sop_instance_uids)
        for i in range(0, len(uids), _CHUNK):
            queries.append(_facts_query().where(instance.c.sop_instance_uid.in_(uids[i : i + _CHUNK])))
        out: list[tuple[InstanceRow, dict[str, set[str]]]] = []
        with engines.read(self.engine) as conn:
            rows = [dict(r) for q in queries for r in conn.execute(q).mappings()]
            studies = sorted({str(r["StudyInstanceUID"]) for r in rows})
            labels: dict[str, set[str]] = {}
            for i in range(0, len(studies), _CHUNK):
                q = select(study_label.c.study_instance_uid, study_label.c.label).where(
                    study_label.c.study_instance_uid.in_(studies[i : i + _CHUNK])
                )
                for uid, label in conn.execute(q):
                    labels.setdefault(str(uid), set()).add(str(label))
        for r in rows:
            row = InstanceRow(
                int(r["_pk"]), str(r["SOPInstanceUID"]), str(r["sop_class"]), str(r["_ts"]),
                str(r["_blob_key"]), int(r["_size"]), str(r["_sha256"]), str(r["_content_sha256"] or ""),
                str(r["StudyInstanceUID"]), str(r["SeriesInstanceUID"]),
            )  # fmt: skip
            facts = {
                k: {str(v)} for k, v in r.items() if not k.startswith("_") and v is not None and str(v) != ""
            }
            facts["label"] = labels.get(row.study_instance_uid, set())
            out.append((row, facts))
        return out

    def enqueue(self, items: Iterable[tuple[str, str, str, str]], up_to: int, now: dt.datetime) -> int:
        """Queue (route, destination, study UID, SOP UID) items not queued before, and move
        the cursor to ``up_to``, in one transaction; how many were new."""
        wanted = {(r, d, sop): st for r, d, st, sop in items}
        added = 0
        with engines.write(self.engine) as conn:
            sops = sorted({sop for _r, _d, sop in wanted})
            for i in range(0, len(sops), _CHUNK):
                there = conn.execute(
                    select(route_item.c.route, route_item.c.destination, route_item.c.sop_instance_uid).where(
                        route_item.c.sop_instance_uid.in_(sops[i : i + _CHUNK])
                    )
                ).all()
                for key in there:
                    wanted.pop((str(key[0]), str(key[1]), str(key[2])), None)
            if wanted:
                conn.execute(
                    insert(route_item),
                    [
                        {
                            "route": r, "destination": d, "study_instance_uid": st, "sop_instance_uid": sop,
                            "state": "queued", "attempts": 0, "not_before": now, "owner": None,
                            "lease_until": None, "last_error": "", "created_at": now, "updated_at": now,
                        }
                        for (r, d, sop), st in wanted.items()
                    ],
                )  # fmt: skip
                added = len(wanted)
            move_cursor(conn, CURSOR, up_to)
        return added

    def queue_again(
        self, route: str, destination: str, items: Sequence[tuple[str, str]], now: dt.datetime
    ) -> int:
        """Queue (study UID, SOP UID) items of ``route`` to ``destination`` now, whatever
        became of earlier ones (sent, dead): a send asked for by hand is sent again.
        Items being sent this moment (an owner) stay with their sender. How many are due."""
        wanted = dict((sop, st) for st, sop in items)
        due = 0
        with engines.write(self.engine) as conn:
            sops = sorted(wanted)
            for i in range(0, len(sops), _CHUNK):
                part = sops[i : i + _CHUNK]
                mine = and_(
                    route_item.c.route == route,
                    route_item.c.destination == destination,
                    route_item.c.sop_instance_uid.in_(part),
                )
                found = conn.execute(select(route_item.c.sop_instance_uid).where(mine)).scalars()
                there = {str(u) for u in found}
                due += int(
                    conn.execute(
                        update(route_item)
                        .where(mine, route_item.c.owner.is_(None))
                        .values(state="queued", attempts=0, not_before=now, lease_until=None,
                                last_error="", updated_at=now)
                    ).rowcount
                )  # fmt: skip
                new = [sop for sop in part if sop not in there]
                if new:
                    conn.execute(
                        insert(route_item),
                        [
                            {
                                "route": route, "destination": destination, "study_instance_uid": wanted[sop],
                                "sop_instance_uid": sop, "state": "queued", "attempts": 0, "not_before": now,
                                "owner": None, "lease_until": None, "last_error": "", "created_at": now,
                                "updated_at": now,
                            }
                            for sop in new
                        ],
                    )  # fmt: skip
                    due += len(new)
        return due

    # ---------------------------------------------------------------- forward

    def claim(self, owner: str, now: dt.datetime, lease: float, limit: int) -> list[dict[str, Any]]:
        """Claim up to ``limit`` due items of one (route, destination), oldest first,
        preferring the study of the oldest; [] when nothing is due."""
        due = and_(
            route_item.c.state == "queued",
            route_item.c.not_before <= now,
            or_(route_item.c.lease_until.is_(None), route_item.c.lease_until < now),
        )
        # A read first: an idle forwarder (every server runs one, rules or not) looks
        # twice a second and must not take SQLite's write lock each time.
        with engines.read(self.engine) as conn:
            if conn.execute(select(route_item.c.pk).where(due).limit(1)).first() is None:
                return []
        with engines.write(self.engine) as conn:
            first = (
                conn.execute(
                    select(route_item.c.route, route_item.c.destination, route_item.c.study_instance_uid)
                    .where(due)
                    .order_by(route_item.c.pk)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
                .mappings()
                .first()
            )
            if first is None:
                return []
            same = and_(
                due, route_item.c.route == first["route"], route_item.c.destination == first["destination"]
            )
            # The oldest item's study first: one association carries a study.
            in_study = route_item.c.study_instance_uid == first["study_instance_uid"]
            rows = (
                conn.execute(
                    select(route_item)
                    .where(same)
                    .order_by(in_study.desc(), route_item.c.pk)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
                .mappings()
                .all()
            )
            pks = [int(r["pk"]) for r in rows]
            if pks:
                until = now + dt.timedelta(seconds=lease)
                conn.execute(
                    update(route_item).where(route_item.c.pk.in_(pks)).values(owner=owner, lease_until=until)
                )
            return [dict(r) for r in rows]

    def mark_sent(self, pks: Sequence[int], owner: str, now: dt.datetime) -> None:
        """Mark items sent (only those ``owner`` still holds)."""
        self.settle(owner, now, sent=pks)

    def mark_failed(
        self, failures: Sequence[tuple[int, int, str]], owner: str, max_attempts: int, now: dt.datetime
    ) -> int:
        """(pk, attempts before, error) per item; returns how many are now dead."""
        return self.settle(owner, now, failures=failures, max_attempts=max_attempts)

    def settle(
        self,
        owner: str,
        now: dt.datetime,
        *,
        sent: Sequence[int] = (),
        skipped: Sequence[tuple[int, str]] = (),
        failures: Sequence[tuple[int, int, str]] = (),
        max_attempts: int = 0,
        renew: Sequence[int] = (),
        lease_until: dt.datetime | None = None,
    ) -> int:
        """The outcome of a batch in one transaction and a few statements: items
        ``sent``, items ``skipped`` (pk, why: nothing to send any more), ``failures``
        (pk, attempts before, error; dead after ``max_attempts``), and the lease of
        the items still to send (``renew``) moved to ``lease_until``. Only items
        ``owner`` still holds change. Returns how many failures are now dead."""
        mine = route_item.c.owner == owner
        dead = 0
        with engines.write(self.engine) as conn:
            if sent:
                conn.execute(
                    update(route_item)
                    .where(route_item.c.pk.in_(list(sent)), mine)
                    .values(state="sent", owner=None, lease_until=None, last_error="", updated_at=now)
                )
            outcomes = [
                {"item": pk, "to_state": "skipped", "to_attempts": None, "error": why[:2000],
                 "next_try": now} for pk, why in skipped
            ]  # fmt: skip
            for pk, attempts, error in failures:
                attempt = attempts + 1
                gone = attempt >= max_attempts
                dead += gone
                outcomes.append(
                    {"item": pk, "to_state": "dead" if gone else "queued", "to_attempts": attempt,
                     "error": error[:2000], "next_try": now + dt.timedelta(seconds=backoff(attempt))}
                )  # fmt: skip
            if outcomes:
                # One statement, executed for many rows (executemany).
                conn.execute(
                    update(route_item)
                    .where(route_item.c.pk == bindparam("item"), mine)
                    .values(
                        state=bindparam("to_state"),
                        attempts=func.coalesce(bindparam("to_attempts", type_=route_item.c.attempts.type),
                                               route_item.c.attempts),
                        last_error=bindparam("error"), not_before=bindparam("next_try"),
                        owner=None, lease_until=None, updated_at=now,
                    ),
                    outcomes,
                )  # fmt: skip
            if renew and lease_until is not None:
                conn.execute(
                    update(route_item)
                    .where(route_item.c.pk.in_(list(renew)), mine)
                    .values(lease_until=lease_until)
                )
        return dead

    def deidentified(self, sop_instance_uids: Sequence[str]) -> set[str]:
        """Which of the instances are made by de-identification: a project's replacement
        UIDs (its mapping, indexed by project and replacement)."""
        uids = list(sop_instance_uids)
        found: set[str] = set()
        projects = select(deid_project.c.pk).scalar_subquery()
        with engines.read(self.engine) as conn:
            for i in range(0, len(uids), _CHUNK):
                q = select(deid_mapping.c.replacement).where(
                    deid_mapping.c.project_pk.in_(projects),
                    deid_mapping.c.replacement.in_(uids[i : i + _CHUNK]),
                    deid_mapping.c.kind == "uid",
                )
                found.update(str(u) for (u,) in conn.execute(q))
        return found

    def rejected(self, sop_instance_uids: Sequence[str]) -> set[str]:
        """Which of the instances a rejection note rejected (IOCM)."""
        uids = list(sop_instance_uids)
        found: set[str] = set()
        with engines.read(self.engine) as conn:
            for i in range(0, len(uids), _CHUNK):
                q = select(rejected_instance.c.sop_instance_uid).where(
                    rejected_instance.c.sop_instance_uid.in_(uids[i : i + _CHUNK])
                )
                found.update(str(u) for (u,) in conn.execute(q))
        return found

    def renew(self, pks: Sequence[int], owner: str, until: dt.datetime) -> None:
        """Extend the lease of items still being sent."""
        if pks:
            with engines.write(self.engine) as conn:
                conn.execute(
                    update(route_item)
                    .where(route_item.c.pk.in_(list(pks)), route_item.c.owner == owner)
                    .values(lease_until=until)
                )

    def owners(self) -> list[str]:
        """The nodes holding claims now."""
        with engines.read(self.engine) as conn:
            q = select(route_item.c.owner).where(route_item.c.owner.is_not(None)).distinct()
            return [str(o) for (o,) in conn.execute(q)]

    def release(self, owner: str) -> int:
        """Free the claims of ``owner`` (a process known to be gone); how many."""
        with engines.write(self.engine) as conn:
            return int(
                conn.execute(
                    update(route_item).where(route_item.c.owner == owner).values(owner=None, lease_until=None)
                ).rowcount
            )

    # ---------------------------------------------------------------- observe and manage

    def depth(self) -> list[dict[str, Any]]:
        """Item counts per (route, destination, state)."""
        q = (
            select(
                route_item.c.route, route_item.c.destination, route_item.c.state, func.count().label("count")
            )
            .group_by(route_item.c.route, route_item.c.destination, route_item.c.state)
            .order_by(route_item.c.route, route_item.c.destination, route_item.c.state)
        )
        with engines.read(self.engine) as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def items(
        self, *, state: str = "", route: str = "", study_instance_uid: str = "", limit: int = 100
    ) -> list[dict[str, Any]]:
        """Queue items, oldest first."""
        q = select(route_item).order_by(route_item.c.pk).limit(limit)
        if state:
            q = q.where(route_item.c.state == state)
        if route:
            q = q.where(route_item.c.route == route)
        if study_instance_uid:
            q = q.where(route_item.c.study_instance_uid == study_instance_uid)
        with engines.read(self.engine) as conn:
            return [_public(r) for r in conn.execute(q).mappings()]

    def retry(self, *, route: str, dead_only: bool, now: dt.datetime) -> int:
        """Make failed items (dead ones; with ``dead_only`` only those) due now, with
        their attempts counted afresh; how many."""
        failed = route_item.c.state == "dead"
        if not dead_only:
            # A queued item being sent now (an owner) stays with its sender.
            waiting = and_(
                route_item.c.state == "queued", route_item.c.attempts > 0, route_item.c.owner.is_(None)
            )
            failed = or_(failed, waiting)
        q = update(route_item).where(failed)
        if route:
            q = q.where(route_item.c.route == route)
        with engines.write(self.engine) as conn:
            return int(
                conn.execute(
                    q.values(
                        state="queued",
                        attempts=0,
                        not_before=now,
                        lease_until=None,
                        owner=None,
                        updated_at=now,
                    )
                ).rowcount
            )
