"""The ``correction`` table: one row per operator correction of stored studies
(see :mod:`dicomhub.services.corrections`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine, insert, or_, select

from dicomhub.index import engine as engines
from dicomhub.index.schema import change as change_log
from dicomhub.index.schema import correction
from dicomhub.model.timestamps import utc_now

__all__ = ["CorrectionRepository"]


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
        now = utc_now()
        with engines.write(self.engine) as conn:
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
