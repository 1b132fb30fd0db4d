"""SQL of the storage check: which blobs the index refers to, with their size and digest.

``dicomhub check``, ``dicomhub migrate-storage`` and Storage Commitment
compare these rows with what the blob store holds. Instance rows, kept copies
of refused objects (conflicts) and the trash (deleted, not yet purged) refer to blobs. Their one write:
the digest of a blob that STOW-RS left for later, once one of them has
computed it (see :mod:`dicomhub.services.contentdigest`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, Subquery, literal, select, union_all, update

from dicomhub.index import engine as engines
from dicomhub.index.schema import conflict, instance, trash

__all__ = ["BlobRecord", "BlobRecords", "referenced_in"]

_BATCH = 500  # keys per IN (...) list: well below every database's parameter limit


@dataclass(frozen=True, slots=True)
class BlobRecord:
    """A blob the index refers to."""

    blob_key: str
    size: int
    sha256: str
    sop_instance_uid: str
    kind: str  # "instance", "conflict" (a refused copy kept for review) or "trash" (deleted)


def _referenced() -> Subquery:
    return union_all(
        select(
            instance.c.blob_key,
            instance.c.size,
            instance.c.sha256,
            instance.c.sop_instance_uid,
            literal("instance").label("kind"),
        ),
        select(
            conflict.c.blob_key,
            conflict.c.size,
            conflict.c.sha256,
            conflict.c.sop_instance_uid,
            literal("conflict").label("kind"),
        ),
        select(
            trash.c.blob_key,
            trash.c.size,
            trash.c.sha256,
            trash.c.sop_instance_uid,
            literal("trash").label("kind"),
        ),
    ).subquery()


def referenced_in(conn: Connection) -> Iterator[BlobRecord]:
    """Every blob the rows visible to ``conn`` refer to (a backup reads them inside its snapshot)."""
    refs = _referenced()
    result = conn.execution_options(yield_per=1000).execute(select(refs))
    for row in result:
        yield BlobRecord(row.blob_key, int(row.size), row.sha256, row.sop_instance_uid, row.kind)


class BlobRecords:
    """The index's view of the blob store."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def all(self) -> Iterator[BlobRecord]:
        """Every referenced blob (streamed: the rows are not all held at once)."""
        with engines.read(self.engine) as conn:
            yield from referenced_in(conn)

    def referenced(self, keys: Iterable[str]) -> dict[str, BlobRecord]:
        """Which of ``keys`` the index refers to now."""
        keys = list(keys)
        refs = _referenced()
        found: dict[str, BlobRecord] = {}
        with engines.read(self.engine) as conn:
            for start in range(0, len(keys), _BATCH):
                rows = conn.execute(select(refs).where(refs.c.blob_key.in_(keys[start : start + _BATCH])))
                for row in rows:
                    found[row.blob_key] = BlobRecord(
                        row.blob_key, int(row.size), row.sha256, row.sop_instance_uid, row.kind
                    )
        return found

    def set_deferred_digest(self, blob_key: str, sha256: str) -> None:
        """Record the SHA-256 of an instance's blob whose digest was left for later
        (a row that has one keeps it)."""
        with engines.write(self.engine) as conn:
            conn.execute(
                update(instance)
                .where(instance.c.blob_key == blob_key, instance.c.sha256 == "")
                .values(sha256=sha256)
            )
