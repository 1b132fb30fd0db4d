"""Group commit: shared transactions, isolated failures."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from dicomhub.index.engine import connect_engine
from dicomhub.index.groupcommit import GroupCommitter


def test_concurrent_jobs_commit_and_a_failure_stays_isolated(tmp_path: Path) -> None:
    engine = connect_engine(f"sqlite:///{tmp_path / 'g.sqlite'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    committer = GroupCommitter(engine)
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        def job(conn: Connection) -> int:
            conn.execute(text("INSERT INTO t (k) VALUES (:k)"), {"k": k})
            if k == 7:
                raise ValueError("job 7 fails")
            return k

        barrier.wait()
        try:
            assert committer.run(job) == k
        except ValueError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with engine.connect() as conn:
        keys = sorted(r[0] for r in conn.exec_driver_sql("SELECT k FROM t"))
    assert keys == [k for k in range(16) if k != 7]
    assert [str(e) for e in errors] == ["job 7 fails"]


def test_single_failing_job_rolls_back(tmp_path: Path) -> None:
    engine = connect_engine(f"sqlite:///{tmp_path / 'g.sqlite'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    committer = GroupCommitter(engine)

    def job(conn: Connection) -> None:
        conn.execute(text("INSERT INTO t (k) VALUES (1)"))
        raise KeyError("nope")

    with pytest.raises(KeyError):
        committer.run(job)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 0


def test_a_batch_runs_without_savepoints_and_again_with_them_when_a_job_fails(tmp_path: Path) -> None:
    from sqlalchemy import event

    engine = connect_engine(f"sqlite:///{tmp_path / 'g.sqlite'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    committer = GroupCommitter(engine)
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cu, sql, *_a: sent.append(sql))
    runs: dict[int, int] = {}

    def job(k: int) -> Callable[[Connection], int]:
        def run(conn: Connection) -> int:
            runs[k] = runs.get(k, 0) + 1
            conn.execute(text("INSERT INTO t (k) VALUES (:k)"), {"k": k})
            if k == 12:
                raise ValueError("job 12 fails")
            return k

        return run

    assert committer.run_all([job(k) for k in (1, 2, 3)]) == [1, 2, 3]
    assert runs == {1: 1, 2: 1, 3: 1}
    assert not [sql for sql in sent if "SAVEPOINT" in sql]
    results = committer.run_all([job(k) for k in (11, 12, 13)])
    assert results[0] == 11 and results[2] == 13
    assert isinstance(results[1], ValueError)
    # The first try (no savepoints) stopped at job 12 and was rolled back whole, then
    # each job ran in its own savepoint.
    assert runs == {1: 1, 2: 1, 3: 1, 11: 2, 12: 2, 13: 1}
    assert [sql for sql in sent if "SAVEPOINT" in sql]
    with engine.connect() as conn:
        keys = sorted(r[0] for r in conn.exec_driver_sql("SELECT k FROM t"))
    assert keys == [1, 2, 3, 11, 13]
