"""SQL of the decode check: which stored objects were decoded once, and with what result.

Kept apart from :mod:`dicomhub.index.repository` (the store and query path):
this is operations data, written by the background process and read by
``dicomhub check`` and the admin endpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, delete, func, insert, select

from dicomhub.index import engine as engines
from dicomhub.index.cursors import move_cursor, read_cursor
from dicomhub.index.schema import decode_check, instance, series, study
from dicomhub.model.timestamps import iso_utc, utc_now

__all__ = ["DecodeCheckRepository", "DecodeResult", "PendingInstance"]


@dataclass(frozen=True, slots=True)
class PendingInstance:
    """An instance the decode check has not looked at yet."""

    pk: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str


@dataclass(frozen=True, slots=True)
class DecodeResult:
    """One object's decode check: decoded or not (why), and by which decoder."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    ok: bool
    reason: str | None
    decoder: str | None = None


class DecodeCheckRepository:
    """Decode check results and the cursor of the worker that produces them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def cursor(self, name: str) -> int:
        """Position of the named worker (0 when it never ran)."""
        return read_cursor(self.engine, name)

    def instances_after(self, pk: int, limit: int) -> list[PendingInstance]:
        """Instances with a pk above ``pk``, oldest first (pks are never reused)."""
        with engines.read(self.engine) as conn:
            rows = conn.execute(
                select(
                    instance.c.pk,
                    instance.c.sop_instance_uid,
                    instance.c.sop_class_uid,
                    instance.c.transfer_syntax_uid,
                    instance.c.blob_key,
                )
                .where(instance.c.pk > pk)
                .order_by(instance.c.pk)
                .limit(limit)
            ).all()
        return [PendingInstance(*r) for r in rows]

    def verified_pairs(self) -> set[tuple[str, str]]:
        """(transfer syntax, SOP class) pairs of which some object decoded."""
        with engines.read(self.engine) as conn:
            rows = conn.execute(
                select(decode_check.c.transfer_syntax_uid, decode_check.c.sop_class_uid)
                .where(decode_check.c.ok.is_(True))
                .distinct()
            ).all()
        return {(ts, sop) for ts, sop in rows}

    def record(self, results: Sequence[DecodeResult], cursor_name: str, position: int) -> None:
        """Save results and move the cursor to ``position``, in one transaction."""
        now = utc_now()
        with engines.write(self.engine) as conn:
            uids = [r.sop_instance_uid for r in results]
            if uids:
                conn.execute(delete(decode_check).where(decode_check.c.sop_instance_uid.in_(uids)))
                conn.execute(
                    insert(decode_check),
                    [
                        {
                            "sop_instance_uid": r.sop_instance_uid,
                            "sop_class_uid": r.sop_class_uid,
                            "transfer_syntax_uid": r.transfer_syntax_uid,
                            "ok": r.ok,
                            "reason": r.reason,
                            "decoder": r.decoder,
                            "checked_at": now,
                        }
                        for r in results
                    ],
                )
            move_cursor(conn, cursor_name, position)

    def failure_count(self) -> int:
        """How many stored instances (in the checked syntax) did not decode."""
        with engines.read(self.engine) as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(_FAILED_AND_HELD)
                    .where(decode_check.c.ok.is_(False))
                ).scalar_one()
            )

    def decoders(self) -> list[dict[str, Any]]:
        """How many held objects each decoder read, per transfer syntax (decoded ones only).

        Rows checked before the decoder was recorded count under ``decoder`` None.
        """
        with engines.read(self.engine) as conn:
            rows = conn.execute(
                select(decode_check.c.transfer_syntax_uid, decode_check.c.decoder, func.count())
                .select_from(_FAILED_AND_HELD)
                .where(decode_check.c.ok.is_(True))
                .group_by(decode_check.c.transfer_syntax_uid, decode_check.c.decoder)
                .order_by(decode_check.c.transfer_syntax_uid, decode_check.c.decoder)
            ).all()
        return [{"transfer_syntax_uid": ts, "decoder": dec, "objects": int(n)} for ts, dec, n in rows]

    def failures(self, study_instance_uid: str | None = None) -> list[dict[str, Any]]:
        """Stored instances (of one study, when given) whose pixel data did not decode,
        newest check first."""
        where: list[ColumnElement[bool]] = [decode_check.c.ok.is_(False)]
        if study_instance_uid is not None:
            where.append(study.c.study_instance_uid == study_instance_uid)
        with engines.read(self.engine) as conn:
            rows = (
                conn.execute(
                    select(
                        decode_check.c.sop_instance_uid,
                        series.c.series_instance_uid,
                        study.c.study_instance_uid,
                        decode_check.c.sop_class_uid,
                        decode_check.c.transfer_syntax_uid,
                        decode_check.c.reason,
                        decode_check.c.checked_at,
                    )
                    .select_from(_FAILED_AND_HELD)
                    .where(*where)
                    .order_by(decode_check.c.checked_at.desc())
                )
                .mappings()
                .all()
            )
        out = []
        for r in rows:
            item = dict(r)
            item["checked_at"] = iso_utc(item["checked_at"])
            out.append(item)
        return out


# Results joined with the instances still held in the checked syntax (a result
# about a copy since replaced in another syntax, or deleted, is stale).
_FAILED_AND_HELD = (
    decode_check.join(
        instance,
        and_(
            instance.c.sop_instance_uid == decode_check.c.sop_instance_uid,
            instance.c.transfer_syntax_uid == decode_check.c.transfer_syntax_uid,
        ),
    )
    .join(series, series.c.pk == instance.c.series_pk)
    .join(study, study.c.pk == series.c.study_pk)
)
