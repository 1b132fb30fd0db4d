"""SQL of ``dicomhub repair``: the instances to look at, and the one write that mends one.

A repaired instance keeps its row (its pk, UIDs, labels, change log entries):
only the blob it refers to changes, to a verified copy written under a new
key, in one transaction that also checks the row still refers to the
damaged blob (a delete or another repair in between wins).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Engine, Select, select, update

from dicomhub.index import engine as engines
from dicomhub.index.schema import instance, series, study
from dicomhub.model.repair import RepairTarget

__all__ = ["RepairRepository", "RepairTarget"]

_BATCH = 500  # UIDs per IN (...) list: well below every database's parameter limit


def _select() -> Select[Any]:
    return (
        select(
            instance.c.pk,
            instance.c.sop_instance_uid,
            instance.c.sop_class_uid,
            instance.c.transfer_syntax_uid,
            instance.c.blob_key,
            instance.c.size,
            instance.c.sha256,
            instance.c.content_sha256,
            study.c.study_instance_uid,
            series.c.series_instance_uid,
            instance.c.source_ae_title,
            instance.c.original_transfer_syntax_uid,
            instance.c.original_sha256,
        )
        .select_from(instance.join(series, series.c.pk == instance.c.series_pk))
        .join(study, study.c.pk == series.c.study_pk)
    )


def _target(row: Any) -> RepairTarget:
    return RepairTarget(
        pk=int(row.pk),
        sop_instance_uid=row.sop_instance_uid,
        sop_class_uid=row.sop_class_uid,
        transfer_syntax_uid=row.transfer_syntax_uid,
        blob_key=row.blob_key,
        size=int(row.size),
        sha256=row.sha256,
        content_sha256=row.content_sha256,
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid,
        source_ae_title=row.source_ae_title,
        original_transfer_syntax_uid=row.original_transfer_syntax_uid,
        original_sha256=row.original_sha256,
    )


class RepairRepository:
    """The index side of repair from a peer."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def targets(self, study_uids: Sequence[str] | None = None) -> Iterator[RepairTarget]:
        """Every instance (streamed), or those of ``study_uids``, in pk order."""
        if study_uids is None:
            with engines.read(self.engine) as conn:
                result = conn.execution_options(yield_per=1000).execute(_select().order_by(instance.c.pk))
                for row in result:
                    yield _target(row)
            return
        uids = sorted(set(study_uids))
        for start in range(0, len(uids), _BATCH):
            with engines.read(self.engine) as conn:
                rows = conn.execute(
                    _select()
                    .where(study.c.study_instance_uid.in_(uids[start : start + _BATCH]))
                    .order_by(instance.c.pk)
                ).all()
            yield from (_target(r) for r in rows)

    def switch_blob(
        self,
        target: RepairTarget,
        blob_key: str,
        size: int,
        sha256: str,
        transfer_syntax_uid: str,
        original: tuple[str | None, str | None],
    ) -> bool:
        """Point the instance at its mended blob; False (nothing written) when the row
        no longer refers to the damaged blob ``target.blob_key``.

        ``original``: (original transfer syntax, original SHA-256) as they are to be
        kept (both None when the object is now held as it was received).
        """
        with engines.write(self.engine) as conn:
            done = conn.execute(
                update(instance)
                .where(instance.c.pk == target.pk, instance.c.blob_key == target.blob_key)
                .values(
                    blob_key=blob_key,
                    size=size,
                    sha256=sha256,
                    transfer_syntax_uid=transfer_syntax_uid,
                    original_transfer_syntax_uid=original[0],
                    original_sha256=original[1],
                )
            )
            return done.rowcount == 1
