"""The ``correction`` table: one row per operator correction of stored studies
(see :mod:`dicomhub.services.corrections`); study attributes corrected in place
(the ``study`` row and its ``study_coercion`` for the way out)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Engine, insert, or_, select, update

from dicomhub.index import engine as engines
from dicomhub.index.schema import change as change_log
from dicomhub.index.schema import correction, study, study_coercion
from dicomhub.model.attributes import INDEXED
from dicomhub.model.extract import person_name_key
from dicomhub.model.identifiers import Level
from dicomhub.model.timestamps import utc_now

__all__ = ["CorrectionRepository"]

# Keyword -> column of the study table (the study-level indexed attributes).
_COLUMNS = {
    a.keyword: a.column for a in INDEXED if a.level is Level.STUDY and a.keyword != "StudyInstanceUID"
}


class CorrectionRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(
        self,
        *,
        kind: str,
        study_instance_uid: str,
        new_study_instance_uid: str,
        made_by: str,
        reason: str,
        source: str,
        original_values: Mapping[str, Any],
        new_values: Mapping[str, Any],
        uid_map: Mapping[str, str],
    ) -> int:
        """Record one correction; the studies it changed are announced in the
        change log in the same transaction (routing and webhooks follow it)."""
        with engines.write(self.engine) as conn:
            return self._add(conn, kind=kind, study_instance_uid=study_instance_uid,
                             new_study_instance_uid=new_study_instance_uid, made_by=made_by, reason=reason,
                             source=source, original_values=original_values, new_values=new_values,
                             uid_map=uid_map)  # fmt: skip

    def modify_in_place(
        self, uid: str, values: Mapping[str, str], modifying_system: str, **record: Any
    ) -> int | None:
        """Set study attributes of a study in place: its ``study`` row (what C-FIND and
        QIDO-RS answer) and its ``study_coercion`` (what its objects leave with), and
        write the record (``record``: the keywords of :meth:`add`), in one transaction.
        None (nothing changed) when there is no such study."""
        now = utc_now()
        columns: dict[str, Any] = {_COLUMNS[k]: v for k, v in values.items() if k in _COLUMNS}
        if "referring_physician_name" in columns:
            columns["referring_physician_name_key"] = person_name_key(columns["referring_physician_name"])
        with engines.write(self.engine) as conn:
            done = conn.execute(
                update(study).where(study.c.study_instance_uid == uid).values(**columns, updated_at=now)
            )
            if done.rowcount == 0:
                return None
            held = conn.execute(
                select(study_coercion.c.values_json).where(study_coercion.c.study_instance_uid == uid)
            ).scalar()
            merged = {**(json.loads(held) if held else {}), **values}
            row = {"values_json": json.dumps(merged, sort_keys=True),
                   "modifying_system": modifying_system[:64], "modified_at": now}  # fmt: skip
            if held is None:
                conn.execute(insert(study_coercion).values(study_instance_uid=uid, **row))
            else:
                conn.execute(
                    update(study_coercion).where(study_coercion.c.study_instance_uid == uid).values(**row)
                )
            return self._add(conn, **record)

    def _add(
        self,
        conn: Connection,
        *,
        kind: str,
        study_instance_uid: str,
        new_study_instance_uid: str,
        made_by: str,
        reason: str,
        source: str,
        original_values: Mapping[str, Any],
        new_values: Mapping[str, Any],
        uid_map: Mapping[str, str],
    ) -> int:
        now = utc_now()
        pk = conn.execute(
            insert(correction)
            .values(
                kind=kind,
                study_instance_uid=study_instance_uid[:64],
                new_study_instance_uid=new_study_instance_uid[:64],
                made_by=made_by[:128],
                made_at=now,
                reason=reason[:256],
                source=source,
                original_values_json=json.dumps(original_values, sort_keys=True),
                new_values_json=json.dumps(new_values, sort_keys=True),
                uid_map_json=json.dumps(uid_map, sort_keys=True),
            )
            .returning(correction.c.pk)
        ).scalar_one()
        studies = dict.fromkeys(u for u in (study_instance_uid, new_study_instance_uid) if u)
        conn.execute(
            insert(change_log),
            [{"change_type": "updated", "level": "STUDY", "uid": u[:64], "at": now} for u in studies],
        )
        return int(pk)

    def records(self, study_instance_uid: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The corrections (newest first), or those that read or wrote ``study_instance_uid``."""
        query = select(correction).order_by(correction.c.pk.desc()).limit(limit)
        if study_instance_uid:
            # A merge reads several studies: the first is in the column, all of them in
            # the UID map (studies) or the original values (patients). A UID has only
            # digits and dots, so it is matched as a quoted JSON string.
            quoted = f'%"{study_instance_uid}"%'
            query = query.where(
                or_(
                    correction.c.study_instance_uid == study_instance_uid,
                    correction.c.new_study_instance_uid == study_instance_uid,
                    correction.c.uid_map_json.like(quoted),
                    correction.c.original_values_json.like(quoted),
                )
            )
        with engines.read(self.engine) as conn:
            rows = conn.execute(query).all()
        out: list[dict[str, Any]] = []
        for row in rows:
            record: dict[str, Any] = {
                "id": row.pk,
                "kind": row.kind,
                "study_instance_uid": row.study_instance_uid,
                "new_study_instance_uid": row.new_study_instance_uid,
                "made_by": row.made_by,
                "made_at": row.made_at.isoformat(),
                "reason": row.reason,
                "source": row.source,
                "original_values": json.loads(row.original_values_json),
                "new_values": json.loads(row.new_values_json),
                "uid_map": json.loads(row.uid_map_json),
            }
            out.append(record)
        return out
