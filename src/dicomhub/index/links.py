"""Study-to-order links in the index (rules in :mod:`dicomhub.model.links`; table in
:mod:`dicomhub.index.schema.links`).

Reads join ``study_order_link`` to ``study`` by Study Instance UID, so a link of a
deleted study is simply not seen; a study without a link row (stored before
linking existed, or whose linking failed) counts as unmatched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    func,
    insert,
    literal,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from dicomhub.index import engine as engines
from dicomhub.index.schema import imaging_order, patient, requested_procedure, study, study_order_link
from dicomhub.model.links import LinkedStudy, MatchedBy, OrderKeys, StudyKeys, UnmatchedStudy
from dicomhub.model.timestamps import utc_now

__all__ = ["StudyLinkRepository", "StudyLinkWrite"]


@dataclass(frozen=True, slots=True)
class StudyLinkWrite:
    """A study's first link row, written in its first instance's transaction (see
    :class:`~dicomhub.index.repository.Alongside`) so that linking at ingest costs no
    commit of its own. A row that exists already is kept, or linked when unmatched."""

    keys: StudyKeys
    order_pk: int | None
    matched_by: MatchedBy | None
    by: str

    def write(self, conn: Connection) -> None:
        """One statement: the row is inserted, or an existing unmatched row linked."""
        values: dict[str, Any] = {
            "order_pk": self.order_pk,
            "matched_by": "" if self.matched_by is None else self.matched_by.value,
            "linked_by": self.by[:64],
            "linked_at": utc_now(),
        }
        upsert = _insert_link(conn).values(
            study_instance_uid=self.keys.study_instance_uid,
            requested_procedure_id=self.keys.requested_procedure_id[:16],
            **values,
        )
        if self.order_pk is None:
            conn.execute(
                upsert.on_conflict_do_nothing(index_elements=[study_order_link.c.study_instance_uid])
            )
            return
        conn.execute(
            upsert.on_conflict_do_update(
                index_elements=[study_order_link.c.study_instance_uid],
                set_=values,
                where=study_order_link.c.order_pk.is_(None),
            )
        )


def _insert_link(conn: Connection) -> PgInsert | SqliteInsert:
    """An INSERT of a link row that can take ON CONFLICT (SQLite and PostgreSQL spell it alike)."""
    return pg_insert(study_order_link) if engines.is_postgresql(conn) else sqlite_insert(study_order_link)


def _record(
    conn: Connection,
    keys: StudyKeys,
    order_pk: int | None,
    matched_by: MatchedBy | None,
    by: str,
    *,
    replace: bool,
) -> bool:
    values: dict[str, Any] = {
        "order_pk": order_pk,
        "matched_by": "" if matched_by is None else matched_by.value,
        "linked_by": by[:64],
        "linked_at": utc_now(),
    }
    where = study_order_link.c.study_instance_uid == keys.study_instance_uid
    row = conn.execute(select(study_order_link.c.order_pk).where(where)).first()
    if row is None:
        conn.execute(
            insert(study_order_link).values(
                study_instance_uid=keys.study_instance_uid,
                requested_procedure_id=keys.requested_procedure_id[:16],
                **values,
            )
        )
        return True
    if order_pk is None or (row.order_pk is not None and not replace):
        return bool(row.order_pk == order_pk)
    guard = where if replace else and_(where, study_order_link.c.order_pk.is_(None))
    return bool(conn.execute(update(study_order_link).where(guard).values(**values)).rowcount)


# A study's first look (see StudyLinkRepository.first_look), one statement: 0 with the
# pk of its link row, 1 with the orders its Accession Number names, 2 with those naming
# its Study Instance UID, 3 with those naming its Requested Procedure ID. Built once: it
# runs for every new study at ingest.
_FIRST_LOOK = union_all(
    select(literal(0).label("kind"), study_order_link.c.pk.label("pk")).where(
        study_order_link.c.study_instance_uid == bindparam("b_uid")
    ),
    select(literal(1), imaging_order.c.pk).where(
        bindparam("b_accession") != "", imaging_order.c.accession_number == bindparam("b_accession")
    ),
    select(literal(2), requested_procedure.c.order_pk).where(
        requested_procedure.c.study_instance_uid == bindparam("b_uid")
    ),
    select(literal(3), requested_procedure.c.order_pk).where(
        bindparam("b_procedure") != "", requested_procedure.c.procedure_id == bindparam("b_procedure")
    ),
)


class StudyLinkRepository:
    """Links between stored studies and orders."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------ reads

    def _order_keys(self, conn: Connection, order_pks: Sequence[int]) -> list[OrderKeys]:
        if not order_pks:
            return []
        rows = conn.execute(
            select(
                imaging_order.c.pk,
                imaging_order.c.accession_number,
                requested_procedure.c.procedure_id,
                requested_procedure.c.study_instance_uid,
            )
            .select_from(
                imaging_order.outerjoin(
                    requested_procedure, requested_procedure.c.order_pk == imaging_order.c.pk
                )
            )
            .where(imaging_order.c.pk.in_(sorted(set(order_pks))))
        ).all()
        acc: dict[int, str] = {}
        procedures: dict[int, set[str]] = {}
        uids: dict[int, set[str]] = {}
        for r in rows:
            acc[r.pk] = r.accession_number
            if r.procedure_id:
                procedures.setdefault(r.pk, set()).add(r.procedure_id)
            if r.study_instance_uid:
                uids.setdefault(r.pk, set()).add(r.study_instance_uid)
        return [
            OrderKeys(pk, a, frozenset(procedures.get(pk, ())), frozenset(uids.get(pk, ())))
            for pk, a in sorted(acc.items())
        ]

    def candidate_orders(self, keys: StudyKeys) -> list[OrderKeys]:
        """The orders any of ``keys`` names (one indexed lookup per key)."""
        with engines.read(self.engine) as conn:
            return self._order_keys(conn, self._named(conn, keys))

    @staticmethod
    def _named(conn: Connection, keys: StudyKeys) -> list[int]:
        pks: list[int] = []
        if keys.accession_number:
            by_accession = imaging_order.c.accession_number == keys.accession_number
            pks += conn.execute(select(imaging_order.c.pk).where(by_accession)).scalars().all()
        wanted = [requested_procedure.c.study_instance_uid == keys.study_instance_uid]
        if keys.requested_procedure_id:
            wanted.append(requested_procedure.c.procedure_id == keys.requested_procedure_id)
        pks += conn.execute(select(requested_procedure.c.order_pk).where(or_(*wanted))).scalars().all()
        return pks

    def unlinked_studies_for(self, order: OrderKeys) -> list[StudyKeys]:
        """Stored studies not linked to any order that ``order``'s keys name."""
        wanted = [study.c.accession_number == order.accession_number]
        if order.study_instance_uids:
            wanted.append(study.c.study_instance_uid.in_(sorted(order.study_instance_uids)))
        if order.procedure_ids:
            wanted.append(study_order_link.c.requested_procedure_id.in_(sorted(order.procedure_ids)))
        query = (
            select(
                study.c.study_instance_uid,
                study.c.accession_number,
                study_order_link.c.requested_procedure_id,
            )
            .select_from(
                study.outerjoin(
                    study_order_link, study_order_link.c.study_instance_uid == study.c.study_instance_uid
                )
            )
            .where(study_order_link.c.order_pk.is_(None), or_(*wanted))
            .limit(1000)
        )
        with engines.read(self.engine) as conn:
            return [
                StudyKeys(r.study_instance_uid, r.accession_number or "", r.requested_procedure_id or "")
                for r in conn.execute(query).all()
            ]

    def first_look(self, keys: StudyKeys) -> tuple[bool, list[OrderKeys]]:
        """For a study seen the first time: whether it has a link row already, and else
        the orders any of ``keys`` names (:meth:`candidate_orders`). One statement, and a
        second only when orders are named: a site without orders pays one."""
        params = {
            "b_uid": keys.study_instance_uid,
            "b_accession": keys.accession_number,
            "b_procedure": keys.requested_procedure_id,
        }
        with engines.read_statements(self.engine) as conn:
            found = conn.execute(_FIRST_LOOK, params).all()
            if any(kind == 0 for kind, _pk in found):
                return True, []
            return False, self._order_keys(conn, [pk for _kind, pk in found])

    def study_exists(self, study_instance_uid: str) -> bool:
        with engines.read(self.engine) as conn:
            return (
                conn.execute(
                    select(study.c.pk).where(study.c.study_instance_uid == study_instance_uid)
                ).first()
                is not None
            )

    def linked_studies(self, order_id: str) -> list[LinkedStudy]:
        query = (
            select(
                study_order_link.c.study_instance_uid,
                study_order_link.c.matched_by,
                study_order_link.c.linked_by,
                study_order_link.c.linked_at,
            )  # fmt: skip
            .select_from(
                study_order_link.join(imaging_order, imaging_order.c.pk == study_order_link.c.order_pk).join(
                    study, study.c.study_instance_uid == study_order_link.c.study_instance_uid
                )
            )
            .where(imaging_order.c.order_id == order_id)
            .order_by(study_order_link.c.pk)
        )
        with engines.read(self.engine) as conn:
            return [
                LinkedStudy(r.study_instance_uid, MatchedBy(r.matched_by), r.linked_by, r.linked_at)
                for r in conn.execute(query).all()
            ]

    def orders_of_studies(self, study_instance_uids: Sequence[str]) -> dict[str, str]:
        """Study Instance UID -> the id of the order it is linked to, for those linked."""
        if not study_instance_uids:
            return {}
        query = (
            select(study_order_link.c.study_instance_uid, imaging_order.c.order_id)
            .select_from(
                study_order_link.join(imaging_order, imaging_order.c.pk == study_order_link.c.order_pk)
            )
            .where(study_order_link.c.study_instance_uid.in_(list(study_instance_uids)))
        )
        with engines.read(self.engine) as conn:
            return {r.study_instance_uid: r.order_id for r in conn.execute(query).all()}

    def unmatched(self, offset: int, limit: int) -> tuple[list[UnmatchedStudy], int]:
        """One page of the studies linked to no order, oldest first, and how many there are."""
        joined = study.join(patient, patient.c.pk == study.c.patient_pk).outerjoin(
            study_order_link, study_order_link.c.study_instance_uid == study.c.study_instance_uid
        )
        where = study_order_link.c.order_pk.is_(None)
        with engines.read(self.engine) as conn:
            total = conn.execute(select(func.count()).select_from(joined).where(where)).scalar_one()
            rows = conn.execute(
                select(study, patient.c.patient_id, patient.c.patient_name)
                .select_from(joined)
                .where(where)
                .order_by(study.c.pk)
                .offset(offset)
                .limit(limit)
            ).all()
        return [_unmatched(r) for r in rows], int(total)

    # ------------------------------------------------------------ writes

    def record(
        self,
        keys: StudyKeys,
        order_pk: int | None,
        matched_by: MatchedBy | None,
        by: str,
        *,
        replace: bool = False,
    ) -> bool:
        """Note that ``keys``' study was looked at, linked to ``order_pk`` (None: to no
        order). An existing link is kept unless ``replace`` (a link by hand); an
        existing unmatched row is linked. True when the row now says ``order_pk``."""
        try:
            with engines.write(self.engine) as conn:
                return _record(conn, keys, order_pk, matched_by, by, replace=replace)
        except IntegrityError:
            # Another process recorded the same study first: its row stands.
            return False

    def order_pk(self, order_id: str) -> int | None:
        with engines.read(self.engine) as conn:
            value = conn.execute(
                select(imaging_order.c.pk).where(imaging_order.c.order_id == order_id)
            ).scalar()
        return None if value is None else int(value)

    def study_keys(self, study_instance_uid: str) -> StudyKeys | None:
        query = (
            select(study.c.accession_number, study_order_link.c.requested_procedure_id)
            .select_from(
                study.outerjoin(
                    study_order_link, study_order_link.c.study_instance_uid == study.c.study_instance_uid
                )
            )
            .where(study.c.study_instance_uid == study_instance_uid)
        )
        with engines.read(self.engine) as conn:
            r = conn.execute(query).first()
        if r is None:
            return None
        return StudyKeys(study_instance_uid, r.accession_number or "", r.requested_procedure_id or "")


def _unmatched(r: Any) -> UnmatchedStudy:
    return UnmatchedStudy(
        study_instance_uid=r.study_instance_uid,
        patient_id=r.patient_id,
        patient_name=r.patient_name or "",
        accession_number=r.accession_number or "",
        study_date=r.study_date or "",
        study_description=r.study_description or "",
        modalities_in_study=r.modalities_in_study or "",
        number_of_instances=int(r.number_of_instances or 0),
    )
