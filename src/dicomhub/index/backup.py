"""Consistent copies of the index, and putting one back (``dicomhub backup`` / ``restore``).

SQLite
    The online backup API (:meth:`sqlite3.Connection.backup`) copies every
    page in one step while holding one read transaction. In WAL mode a reader
    never blocks the writers, so the server keeps storing, and the copy is the
    database as of one commit. The copy is switched to rollback-journal mode
    so that it is one self-contained file.

PostgreSQL
    ``pg_dump`` (custom format) runs on a snapshot exported from a
    ``REPEATABLE READ`` transaction of ours (``pg_export_snapshot`` and
    ``pg_dump --snapshot``); the blob rows of the manifest are read in that
    same transaction, so the dump and the manifest describe the same instant.
    ``pg_restore`` puts the dump back. The tools are found on ``PATH`` or
    under ``/usr/lib/postgresql/*/bin`` (the newest version), where Debian
    installs them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, MetaData, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from dicomhub.errors import IndexUnavailable
from dicomhub.index import engine as engines
from dicomhub.index.blobs import BlobRecord, referenced_in
from dicomhub.index.schema import instance, series, study

__all__ = [
    "POSTGRESQL_DUMP",
    "SQLITE_COPY",
    "IndexBackup",
    "drop_all_tables",
    "instance_count",
    "libpq_url",
    "pg_tool",
    "postgresql_snapshot",
    "restore_postgresql",
    "restore_sqlite",
    "schema_revision",
    "sqlite_path",
    "sqlite_snapshot",
    "sqlite_snapshot_blobs",
]

# pg_dump / pg_restore of a large archive's index take minutes, not hours.
_PG_TOOL_TIMEOUT = 6 * 3600.0


def sqlite_path(index_url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, or None for another database."""
    url = make_url(engines.normalise_url(index_url))
    if url.get_backend_name() != "sqlite":
        return None
    if not url.database or url.database == ":memory:":
        raise IndexUnavailable(f"{index_url}: an in-memory SQLite index cannot be backed up or restored")
    return Path(url.database)


def libpq_url(index_url: str) -> tuple[str, dict[str, str]]:
    """The URL as libpq tools take it (``postgresql://``, without SQLAlchemy's driver name),
    and the environment they need: the password goes in ``PGPASSWORD``, not on a command
    line that every user of the host can read in ``ps``."""
    url = make_url(engines.normalise_url(index_url))
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    # URL.set() ignores None; the namedtuple's _replace removes the password.
    bare = url._replace(drivername="postgresql", password=None)
    return bare.render_as_string(hide_password=False), env


def pg_tool(name: str) -> str:
    """The path of PostgreSQL client tool ``name`` (``pg_dump``, ``pg_restore``).

    Raises
    ------
    IndexUnavailable
        When the tool is neither on ``PATH`` nor under ``/usr/lib/postgresql/*/bin``.
    """
    found = shutil.which(name)
    if found:
        return found
    # Debian keeps the versioned tools off PATH (pg_wrapper picks one); the
    # newest can read dumps of and restore into every older server.
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise IndexUnavailable(
            f"{name} not found on PATH nor under /usr/lib/postgresql/*/bin: install the PostgreSQL "
            "client tools (Debian: postgresql-client)"
        )
    return candidates[-1]


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    _fsync_file(path)  # a folder opened read-only can be fsync'ed on Linux


