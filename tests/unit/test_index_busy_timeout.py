"""SQLite: a write waits ``busy_timeout`` for another connection's lock, then fails clearly."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from dicomhub.errors import IndexUnavailable
from dicomhub.index import engine as engines


def test_a_locked_index_fails_writes_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    engine = engines.connect_engine(f"sqlite:///{path}", busy_timeout=0.3)
    try:
        with engines.write(engine) as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(IndexUnavailable, match="locked"):
            with engines.write(engine) as conn:
                conn.execute(text("INSERT INTO t VALUES (1)"))
        waited = time.monotonic() - started
        assert 0.25 <= waited < 20, waited
        holder.execute("COMMIT")
        holder.close()
        with engines.write(engine) as conn:
            conn.execute(text("INSERT INTO t VALUES (2)"))
        with engines.read(engine) as conn:
            assert conn.execute(text("SELECT x FROM t")).scalars().all() == [2]
    finally:
        engine.dispose()
