"""SQL of the trash: copy deleted instances into it, list it, take entries back, purge.

A delete copies its instance rows into ``trash`` (with the identifying attributes of
their series, study and patient, who deleted them, when and why) inside its own
transaction, through :meth:`TrashRepository.keeper` handed to
:meth:`~dicomhub.index.repository.IndexRepository.delete_entity`: the instance is
either live or in the trash, never both and never neither. A restore indexes the blob
again with :meth:`TrashRepository.taken_back` written alongside the new instance row,
which removes the trash row in that same transaction. A purge removes rows first (so
that a crash leaves a blob without a row, an orphan, never a row without its blob),
claiming them with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so that two nodes, or the
background purge and an administrator's purge, never take the same rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, String, delete, func, insert, literal, select

from dicomhub.errors import NotFound
from dicomhub.index import engine as engines
from dicomhub.index.repository import Alongside
from dicomhub.index.schema import instance, patient, series, study, study_label, trash
from dicomhub.index.schema.types import UtcDateTime

__all__ = ["TrashEntry", "TrashRepository", "TrashedStudy"]

_BATCH = 500  # keys per IN (...) list


@dataclass(frozen=True, slots=True)
class TrashEntry:
    """One trashed instance: what restoring or purging it needs."""

    pk: int
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    blob_key: str
    size: int
    sha256: str
    content_sha256: str
    original_transfer_syntax_uid: str | None
    original_sha256: str | None
    source_ae_title: str | None
    deleted_at: dt.datetime


@dataclass(frozen=True, slots=True)
class TrashedStudy:
    """What the trash holds of one study."""

    study_instance_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    study_description: str
    accession_number: str
    modalities: tuple[str, ...]
    series: int
    instances: int
    size: int
    deleted_by: tuple[str, ...]
    reasons: tuple[str, ...]
    first_deleted_at: dt.datetime
    last_deleted_at: dt.datetime


@dataclass(frozen=True, slots=True)
class _TakenBack(Alongside):
    """Written with a restored instance row: removes its trash row in that transaction.

    A row that is gone (purged since the restore read it) fails the restore of that
    instance, rolling its new row back: the blob may be gone with it.
    """

    trash_pk: int = 0

    def write(self, conn: Connection, study_instance_uid: str) -> None:
        # Not super(): zero-argument super() fails in a slotted dataclass on Python < 3.14.
        Alongside.write(self, conn, study_instance_uid)
        if conn.execute(delete(trash).where(trash.c.pk == self.trash_pk)).rowcount != 1:
            raise NotFound("purged from the trash meanwhile")


def _entry(r: Any) -> TrashEntry:
    return TrashEntry(
        int(r.pk), r.sop_instance_uid, r.series_instance_uid, r.study_instance_uid, r.patient_id,
        r.blob_key, int(r.size), r.sha256, r.content_sha256, r.original_transfer_syntax_uid,
        r.original_sha256, r.source_ae_title, r.deleted_at,
    )  # fmt: skip


class TrashRepository:
    """The ``trash`` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------ into the trash

    @staticmethod
    def keeper(deleted_by: str, reason: str, at: dt.datetime) -> Callable[[Connection, Sequence[int]], None]:
        """The ``before_removal`` of a delete that keeps what it removes in the trash:
        one INSERT ... SELECT per batch of instance keys, in the delete's transaction."""

        def keep(conn: Connection, instance_pks: Sequence[int]) -> None:
            columns = [
                instance.c.sop_instance_uid, instance.c.sop_class_uid, series.c.series_instance_uid,
                study.c.study_instance_uid, patient.c.patient_id, patient.c.patient_name, study.c.study_date,
                study.c.study_description, study.c.accession_number, series.c.modality, instance.c.blob_key,
                instance.c.size, instance.c.sha256, instance.c.content_sha256, instance.c.transfer_syntax_uid,
                instance.c.original_transfer_syntax_uid, instance.c.original_sha256,
                instance.c.source_ae_title, instance.c.received_at,
            ]  # fmt: skip
            names = [c.name for c in columns] + ["deleted_by", "deleted_at", "reason"]
            for start in range(0, len(instance_pks), _BATCH):
                rows = (
                    select(
                        *columns,
                        literal(deleted_by[:128], String(128)),
                        literal(at, UtcDateTime()),
                        literal(reason[:256], String(256)),
                    )
                    .select_from(instance)
                    .join(series, series.c.pk == instance.c.series_pk)
                    .join(study, study.c.pk == series.c.study_pk)
                    .join(patient, patient.c.pk == study.c.patient_pk)
                    .where(instance.c.pk.in_(instance_pks[start : start + _BATCH]))
                )
                conn.execute(insert(trash).from_select(names, rows))

        return keep

    # ------------------------------------------------------------ reading

    def studies(self, limit: int = 1000, study_instance_uid: str | None = None) -> list[TrashedStudy]:
        """The studies in the trash, the most recently deleted first (at most ``limit``)."""
        summary = (
            select(
                trash.c.study_instance_uid,
                func.max(trash.c.patient_id).label("patient_id"),
                func.max(trash.c.patient_name).label("patient_name"),
                func.max(trash.c.study_date).label("study_date"),
                func.max(trash.c.study_description).label("study_description"),
                func.max(trash.c.accession_number).label("accession_number"),
                func.count(func.distinct(trash.c.series_instance_uid)).label("series"),
                func.count().label("instances"),
                func.sum(trash.c.size).label("size"),
                func.min(trash.c.deleted_at).label("first_deleted_at"),
                func.max(trash.c.deleted_at).label("last_deleted_at"),
            )
            .group_by(trash.c.study_instance_uid)
            .order_by(func.max(trash.c.deleted_at).desc(), trash.c.study_instance_uid)
            .limit(limit)
        )
        if study_instance_uid is not None:
            summary = summary.where(trash.c.study_instance_uid == study_instance_uid)
        with engines.read(self.engine) as conn:
            rows = conn.execute(summary).all()
            uids = [str(r.study_instance_uid) for r in rows]
            details: dict[str, tuple[set[str], set[str], set[str]]] = {u: (set(), set(), set()) for u in uids}
            for start in range(0, len(uids), _BATCH):
                for uid, modality, who, reason in conn.execute(
                    select(trash.c.study_instance_uid, trash.c.modality, trash.c.deleted_by, trash.c.reason)
                    .where(trash.c.study_instance_uid.in_(uids[start : start + _BATCH]))
                    .distinct()
                ):
                    modalities, people, reasons = details[uid]
                    if modality:
                        modalities.add(str(modality))
                    people.add(str(who))
                    if reason:
                        reasons.add(str(reason))
        return [
            TrashedStudy(
                str(r.study_instance_uid),
                str(r.patient_id or ""),
                str(r.patient_name or ""),
                str(r.study_date or ""),
                str(r.study_description or ""),
                str(r.accession_number or ""),
                tuple(sorted(details[r.study_instance_uid][0])),
                int(r.series),
                int(r.instances),
                int(r.size or 0),
                tuple(sorted(details[r.study_instance_uid][1])),
                tuple(sorted(details[r.study_instance_uid][2])),
                r.first_deleted_at,
                r.last_deleted_at,
            )  # fmt: skip
            for r in rows
        ]

    def entries(self, study_instance_uid: str) -> list[TrashEntry]:
        """The trashed instances of a study, the most recently deleted first."""
        with engines.read(self.engine) as conn:
            rows = conn.execute(
                select(trash)
                .where(trash.c.study_instance_uid == study_instance_uid)
                .order_by(trash.c.deleted_at.desc(), trash.c.pk.desc())
            ).all()
        return [_entry(r) for r in rows]

    def indexed(self, sop_instance_uids: Sequence[str]) -> set[str]:
        """Which of ``sop_instance_uids`` are live instances now."""
        found: set[str] = set()
        uids = list(sop_instance_uids)
        with engines.read(self.engine) as conn:
            for start in range(0, len(uids), _BATCH):
                found.update(
                    str(u)
                    for (u,) in conn.execute(
                        select(instance.c.sop_instance_uid).where(
                            instance.c.sop_instance_uid.in_(uids[start : start + _BATCH])
                        )
                    )
                )
        return found

    def labels_of(self, study_instance_uid: str) -> list[str]:
        """The labels of a study (kept by UID: a trashed study still has them, for access control)."""
        with engines.read(self.engine) as conn:
            return sorted(
                str(label)
                for label in conn.execute(
                    select(study_label.c.label).where(study_label.c.study_instance_uid == study_instance_uid)
                ).scalars()
            )

    # ------------------------------------------------------------ out of the trash

    @staticmethod
    def taken_back(entry: TrashEntry) -> Alongside:
        """What a restore writes alongside ``entry``'s new instance row (its trash row goes)."""
        return _TakenBack(trash_pk=entry.pk)

    def claim_for_purge(
        self,
        *,
        deleted_before: dt.datetime | None = None,
        study_instance_uid: str | None = None,
        limit: int = 500,
    ) -> list[TrashEntry]:
        """Remove up to ``limit`` trash rows (deleted before ``deleted_before``, of one study, or
        any) in one committed transaction, and return them: their blobs are the caller's to
        remove. Rows another transaction holds (a restore, another purge) are skipped.

        A row whose blob a live instance refers to is removed but not returned: that
        blob is in use (never the case unless a row was copied by hand).
        """
        conditions: list[ColumnElement[bool]] = []
        if deleted_before is not None:
            conditions.append(trash.c.deleted_at <= deleted_before)
        if study_instance_uid is not None:
            conditions.append(trash.c.study_instance_uid == study_instance_uid)
        with engines.read(self.engine) as conn:
            # Most turns of the background purge find nothing: an idle turn takes no write lock.
            if conn.execute(select(trash.c.pk).where(*conditions).limit(1)).first() is None:
                return []
        query = select(trash).where(*conditions).order_by(trash.c.pk).limit(limit)
        query = query.with_for_update(skip_locked=True)
        with engines.write(self.engine) as conn:
            rows = [_entry(r) for r in conn.execute(query).all()]
            pks = [e.pk for e in rows]
            in_use: set[str] = set()
            for start in range(0, len(pks), _BATCH):
                conn.execute(delete(trash).where(trash.c.pk.in_(pks[start : start + _BATCH])))
                keys = [e.blob_key for e in rows[start : start + _BATCH]]
                in_use.update(
                    str(k)
                    for (k,) in conn.execute(select(instance.c.blob_key).where(instance.c.blob_key.in_(keys)))
                )
        return [e for e in rows if e.blob_key not in in_use]
