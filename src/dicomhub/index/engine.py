"""Engines, transactions and schema migration for the index.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL``, so
a committed transaction is on disk before the commit returns, and write
transactions start with ``BEGIN IMMEDIATE`` so that concurrent writers (several
threads, several worker processes) queue on the busy timeout instead of failing
with "database is locked" when a read lock cannot be upgraded.

PostgreSQL (``postgresql://``, through psycopg 3) is what several nodes share.
Each process keeps a connection pool; migrations and the change log take
advisory locks (see :func:`migrate` and :func:`serialize_appends`), and
background jobs are claimed with :func:`lease`, so that nodes on one database
act as one archive.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError

from dicomhub.errors import IndexUnavailable

__all__ = [
    "connect_engine",
    "is_postgresql",
    "lease",
    "migrate",
    "normalise_url",
    "read",
    "read_statements",
    "schema_is_current",
    "serialize_appends",
    "write",
]

_MIGRATIONS = Path(__file__).with_name("migrations")
_WRITE = "dicomhub_write"
# A SQLite connection whose statements each run on their own (no BEGIN): see read_statements.
_STATEMENTS = "dicomhub_statements"
# Advisory lock keys (one 64-bit space per database, shared with nothing else
# of ours): schema migration, and appends to the change log.
_MIGRATE_LOCK = 0x6469636F6D687562  # "dicomhub"
_APPEND_LOCK = 0x6469636F6D686362
# A pooled PostgreSQL connection idle this long (seconds) is tested before it is used
# again (see _ping_when_idle).
PING_AFTER_IDLE = 1.0
_IDLE_SINCE = "dicomhub_idle_since"


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean PostgreSQL through psycopg 3.

    SQLAlchemy's bare ``postgresql://`` would pick psycopg2, which dicomhub
    does not ship.
    """
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_postgresql(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "postgresql"


def connect_engine(
    url: str, pool_size: int = 8, max_overflow: int = 16, *, busy_timeout: float = 60.0
) -> Engine:
    """Create the engine for ``url`` with dicomhub's per-dialect settings.

    On SQLite a write waits up to ``busy_timeout`` seconds for another
    connection's lock, then fails (IndexUnavailable). On PostgreSQL every
    process of a node keeps up to ``pool_size`` idle connections (plus
    ``max_overflow`` under load); ``max_connections`` of the server must cover
    nodes x processes x (pool_size + max_overflow).
    """
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": busy_timeout, "check_same_thread": False},
            pool_size=8,
            max_overflow=32,
        )
        _configure_sqlite(engine, busy_timeout)
        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        # A node outlives database restarts and fail-overs: test a pooled connection
        # that sat idle before use (_ping_when_idle), and renew connections every half hour.
        pool_recycle=1800,
        connect_args={"application_name": "dicomhub", "connect_timeout": 10},
    )
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Test a pooled connection before use when it sat idle for :data:`PING_AFTER_IDLE`.

    SQLAlchemy's ``pool_pre_ping`` tests every checkout: a round trip per checkout,
    and a store checks out two (its lookup and its transaction), about a fifth of
    its round trips. A connection that was in use a moment ago needs no test: were
    the server gone since, its first statement fails as a disconnect, which fails
    that one request and makes SQLAlchemy renew every connection of the pool
    checked out before, as pre-ping would have. A failed test here makes the pool
    take another connection (DisconnectionError), so the caller never sees it.
    """
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since < PING_AFTER_IDLE:
            return  # new, or used a moment ago
        try:
            dialect.do_ping(dbapi_conn)
        except Exception as exc:  # any failure: the connection cannot be trusted
            raise DisconnectionError(f"pooled connection failed its test: {exc}") from exc


def _configure_sqlite(engine: Engine, busy_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite (it would otherwise
        # issue a deferred BEGIN itself) so that writers use BEGIN IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={max(0, int(busy_timeout * 1000))}")
        # DICOM matching is case-sensitive except for PN, which is matched on
        # a case-folded column; SQLite's LIKE folds ASCII case by default.
        cur.execute("PRAGMA case_sensitive_like=ON")
        cur.execute("PRAGMA cache_size=-32000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get(_STATEMENTS, False):
            return  # pysqlite runs each statement in its own implicit transaction
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_WRITE, False) else "BEGIN")


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


@contextlib.contextmanager
def read_statements(engine: Engine) -> Iterator[Connection]:
    """Reads that need no shared snapshot: each statement runs on its own, which saves
    BEGIN and COMMIT (round trips on PostgreSQL, where it runs in autocommit; on SQLite
    two statements of the hot path of every store). A reader that needs several
    statements to agree uses :func:`read`."""
    # Not SQLAlchemy's AUTOCOMMIT on SQLite: pysqlite's reset on return to the pool
    # would set isolation_level to "" again, and pysqlite would then open deferred
    # transactions by itself (see _configure_sqlite).
    options = {_STATEMENTS: True} if not is_postgresql(engine) else {"isolation_level": "AUTOCOMMIT"}
    try:
        with engine.connect().execution_options(**options) as conn:
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

    Several processes may start at once: on SQLite a file lock in ``lock_dir``
    (the data dir) makes them migrate one after the other; on PostgreSQL,
    where the nodes share the database but not a data dir, a transaction-level
    advisory lock does (DDL is transactional there, so a waiting node then
    finds the schema current and does nothing).
    """
    lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if lock_dir is not None and not is_postgresql(engine):
        lock = _file_lock(Path(lock_dir) / ".migrate.lock")
    try:
        with lock, engine.begin() as conn:
            if is_postgresql(conn):
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _signed(_MIGRATE_LOCK)})
            command.upgrade(_alembic_config(conn), "head")
    except SQLAlchemyError as exc:
        raise IndexUnavailable(f"index migration failed: {exc.__class__.__name__}: {exc}") from exc


