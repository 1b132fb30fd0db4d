"""Engines, transactions and schema migration for the index.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL``, so
a committed transaction is on disk before the commit returns, and write
transactions start with ``BEGIN IMMEDIATE`` so that concurrent writers (several
threads, several worker processes) queue on the busy timeout instead of failing
with "database is locked" when a read lock cannot be upgraded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError

from dicomhub.errors import IndexUnavailable

__all__ = ["connect_engine", "migrate", "read", "schema_is_current", "write"]

_MIGRATIONS = Path(__file__).with_name("migrations")
_WRITE = "dicomhub_write"


def connect_engine(url: str) -> Engine:
    """Create the engine for ``url`` with dicomhub's per-dialect settings."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": 60.0, "check_same_thread": False},
            pool_size=8,
            max_overflow=32,
        )
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_size=8, max_overflow=16, pool_pre_ping=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite (it would otherwise
        # issue a deferred BEGIN itself) so that writers use BEGIN IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        # DICOM matching is case-sensitive except for PN, which is matched on
        # a case-folded column; SQLite's LIKE folds ASCII case by default.
        cur.execute("PRAGMA case_sensitive_like=ON")
        cur.execute("PRAGMA cache_size=-32000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextlib.contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """One write transaction: committed on normal exit, rolled back on error."""
    try:
        with engine.connect().execution_options(**{_WRITE: True}) as conn:
            with conn.begin():
                yield conn
    except SQLAlchemyError as exc:
        if _is_integrity_error(exc):
            raise
        raise IndexUnavailable(f"index write failed: {exc.__class__.__name__}: {exc}") from exc


@contextlib.contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """A read transaction (a consistent snapshot on both dialects)."""
    try:
        with engine.connect() as conn:
            with conn.begin():
                yield conn
    except SQLAlchemyError as exc:
        raise IndexUnavailable(f"index read failed: {exc.__class__.__name__}: {exc}") from exc


def _is_integrity_error(exc: BaseException) -> bool:
    from sqlalchemy.exc import IntegrityError

    return isinstance(exc, IntegrityError)


def _alembic_config(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def schema_is_current(engine: Engine) -> bool:
    """True when the database is at the newest migration."""
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        head = ScriptDirectory.from_config(_alembic_config(conn)).get_current_head()
        return current == head


def migrate(engine: Engine, lock_dir: str | os.PathLike[str] | None = None) -> None:
    """Upgrade the schema to the newest migration (``dicomhub db upgrade``).

    Several processes may start at once on one data dir: a file lock in
    ``lock_dir`` makes them migrate one after the other.
    """
    lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if lock_dir is not None:
        lock = _file_lock(Path(lock_dir) / ".migrate.lock")
    with lock:
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "head")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[object]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield fh
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
