"""Where a background job is in a stream it follows (``worker_cursor``), read and moved
in the same transaction as the job's results, so a crash repeats work, never skips it."""

from __future__ import annotations

from sqlalchemy import Connection, Engine, func, insert, select, update

from dicomhub.index import engine as engines
from dicomhub.index.schema import change, worker_cursor

__all__ = ["change_log_position", "move_cursor", "read_cursor"]


def read_cursor(engine: Engine, name: str) -> int:
    """Position of the named job (0 when it never ran)."""
    with engines.read(engine) as conn:
        value = conn.execute(select(worker_cursor.c.position).where(worker_cursor.c.name == name)).scalar()
    return int(value or 0)


def move_cursor(conn: Connection, name: str, position: int) -> None:
    """Set the named job's position, inside the caller's write transaction."""
    moved = conn.execute(
        update(worker_cursor).where(worker_cursor.c.name == name).values(position=position)
    ).rowcount
    if not moved:
        conn.execute(insert(worker_cursor).values(name=name, position=position))


def change_log_position(engine: Engine, name: str) -> int:
    """Position in the change log of the named follower (a webhook, routing); the newest
    entry the first time, written so: a new follower reports what happens from now
    on, not the archive's whole history."""
    where = select(worker_cursor.c.position).where(worker_cursor.c.name == name)
    with engines.read(engine) as conn:
        found = conn.execute(where).scalar()
    if found is not None:
        return int(found)
    with engines.write(engine) as conn:
        found = conn.execute(where).scalar()
        if found is None:
            found = conn.execute(select(func.max(change.c.seq))).scalar() or 0
            move_cursor(conn, name, int(found))
    return int(found)