def serialize_appends(conn: Connection) -> None:
    """Make this write transaction's change log rows and instance keys commit in key order.

    Readers page through the change log (and workers through instance pks)
    by "greater than the last key seen". On PostgreSQL, keys come from
    sequences when rows are inserted, not when they commit: without this, a
    transaction holding key 10 could commit after one holding key 11 and a
    reader that saw 11 would skip 10 for ever. Every transaction that appends
    takes one transaction-level advisory lock first (before any other write,
    so that it never waits for it while holding row locks), so appends are
    serial across nodes from that point to the commit; group commit keeps
    the cost to one lock per batch: once the transaction itself (not a
    savepoint, whose rollback would release it) holds the lock, further calls
    send nothing. SQLite's write transactions are serial already
    (``BEGIN IMMEDIATE``).
    """
    if not is_postgresql(conn):
        return
    root = conn.get_transaction()
    nested = conn.in_nested_transaction()
    if root is not None and conn.info.get(_APPEND_LOCKED) is root:
        return
    conn.execute(_APPEND_LOCK_SQL, {"k": _signed(_APPEND_LOCK)})
    if not nested:
        # Remembered per transaction object: the next transaction on this
        # connection is another object and takes the lock again.
        conn.info[_APPEND_LOCKED] = root


_APPEND_LOCK_SQL = text("SELECT pg_advisory_xact_lock(:k)")
_APPEND_LOCKED = "dicomhub_append_locked"


@contextlib.contextmanager
def lease(engine: Engine, name: str) -> Iterator[bool]:
    """Claim the background job ``name`` for this process while the block runs.

    Yields True when this process holds the claim, False when another process
    (another node) does: the caller then skips its turn. On PostgreSQL the
    claim is a session-level advisory lock on a connection held for the
    block, so it is released when the block ends or the process dies. On
    SQLite only one node exists and its background process is the only one
    running jobs, so the claim is always granted.
    """
    if not is_postgresql(engine):
        yield True
        return
    key = _signed(_name_key(name))
    try:
        conn = engine.connect()
    except SQLAlchemyError as exc:
        raise IndexUnavailable(f"cannot claim {name}: {exc}") from exc
    try:
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        conn.commit()
        try:
            yield got
        finally:
            if got:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
                except SQLAlchemyError:
                    # Never pool a connection that may still hold the claim.
                    conn.invalidate()
    finally:
        conn.close()


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(b"dicomhub-lease:" + name.encode()).digest()[:8], "big")


def _signed(key: int) -> int:
    """A 64-bit key as PostgreSQL's signed bigint."""
    return key - (1 << 64) if key >= (1 << 63) else key


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[object]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield fh
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
