"""Patient updates and merges applied to the archive's index, and the per-study
patient coercion records that retrieval reads (:mod:`dicomhub.model.coercion`).

The archive's ``patient`` rows are keyed by Patient ID alone (the index keeps
no Issuer of Patient ID), so which updates reach them is the caller's decision
(:class:`dicomhub.services.coercion.ArchivePatients`). Each change here runs on
a connection the caller's transaction owns, so the patient of record and the
archive change together or not at all.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update

from dicomhub.index import engine as engines
from dicomhub.index.schema import change as change_log
from dicomhub.index.schema import patient, patient_coercion, study, study_coercion
from dicomhub.model.coercion import PatientCoercion
from dicomhub.model.extract import person_name_key
from dicomhub.model.timestamps import utc_now

__all__ = ["ArchivePatientChange", "PatientCoercionRepository"]


def _logged(change_type: str, level: str, uid: str, at: dt.datetime) -> dict[str, object]:
    return {"change_type": change_type, "level": level, "uid": uid[:64], "at": at}


class ArchivePatientChange:
    """One change to the archive's patients, to run inside another transaction
    (the orders store's); :attr:`studies` holds the studies it reached once run."""

    def __init__(
        self,
        repo: PatientCoercionRepository,
        target: PatientCoercion,
        *,
        from_patient_id: str | None = None,
        study_uids: Sequence[str] = (),
    ) -> None:
        self.repo = repo
        self.target = target
        self.from_patient_id = from_patient_id
        self.study_uids = tuple(study_uids)
        self.studies: list[str] = []

    def __call__(self, conn: Connection) -> None:
        self.studies = self.repo.apply(conn, self)


class PatientCoercionRepository:
    """The ``patient_coercion`` table, and moving studies between archive patients."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def coercions(self, study_instance_uids: Iterable[str]) -> dict[str, PatientCoercion]:
        """The coercions of these studies, by Study Instance UID (one query; the
        studies without one are simply absent).

        A study that arrived after its patient was corrected has no record of its
        own, yet the index files it under the corrected patient (whose row shows
        the corrected demographics): it leaves with the newest record of any study
        of that patient, so what is sent agrees with what is queried.
        """
        uids = sorted(set(study_instance_uids))
        # Per study: (newest first, its own record before a sibling's) -> the record.
        best: dict[str, tuple[tuple[dt.datetime, bool], PatientCoercion]] = {}
        studies: dict[str, Any] = {}
        wanted, sibling = study.alias("wanted"), study.alias("sibling")
        fields = [c for c in patient_coercion.c if c.name != "study_instance_uid"]
        query = (
            select(wanted.c.study_instance_uid, sibling.c.study_instance_uid.label("sibling_uid"), *fields)
            .join(sibling, sibling.c.patient_pk == wanted.c.patient_pk)
            .join(patient_coercion, patient_coercion.c.study_instance_uid == sibling.c.study_instance_uid)
        )  # fmt: skip
        with engines.read(self.engine) as conn:
            for start in range(0, len(uids), 500):
                chunk = uids[start : start + 500]
                for row in conn.execute(query.where(wanted.c.study_instance_uid.in_(chunk))):
                    uid = row.study_instance_uid
                    rank = (row.modified_at, row.sibling_uid == uid)
                    if uid not in best or rank > best[uid][0]:
                        values = {c.name: getattr(row, c.name) for c in fields}
                        best[uid] = (rank, PatientCoercion(study_instance_uid=uid, **values))
                corrected = conn.execute(
                    select(study_coercion).where(study_coercion.c.study_instance_uid.in_(chunk))
                ).all()
                studies.update({r.study_instance_uid: r for r in corrected})
        found = {uid: coercion for uid, (_rank, coercion) in best.items()}
        # Study attributes corrected in place join the study's patient coercion, or
        # leave alone (the Patient module as stored) when its patient was not corrected.
        for uid, row in studies.items():
            pairs = tuple(sorted(json.loads(row.values_json).items()))
            if uid in found:
                found[uid] = dataclasses.replace(found[uid], study_values=pairs)
            else:
                found[uid] = PatientCoercion(
                    study_instance_uid=uid, patient_id="", issuer_of_patient_id="", patient_name="",
                    patient_birth_date="", patient_sex="", reason="modify",
                    modifying_system=row.modifying_system, modified_at=row.modified_at,
                    study_values=pairs, patient=False,
                )  # fmt: skip
        return found

    def run(self, change: ArchivePatientChange) -> list[str]:
        """``change`` in a transaction of its own (operator corrections)."""
        with engines.write(self.engine) as conn:
            change(conn)
        return change.studies

    def apply(self, conn: Connection, change: ArchivePatientChange) -> list[str]:
        """File studies under ``change.target`` and record their coercion.

        With ``from_patient_id``: every study of that archive patient (an update
        when it is the target's Patient ID, a merge otherwise; a patient left
        without studies is removed). With ``study_uids``: those studies (an
        operator's correction). The studies the target patient already has get a
        record too, since the target's demographics may have changed. Returns the
        Study Instance UIDs reached.
        """
        t = change.target
        values = {"patient_name": t.patient_name, "patient_name_key": person_name_key(t.patient_name),
                  "patient_birth_date": t.patient_birth_date, "patient_sex": t.patient_sex}  # fmt: skip
        if change.from_patient_id is not None:
            source = conn.execute(
                select(patient.c.pk).where(patient.c.patient_id == change.from_patient_id)
            ).scalar()
            if source is None:
                return []
            rows = conn.execute(
                select(study.c.pk, study.c.study_instance_uid).where(study.c.patient_pk == source)
            ).all()
        else:
            rows = conn.execute(
                select(study.c.pk, study.c.study_instance_uid).where(
                    study.c.study_instance_uid.in_(change.study_uids)
                )
            ).all()
        target_pk = conn.execute(select(patient.c.pk).where(patient.c.patient_id == t.patient_id)).scalar()
        created = target_pk is None
        if target_pk is None:
            if not rows:
                return []
            target_pk = conn.execute(
                insert(patient)
                .values(patient_id=t.patient_id, created_at=t.modified_at, **values)
                .returning(patient.c.pk)
            ).scalar_one()
        else:
            conn.execute(update(patient).where(patient.c.pk == target_pk).values(**values))
        if not rows:
            return []
        # The target's own studies show its (possibly new) demographics in the index
        # too, so their objects must leave with them: they get a record as well.
        kept = conn.execute(
            select(study.c.pk, study.c.study_instance_uid).where(study.c.patient_pk == target_pk)
        ).all()
        rows = list({r.pk: r for r in [*rows, *kept]}.values())
        now = utc_now()
        study_pks = [r.pk for r in rows]
        previous = set(
            conn.execute(select(study.c.patient_pk).where(study.c.pk.in_(study_pks))).scalars()
        ) - {target_pk}
        conn.execute(
            update(study).where(study.c.pk.in_(study_pks)).values(patient_pk=target_pk, updated_at=now)
        )
        uids = [r.study_instance_uid for r in rows]
        record = {k: getattr(t, k) for k in ("patient_id", "issuer_of_patient_id", "patient_name",
                                               "patient_birth_date", "patient_sex", "reason",
                                               "modifying_system", "modified_at")}  # fmt: skip
        conn.execute(delete(patient_coercion).where(patient_coercion.c.study_instance_uid.in_(uids)))
        conn.execute(insert(patient_coercion), [{"study_instance_uid": u, **record} for u in uids])
        # The change log (what followers of the archive read) says which studies changed.
        changes = [_logged("created", "PATIENT", t.patient_id, now)] if created else []
        changes += [_logged("updated", "STUDY", u, now) for u in uids]
        for pk in previous:
            left = conn.execute(select(study.c.pk).where(study.c.patient_pk == pk).limit(1)).first()
            if left is None:
                gone = conn.execute(select(patient.c.patient_id).where(patient.c.pk == pk)).scalar()
                conn.execute(delete(patient).where(patient.c.pk == pk))
                changes.append(_logged("deleted", "PATIENT", str(gone), now))
        conn.execute(insert(change_log), changes)
        return uids

    def studies_of(self, patient_id: str) -> list[str]:
        with engines.read(self.engine) as conn:
            return list(
                conn.execute(
                    select(study.c.study_instance_uid)
                    .join(patient, patient.c.pk == study.c.patient_pk)
                    .where(patient.c.patient_id == patient_id)
                ).scalars()
            )

    def patient_demographics(self, patient_id: str) -> dict[str, str] | None:
        """The archive patient's name, birth date and sex, or None."""
        with engines.read(self.engine) as conn:
            row = conn.execute(
                select(patient.c.patient_name, patient.c.patient_birth_date, patient.c.patient_sex).where(
                    patient.c.patient_id == patient_id
                )
            ).first()
        if row is None:
            return None
        return {k: v or "" for k, v in row._mapping.items()}
