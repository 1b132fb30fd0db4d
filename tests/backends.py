"""Which index and blob store the tests run dicomhub on.

``DICOMHUB_TEST_BACKEND`` chooses:

``sqlite-file`` (default)
    SQLite in the server's data dir, blobs under it: nothing to set.
``postgres-s3``
    Every data dir the e2e helpers hand to a server or a CLI command gets its
    own database on one throw-away PostgreSQL cluster (tests/pgcluster.py)
    and its own bucket/prefix on one local S3-compatible server
    (tests/s3backend.py), through ``DICOMHUB_DATABASE_URL``,
    ``DICOMHUB_STORAGE_URL`` and the AWS variables of the process.

The cluster and the S3 server are started on first use and stopped by
:func:`shutdown` (the session fixture of tests/conftest.py), or at exit.
"""

from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path

from tests.pgcluster import PostgresCluster

__all__ = [
    "BACKEND",
    "POSTGRES_S3",
    "SQLITE_FILE",
    "backend_env",
    "postgres",
    "shutdown",
]

SQLITE_FILE = "sqlite-file"
POSTGRES_S3 = "postgres-s3"
BACKEND = os.environ.get("DICOMHUB_TEST_BACKEND", SQLITE_FILE)
if BACKEND not in (SQLITE_FILE, POSTGRES_S3):
    raise RuntimeError(f"DICOMHUB_TEST_BACKEND must be {SQLITE_FILE} or {POSTGRES_S3}, not {BACKEND!r}")

_lock = threading.Lock()
_cluster: PostgresCluster | None = None
# Resolved data dir -> the environment of its archive (one database and one
# storage prefix per data dir, so a restarted server finds its own archive).
_archives: dict[Path, dict[str, str]] = {}


def postgres() -> PostgresCluster:
    """The shared throw-away PostgreSQL cluster of this test process (started on first use)."""
    global _cluster
    with _lock:
        if _cluster is None:
            cluster = PostgresCluster()
            cluster.start()
            _cluster = cluster
            atexit.register(shutdown)
        return _cluster


def backend_env(data_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Environment variables that put the archive of ``data_dir`` on the chosen backend.

    Empty for sqlite-file. For postgres-s3 the first call for a data dir
    creates its database and storage prefix; later calls return the same.
    """
    if BACKEND == SQLITE_FILE:
        return {}
    key = Path(data_dir).resolve()
    with _lock:
        known = _archives.get(key)
    if known is not None:
        return dict(known)
    env = {"DICOMHUB_DATABASE_URL": postgres().create_database()}
    env.update(_storage_env(key))
    with _lock:
        env = _archives.setdefault(key, env)
    return dict(env)


def _storage_env(data_dir: Path) -> dict[str, str]:
    from tests import s3backend  # only the postgres-s3 backend needs the S3 server

    url, env = s3backend.fresh_storage(data_dir.name)
    return {"DICOMHUB_STORAGE_URL": url, **env}


def shutdown() -> None:
    """Stop the cluster (and the S3 server) if this process started them."""
    global _cluster
    with _lock:
        cluster, _cluster = _cluster, None
        _archives.clear()
    if cluster is not None:
        cluster.stop()
    if BACKEND == POSTGRES_S3:
        from tests import s3backend

        s3backend.stop_s3_server()