def sqlite_snapshot(database: Path, dest: Path) -> None:
    """Copy the SQLite index ``database`` to ``dest`` as of one commit, while it is in use.

    ``dest`` is written under a temporary name, fsync'ed and renamed.

    Raises
    ------
    IndexUnavailable
        When the database cannot be read or the copy written.
    """
    if not database.is_file():
        raise IndexUnavailable(f"no index at {database}")
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        # Read-only: the backup must never create or change anything of the archive's.
        src = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=60.0)
        try:
            dst = sqlite3.connect(tmp)
            try:
                # pages=-1: every page in one step, under one read transaction.
                # Copying in several steps would restart whenever a writer
                # commits in between, and never finish on a busy server.
                src.backup(dst, pages=-1)
                dst.execute("PRAGMA journal_mode=DELETE")
                dst.commit()
            finally:
                dst.close()
        finally:
            src.close()
        _fsync_file(tmp)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except (sqlite3.Error, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise IndexUnavailable(f"cannot copy the index {database}: {exc}") from exc


@contextlib.contextmanager
def _sqlite_engine(database: Path) -> Iterator[Engine]:
    from sqlalchemy import create_engine

    # A plain engine: dicomhub's own would switch the copy to WAL mode.
    eng = create_engine(f"sqlite:///{database}")
    try:
        yield eng
    finally:
        eng.dispose()


def sqlite_snapshot_blobs(snapshot: Path) -> tuple[str | None, list[BlobRecord]]:
    """The schema revision and every blob the rows of a copied SQLite index refer to."""
    with _sqlite_engine(snapshot) as eng:
        try:
            with eng.connect() as conn:
                revision = _revision(conn)
                return revision, list(referenced_in(conn))
        except SQLAlchemyError as exc:
            raise IndexUnavailable(f"cannot read the index copy {snapshot}: {exc}") from exc


def _revision(conn: object) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()  # type: ignore[arg-type]


@contextlib.contextmanager
def postgresql_snapshot(
    engine: Engine, index_url: str, dump: Path
) -> Iterator[tuple[str | None, Iterator[BlobRecord]]]:
    """Dump the PostgreSQL index to ``dump`` and yield (revision, blob rows) of the same snapshot.

    The rows are read inside the transaction whose snapshot ``pg_dump`` used;
    consume them inside the ``with`` block.

    Raises
    ------
    IndexUnavailable
        When the database cannot be reached or ``pg_dump`` fails.
    """
    tool = pg_tool("pg_dump")
    tmp = dump.with_name(dump.name + ".tmp")
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                name = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
                dbname, env = libpq_url(index_url)
                proc = subprocess.run(
                    [tool, "--format=custom", "--no-owner", "--no-privileges", f"--snapshot={name}",
                     f"--file={tmp}", f"--dbname={dbname}"],
                    capture_output=True, text=True, check=False, timeout=_PG_TOOL_TIMEOUT, env=env,
                )  # fmt: skip
                if proc.returncode != 0:
                    raise IndexUnavailable(f"pg_dump failed ({proc.returncode}): {proc.stderr.strip()}")
                _fsync_file(tmp)
                os.replace(tmp, dump)
                _fsync_dir(dump.parent)
                yield _revision(conn), referenced_in(conn)
    except SQLAlchemyError as exc:
        raise IndexUnavailable(f"cannot take a snapshot of the index: {exc}") from exc
    except OSError as exc:
        raise IndexUnavailable(f"cannot write {dump}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def instance_count(engine: Engine) -> int:
    """Instances the index holds (0 for a database without dicomhub's tables)."""
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(instance.name):
                return 0
            return int(conn.execute(select(func.count()).select_from(instance)).scalar_one())
    except SQLAlchemyError as exc:
        raise IndexUnavailable(f"cannot read the index: {exc}") from exc


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision of the index (None before the first migration)."""
    with engine.connect() as conn:
        return _revision(conn)


def drop_all_tables(engine: Engine) -> None:
    """Remove every table of the database (a PostgreSQL restore target that is to be replaced)."""
    try:
        with engine.begin() as conn:
            meta = MetaData()
            meta.reflect(conn)
            meta.drop_all(conn)
    except SQLAlchemyError as exc:
        raise IndexUnavailable(f"cannot empty the target database: {exc}") from exc


def restore_sqlite(copy: Path, database: Path) -> None:
    """Put the SQLite index copy ``copy`` in place as ``database`` (replacing any file there).

    Raises
    ------
    IndexUnavailable
        When the file cannot be written.
    """
    tmp = database.with_name(database.name + ".restore")
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(copy, tmp)
        _fsync_file(tmp)
        # A WAL left by the replaced database would be replayed into the new one.
        for suffix in ("-wal", "-shm", "-journal"):
            database.with_name(database.name + suffix).unlink(missing_ok=True)
        os.replace(tmp, database)
        _fsync_dir(database.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise IndexUnavailable(f"cannot write the index {database}: {exc}") from exc


def restore_postgresql(dump: Path, index_url: str) -> None:
    """Load a ``pg_dump`` custom-format ``dump`` into the (empty) database of ``index_url``.

    One transaction: a dump that fails half-way leaves nothing behind.

    Raises
    ------
    IndexUnavailable
        When ``pg_restore`` fails.
    """
    dbname, env = libpq_url(index_url)
    proc = subprocess.run(
        [pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--single-transaction",
         "--exit-on-error", f"--dbname={dbname}", str(dump)],
        capture_output=True, text=True, check=False, timeout=_PG_TOOL_TIMEOUT, env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        raise IndexUnavailable(f"pg_restore failed ({proc.returncode}): {proc.stderr.strip()}")


SQLITE_COPY = "index.sqlite"
POSTGRESQL_DUMP = "index.pgdump"


class IndexBackup:
    """The index of one archive as a backup sees it: snapshot, emptiness, restore, upgrade."""

    def __init__(self, engine: Engine, index_url: str, lock_dir: Path) -> None:
        """``lock_dir``: the data dir (SQLite migrations lock a file there)."""
        self.engine = engine
        self.index_url = index_url
        self.lock_dir = lock_dir

    @property
    def kind(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return "postgresql" if engines.is_postgresql(self.engine) else "sqlite"

    def snapshot(self, dest: Path) -> tuple[str, str | None, list[BlobRecord]]:
        """Write a consistent copy of the index into folder ``dest``.

        Returns
        -------
        tuple
            The copy's file name in ``dest``, the schema revision, and every
            blob the copied rows refer to (read from the same snapshot).
        """
        if self.kind == "postgresql":
            with postgresql_snapshot(self.engine, self.index_url, dest / POSTGRESQL_DUMP) as (rev, rows):
                return POSTGRESQL_DUMP, rev, list(rows)  # read inside the snapshot
        database = sqlite_path(self.index_url)
        if database is None:  # pragma: no cover - kind says sqlite
            raise IndexUnavailable(f"{self.index_url} is not a SQLite file")
        sqlite_snapshot(database, dest / SQLITE_COPY)
        revision, records = sqlite_snapshot_blobs(dest / SQLITE_COPY)
        return SQLITE_COPY, revision, records

    def instance_count(self) -> int:
        """Instances the index holds now."""
        return instance_count(self.engine)

    def locate(self, sop_instance_uid: str) -> tuple[str, str, str] | None:
        """(study UID, series UID, blob key) of an indexed instance, or None."""
        stmt = (
            select(study.c.study_instance_uid, series.c.series_instance_uid, instance.c.blob_key)
            .select_from(instance.join(series, instance.c.series_pk == series.c.pk))
            .join(study, series.c.study_pk == study.c.pk)
            .where(instance.c.sop_instance_uid == sop_instance_uid)
        )
        with engines.read(self.engine) as conn:
            row = conn.execute(stmt).first()
        return None if row is None else (row[0], row[1], row[2])

    def restore(self, copy: Path) -> None:
        """Replace the index with ``copy`` (made by :meth:`snapshot` on the same kind of database)."""
        if self.kind == "postgresql":
            # A target that a server started once holds an empty schema; the
            # dump brings its own, so every table goes first.
            drop_all_tables(self.engine)
            restore_postgresql(copy, self.index_url)
            return
        database = sqlite_path(self.index_url)
        if database is None:  # pragma: no cover - kind says sqlite
            raise IndexUnavailable(f"{self.index_url} is not a SQLite file")
        # Pooled connections would keep the replaced file (and its WAL) open.
        self.engine.dispose()
        restore_sqlite(copy, database)

    def upgrade(self) -> None:
        """Apply the migrations newer than the copy (Alembic ``upgrade head``)."""
        self.engine.dispose()
        engines.migrate(self.engine, lock_dir=self.lock_dir)
