"""Archive-to-archive migration: remote archives, their inventories, migration jobs
and reconcile reports (tables in :mod:`dicomhub.index.schema.migration_jobs`; not
to be confused with ``index/migrations``, the Alembic revisions of the schema).

Everything a migration knows lives here, so that a migration interrupted by a
crash or a restart resumes where it was: the inventory walk by the date
windows and studies it finished, a job by the series it transferred.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from dicomhub.index import engine as engines
from dicomhub.index.schema import (
    instance,
    inventory_instance,
    inventory_series,
    inventory_study,
    inventory_window,
    migration_item,
    migration_job,
    migration_remote,
    patient,
    reconcile_run,
    series,
    study,
)
from dicomhub.model.migration import (
    ITEM_DONE,
    ITEM_FAILED,
    ITEM_PENDING,
    Inventory,
    InventoryInstance,
    InventorySeries,
    InventoryStudy,
    JobState,
)
from dicomhub.model.timestamps import utc_now

__all__ = ["MigrationRepository"]




def _job(row: Any) -> dict[str, Any]:
    return {
        "id": row.pk,
        "remote": row.name,
        "state": row.state,
        "selection": json.loads(row.selection_json),
        "parallel": row.parallel,
        "owner": row.owner,
        "heartbeat_at": row.heartbeat_at.isoformat() if row.heartbeat_at else None,
        "error": row.error,
        "reconcile_clean": row.reconcile_clean,
        "direction": row.direction,
        "transform": json.loads(row.transform_json) if row.transform_json else None,
        "notes": row.notes,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


class MigrationRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- remotes -----------------------------------------------------------

    def state_pk(self, name: str, create: bool = True) -> int | None:
        """The key of the inventory state of the peer ``name``, created on first use
        (``create``), else None when it has none."""
        with engines.read(self.engine) as conn:
            pk = conn.execute(select(migration_remote.c.pk).where(migration_remote.c.name == name)).scalar()
        if pk is not None or not create:
            return None if pk is None else int(pk)
        with engines.write(self.engine) as conn:
            pk = conn.execute(select(migration_remote.c.pk).where(migration_remote.c.name == name)).scalar()
            if pk is None:
                conn.execute(
                    insert(migration_remote).values(name=name, inventory_complete=False, created_at=utc_now())
                )
                pk = conn.execute(
                    select(migration_remote.c.pk).where(migration_remote.c.name == name)
                ).scalar_one()
        return int(pk)

    def remove_remote(self, remote_pk: int) -> None:
        # Explicit, child tables first: SQLite enforces ON DELETE CASCADE only
        # with foreign keys on, and not every database is SQLite.
        with engines.write(self.engine) as conn:
            jobs = select(migration_job.c.pk).where(migration_job.c.remote_pk == remote_pk)
            conn.execute(delete(migration_item).where(migration_item.c.job_pk.in_(jobs)))
            for table in (
                migration_job,
                reconcile_run,
                inventory_instance,
                inventory_series,
                inventory_study,
                inventory_window,
            ):
                conn.execute(delete(table).where(table.c.remote_pk == remote_pk))
            conn.execute(delete(migration_remote).where(migration_remote.c.pk == remote_pk))

    def inventory_state(self, remote_pk: int) -> tuple[bool, dt.datetime | None]:
        with engines.read(self.engine) as conn:
            row = conn.execute(
                select(migration_remote.c.inventory_complete, migration_remote.c.inventory_at).where(
                    migration_remote.c.pk == remote_pk
                )
            ).one()
        return bool(row.inventory_complete), row.inventory_at

    # -- inventory ---------------------------------------------------------

    def reset_inventory(self, remote_pk: int) -> None:
        with engines.write(self.engine) as conn:
            for table in (inventory_instance, inventory_series, inventory_study, inventory_window):
                conn.execute(delete(table).where(table.c.remote_pk == remote_pk))
            conn.execute(
                update(migration_remote)
                .where(migration_remote.c.pk == remote_pk)
                .values(inventory_complete=False, inventory_at=None)
            )

    def set_inventory_complete(self, remote_pk: int, complete: bool) -> None:
        with engines.write(self.engine) as conn:
            conn.execute(
                update(migration_remote)
                .where(migration_remote.c.pk == remote_pk)
                .values(inventory_complete=complete, inventory_at=utc_now() if complete else None)
            )

    def done_windows(self, remote_pk: int) -> set[str]:
        with engines.read(self.engine) as conn:
            return set(
                conn.execute(
                    select(inventory_window.c.window).where(inventory_window.c.remote_pk == remote_pk)
                ).scalars()
            )

    def record_window(self, remote_pk: int, window: str, studies: Sequence[InventoryStudy]) -> None:
        """Record the studies a window's C-FIND found (not yet their content) and the window as done."""
        with engines.write(self.engine) as conn:
            known = set(
                conn.execute(
                    select(inventory_study.c.study_instance_uid).where(
                        inventory_study.c.remote_pk == remote_pk,
                        inventory_study.c.study_instance_uid.in_([s.study_instance_uid for s in studies]),
                    )
                ).scalars()
            )
            new = [s for s in studies if s.study_instance_uid not in known]
            if new:
                conn.execute(
                    insert(inventory_study),
                    [
                        {
                            "remote_pk": remote_pk,
                            "study_instance_uid": s.study_instance_uid,
                            "patient_id": s.patient_id,
                            "patient_name": s.patient_name,
                            "study_date": s.study_date,
                            "accession_number": s.accession_number,
                            "complete": False,
                        }
                        for s in new
                    ],
                )
            conn.execute(
                insert(inventory_window).values(remote_pk=remote_pk, window=window, studies=len(studies))
            )

    def incomplete_studies(self, remote_pk: int) -> list[str]:
        with engines.read(self.engine) as conn:
            return list(
                conn.execute(
                    select(inventory_study.c.study_instance_uid)
                    .where(inventory_study.c.remote_pk == remote_pk, inventory_study.c.complete.is_(False))
                    .order_by(inventory_study.c.pk)
                ).scalars()
            )

    def record_study_content(
        self, remote_pk: int, study_uid: str, content: Iterable[InventorySeries]
    ) -> None:
        """Replace a study's series and instances and mark the study complete, in one transaction."""
        self.record_studies_content(remote_pk, {study_uid: content})

    def record_studies_content(
        self, remote_pk: int, contents: Mapping[str, Iterable[InventorySeries]]
    ) -> None:
        """:meth:`record_study_content` for several studies, in one transaction (a commit
        per study would cost more than its rows)."""
        with engines.write(self.engine) as conn:
            for study_uid, content in contents.items():
                self._record_study_content(conn, remote_pk, study_uid, list(content))

    @staticmethod
    def _record_study_content(
        conn: Connection, remote_pk: int, study_uid: str, content: list[InventorySeries]
    ) -> None:
        old_series = select(inventory_series.c.series_instance_uid).where(
            inventory_series.c.remote_pk == remote_pk,
            inventory_series.c.study_instance_uid == study_uid,
        )
        conn.execute(
            delete(inventory_instance).where(
                inventory_instance.c.remote_pk == remote_pk,
                inventory_instance.c.series_instance_uid.in_(old_series),
            )
        )
        conn.execute(
            delete(inventory_series).where(
                inventory_series.c.remote_pk == remote_pk,
                inventory_series.c.study_instance_uid == study_uid,
            )
        )
        if content:
            conn.execute(
                insert(inventory_series),
                [
                    {
                        "remote_pk": remote_pk,
                        "study_instance_uid": study_uid,
                        "series_instance_uid": s.series_instance_uid,
                        "modality": s.modality,
                    }
                    for s in content
                ],
            )
        rows = [
            {
                "remote_pk": remote_pk,
                "series_instance_uid": s.series_instance_uid,
                "sop_instance_uid": i.sop_instance_uid,
                "sop_class_uid": i.sop_class_uid,
                "content_sha256": i.content_sha256,
            }
            for s in content
            for i in s.instances.values()
        ]
        if rows:
            conn.execute(insert(inventory_instance), rows)
        conn.execute(
            update(inventory_study)
            .where(
                inventory_study.c.remote_pk == remote_pk,
                inventory_study.c.study_instance_uid == study_uid,
            )
            .values(complete=True)
        )

    def inventory(self, remote_pk: int) -> Inventory:
        inv = Inventory()
        with engines.read(self.engine) as conn:
            for r in conn.execute(select(inventory_study).where(inventory_study.c.remote_pk == remote_pk)):
                inv.studies[r.study_instance_uid] = InventoryStudy(
                    r.study_instance_uid, r.patient_id, r.patient_name, r.study_date, r.accession_number
                )
            by_series: dict[str, InventorySeries] = {}
            for r in conn.execute(select(inventory_series).where(inventory_series.c.remote_pk == remote_pk)):
                s = InventorySeries(r.series_instance_uid, r.modality)
                inv.study(r.study_instance_uid).series[s.series_instance_uid] = s
                by_series[s.series_instance_uid] = s
            for r in conn.execute(
                select(
                    inventory_instance.c.series_instance_uid,
                    inventory_instance.c.sop_instance_uid,
                    inventory_instance.c.sop_class_uid,
                    inventory_instance.c.content_sha256,
                ).where(inventory_instance.c.remote_pk == remote_pk)
            ):
                owner = by_series.get(r.series_instance_uid)
                if owner is not None:
                    owner.instances[r.sop_instance_uid] = InventoryInstance(
                        r.sop_instance_uid, r.sop_class_uid, r.content_sha256
                    )
        return inv

    def replace_inventory(self, remote_pk: int, inv: Inventory) -> None:
        """Store a whole inventory at once, in one transaction (a synthesised one)."""
        self.reset_inventory(remote_pk)
        studies = list(inv.studies.values())
        with engines.write(self.engine) as conn:
            if studies:
                conn.execute(
                    insert(inventory_study),
                    [
                        {"remote_pk": remote_pk, "study_instance_uid": s.study_instance_uid,
                         "patient_id": s.patient_id, "patient_name": s.patient_name,
                         "study_date": s.study_date, "accession_number": s.accession_number, "complete": True}
                        for s in studies
                    ],
                )  # fmt: skip
            series = [(s.study_instance_uid, se) for s in studies for se in s.series.values()]
            if series:
                conn.execute(
                    insert(inventory_series),
                    [
                        {"remote_pk": remote_pk, "study_instance_uid": st, "series_instance_uid":
                         se.series_instance_uid, "modality": se.modality}
                        for st, se in series
                    ],
                )  # fmt: skip
            instances = [
                {"remote_pk": remote_pk, "series_instance_uid": se.series_instance_uid,
                 "sop_instance_uid": i.sop_instance_uid, "sop_class_uid": i.sop_class_uid,
                 "content_sha256": i.content_sha256}
                for _st, se in series
                for i in se.instances.values()
            ]  # fmt: skip
            if instances:
                conn.execute(insert(inventory_instance), instances)
            conn.execute(
                insert(inventory_window).values(remote_pk=remote_pk, window="all", studies=len(studies))
            )
        self.set_inventory_complete(remote_pk, True)

    def local_inventory(self, study_uids: Iterable[str] | None = None) -> Inventory:
        """What this archive holds, in the same form (with each data set's SHA-256)."""
        inv = Inventory()
        wanted = list(study_uids) if study_uids is not None else None
        query = select(
            study.c.study_instance_uid,
            patient.c.patient_id,
            patient.c.patient_name,
            study.c.study_date,
            study.c.accession_number,
            series.c.series_instance_uid,
            series.c.modality,
            instance.c.sop_instance_uid,
            instance.c.sop_class_uid,
            instance.c.content_sha256,
        ).select_from(
            instance.join(series, instance.c.series_pk == series.c.pk)
            .join(study, series.c.study_pk == study.c.pk)
            .join(patient, study.c.patient_pk == patient.c.pk)
        )
        with engines.read(self.engine) as conn:
            chunks: list[list[str] | None] = (
                [wanted[i : i + 500] for i in range(0, len(wanted), 500)] if wanted is not None else [None]
            )
            for chunk in chunks:
                q = query if chunk is None else query.where(study.c.study_instance_uid.in_(chunk))
                for r in conn.execute(q):
                    st = inv.studies.get(r.study_instance_uid)
                    if st is None:
                        st = inv.studies[r.study_instance_uid] = InventoryStudy(
                            r.study_instance_uid,
                            r.patient_id or "",
                            r.patient_name or "",
                            r.study_date or "",
                            r.accession_number or "",
                        )
                    se = st.series.get(r.series_instance_uid)
                    if se is None:
                        se = st.series[r.series_instance_uid] = InventorySeries(
                            r.series_instance_uid, r.modality or ""
                        )
                    se.instances[r.sop_instance_uid] = InventoryInstance(
                        r.sop_instance_uid, r.sop_class_uid, r.content_sha256
                    )
        return inv

    def local_series_counts(self, series_uids: Sequence[str]) -> dict[str, int]:
        with engines.read(self.engine) as conn:
            rows = conn.execute(
                select(series.c.series_instance_uid, func.count(instance.c.pk))
                .select_from(series.join(instance, instance.c.series_pk == series.c.pk))
                .where(series.c.series_instance_uid.in_(list(series_uids)))
                .group_by(series.c.series_instance_uid)
            ).all()
        return {r[0]: int(r[1]) for r in rows}

    def local_instances_of_series(self, series_uid: str) -> set[str]:
        with engines.read(self.engine) as conn:
            return set(
                conn.execute(
                    select(instance.c.sop_instance_uid)
                    .select_from(instance.join(series, instance.c.series_pk == series.c.pk))
                    .where(series.c.series_instance_uid == series_uid)
                ).scalars()
            )

    # -- jobs --------------------------------------------------------------

    def create_job(
        self,
        remote_pk: int,
        selection: dict[str, Any],
        parallel: int,
        owner: str | None = None,
        *,
        direction: str = "pull",
        transform: dict[str, Any] | None = None,
    ) -> int:
        """A new job: pending (for the server's worker), or running for ``owner`` already."""
        now = utc_now()
        state = JobState.RUNNING if owner else JobState.PENDING
        with engines.write(self.engine) as conn:
            return int(
                conn.execute(
                    insert(migration_job).values(
                        remote_pk=remote_pk,
                        state=state.value,
                        selection_json=json.dumps(selection, sort_keys=True),
                        parallel=parallel,
                        direction=direction,
                        transform_json=json.dumps(transform, sort_keys=True) if transform else None,
                        owner=owner,
                        heartbeat_at=now if owner else None,
                        created_at=now,
                        updated_at=now,
                    )
                ).inserted_primary_key[0]  # type: ignore[index]
            )

    def _jobs_query(self) -> Any:
        return select(migration_job, migration_remote.c.name).join(
            migration_remote, migration_job.c.remote_pk == migration_remote.c.pk
        )

    def job(self, job_pk: int) -> dict[str, Any] | None:
        with engines.read(self.engine) as conn:
            row = conn.execute(self._jobs_query().where(migration_job.c.pk == job_pk)).first()
            if row is None:
                return None
            out = _job(row)
            out["progress"] = self._progress(conn, job_pk)
        return out

    def jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        with engines.read(self.engine) as conn:
            rows = conn.execute(self._jobs_query().order_by(migration_job.c.pk.desc()).limit(limit)).all()
            return [{**_job(r), "progress": self._progress(conn, r.pk)} for r in rows]

    def _progress(self, conn: Any, job_pk: int) -> dict[str, int]:
        out = {"series": 0, "series_done": 0, "series_failed": 0, "instances": 0, "instances_done": 0,
               "bytes_done": 0}  # fmt: skip
        for state, n, expected, done, done_bytes in conn.execute(
            select(
                migration_item.c.state,
                func.count(),
                func.coalesce(func.sum(migration_item.c.expected_instances), 0),
                func.coalesce(func.sum(migration_item.c.transferred), 0),
                func.coalesce(func.sum(migration_item.c.transferred_bytes), 0),
            )
            .where(migration_item.c.job_pk == job_pk)
            .group_by(migration_item.c.state)
        ):
            out["series"] += int(n)
            out["instances"] += int(expected)
            out["bytes_done"] += int(done_bytes)
            if state == ITEM_DONE:
                out["series_done"] += int(n)
                out["instances_done"] += int(expected)
            else:
                out["instances_done"] += int(done)
                if state == ITEM_FAILED:
                    out["series_failed"] += int(n)
        return out

    def unfinished_job(self, remote_pk: int) -> int | None:
        with engines.read(self.engine) as conn:
            return conn.execute(
                select(migration_job.c.pk)
                .where(
                    migration_job.c.remote_pk == remote_pk,
                    migration_job.c.state.in_(
                        [
                            JobState.PENDING.value,
                            JobState.RUNNING.value,
                            JobState.STOPPED.value,
                            JobState.STOPPING.value,
                        ]
                    ),
                )  # fmt: skip
                .order_by(migration_job.c.pk.desc())
                .limit(1)
            ).scalar()

    def claim_job(
        self, job_pk: int | None, owner: str, stale_before: dt.datetime, owners_like: str = "%"
    ) -> int | None:
        """Take a job to run: ``job_pk``, or else the oldest pending one or one whose
        owner matches ``owners_like`` (SQL LIKE); a running job only when its
        runner's heartbeat is older than ``stale_before`` (the runner is gone)."""
        abandoned = and_(
            migration_job.c.state.in_([JobState.RUNNING.value, JobState.STOPPING.value]),
            or_(migration_job.c.heartbeat_at.is_(None), migration_job.c.heartbeat_at < stale_before),
        )
        free = or_(migration_job.c.state.in_([JobState.PENDING.value, JobState.STOPPED.value]), abandoned)
        with engines.write(self.engine) as conn:
            if job_pk is None:
                job_pk = conn.execute(
                    select(migration_job.c.pk)
                    .where(
                        or_(
                            migration_job.c.state == JobState.PENDING.value,
                            and_(abandoned, migration_job.c.owner.like(owners_like)),
                        ),
                    )
                    .order_by(migration_job.c.pk)
                    .limit(1)
                ).scalar()
                if job_pk is None:
                    return None
            done = conn.execute(
                update(migration_job)
                .where(migration_job.c.pk == job_pk, free)
                .values(
                    state=JobState.RUNNING.value,
                    owner=owner,
                    heartbeat_at=utc_now(),
                    updated_at=utc_now(),
                    error=None,
                )  # fmt: skip
            )
            return job_pk if done.rowcount == 1 else None

    def heartbeat(self, job_pk: int, owner: str) -> str | None:
        """Renew the runner's claim; return the job's state (``stopping`` asks it to stop)."""
        with engines.write(self.engine) as conn:
            conn.execute(
                update(migration_job)
                .where(migration_job.c.pk == job_pk, migration_job.c.owner == owner)
                .values(heartbeat_at=utc_now())
            )
            return conn.execute(select(migration_job.c.state).where(migration_job.c.pk == job_pk)).scalar()

    def set_job_state(
        self,
        job_pk: int,
        state: JobState,
        *,
        only_from: Sequence[JobState] | None = None,
        error: str | None = None,
        reconcile_clean: bool | None = None,
    ) -> bool:
        values: dict[str, Any] = {"state": state.value, "updated_at": utc_now()}
        if error is not None:
            values["error"] = error
        if reconcile_clean is not None:
            values["reconcile_clean"] = reconcile_clean
        if state.finished:
            values["heartbeat_at"] = None
        q = update(migration_job).where(migration_job.c.pk == job_pk)
        if only_from is not None:
            q = q.where(migration_job.c.state.in_([s.value for s in only_from]))
        with engines.write(self.engine) as conn:
            return bool(conn.execute(q.values(**values)).rowcount == 1)

    def add_items(self, job_pk: int, items: Sequence[tuple[str, str, int]]) -> None:
        if not items:
            return
        with engines.write(self.engine) as conn:
            conn.execute(
                insert(migration_item),
                [
                    {
                        "job_pk": job_pk,
                        "study_instance_uid": st,
                        "series_instance_uid": se,
                        "expected_instances": n,
                        "expected_bytes": 0,
                        "state": ITEM_PENDING,
                        "attempts": 0,
                        "transferred": 0,
                        "transferred_bytes": 0,
                    }
                    for st, se, n in items
                ],
            )

    def has_items(self, job_pk: int) -> bool:
        with engines.read(self.engine) as conn:
            return (
                conn.execute(
                    select(migration_item.c.pk).where(migration_item.c.job_pk == job_pk).limit(1)
                ).first()
                is not None
            )

    def items(self, job_pk: int, states: Sequence[str]) -> list[dict[str, Any]]:
        with engines.read(self.engine) as conn:
            rows = conn.execute(
                select(migration_item)
                .where(migration_item.c.job_pk == job_pk, migration_item.c.state.in_(list(states)))
                .order_by(migration_item.c.pk)
            ).all()
        return [dict(r._mapping) for r in rows]

    def retry_failed_items(self, job_pk: int) -> None:
        with engines.write(self.engine) as conn:
            conn.execute(
                update(migration_item)
                .where(migration_item.c.job_pk == job_pk, migration_item.c.state == ITEM_FAILED)
                .values(state=ITEM_PENDING, attempts=0)
            )

    def finish_item(
        self, item_pk: int, state: str, attempts: int, transferred: int, nbytes: int, error: str | None
    ) -> None:
        with engines.write(self.engine) as conn:
            conn.execute(
                update(migration_item)
                .where(migration_item.c.pk == item_pk)
                .values(
                    state=state,
                    attempts=attempts,
                    transferred=transferred,
                    transferred_bytes=nbytes,
                    error=error,
                )  # fmt: skip
            )

    def set_job_transform(self, job_pk: int, transform: dict[str, Any]) -> None:
        with engines.write(self.engine) as conn:
            conn.execute(
                update(migration_job)
                .where(migration_job.c.pk == job_pk)
                .values(transform_json=json.dumps(transform, sort_keys=True))
            )

    def set_job_notes(self, job_pk: int, notes: str) -> None:
        with engines.write(self.engine) as conn:
            conn.execute(update(migration_job).where(migration_job.c.pk == job_pk).values(notes=notes))

    # -- reconcile ---------------------------------------------------------

    def save_reconcile(self, remote_pk: int, clean: bool, report: dict[str, Any]) -> None:
        with engines.write(self.engine) as conn:
            conn.execute(
                insert(reconcile_run).values(
                    remote_pk=remote_pk, at=utc_now(), clean=clean, report_json=json.dumps(report)
                )
            )
