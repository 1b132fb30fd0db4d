"""What several nodes on one PostgreSQL index rely on: migrations run once under a
lock, the change log is never read with a gap, a background job is claimed by
one node, and the same instance from two nodes ends as one row.

Each "node" is its own engine (its own connection pool), as in separate processes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, text

from dicomhub.index.engine import (
    connect_engine,
    lease,
    migrate,
    normalise_url,
    schema_is_current,
    serialize_appends,
)
from dicomhub.index.repository import AddResult, IndexRepository
from dicomhub.model.extract import extract_header
from dicomhub.model.records import InstanceHeader
from tests import datagen
from tests.pgcluster import PostgresCluster


class _Blob:
    def __init__(self, key: str) -> None:
        self.key = key
        self.size = 1
        self.sha256 = "0" * 64


def _header(sop: str, study: str, series: str, patient_id: str) -> InstanceHeader:
    ds = datagen.make_dataset(sop_uid=sop, study_uid=study, series_uid=series, patient_id=patient_id)
    return extract_header(ds)


@pytest.fixture
def engines(pg_url: str) -> Iterator[Callable[[], Engine]]:
    made: list[Engine] = []

    def make() -> Engine:
        engine = connect_engine(pg_url)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.dispose()


def test_postgresql_urls_use_psycopg3() -> None:
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("sqlite:///x") == "sqlite:///x"


def test_nodes_migrating_at_once_upgrade_once(engines: Callable[[], Engine]) -> None:
    nodes = [engines() for _ in range(4)]
    barrier = threading.Barrier(len(nodes))

    def upgrade(engine: Engine) -> None:
        barrier.wait()
        migrate(engine)

    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(upgrade, nodes))
    assert all(schema_is_current(e) for e in nodes)
    with nodes[0].connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1


@pytest.mark.parametrize("series_per_writer", [False, True], ids=["new-series", "known-series"])
def test_change_log_readers_never_skip_a_late_commit(
    engines: Callable[[], Engine], series_per_writer: bool
) -> None:
    """Readers page by ``seq > last seen`` while two nodes append: every row is seen,
    whether each store creates its series or goes into one the node knows (one statement)."""
    a, b = engines(), engines()
    migrate(a)
    nodes = [IndexRepository(a), IndexRepository(b)]
    per_writer, writers = 30, 6
    done = threading.Event()
    seen: list[int] = []

    def reader() -> None:
        last = 0
        while True:
            finished = done.is_set()
            for row in nodes[0].changes(since=last, limit=50):
                seen.append(int(row["seq"]))
                last = int(row["seq"])
            if finished:
                return

    def writer(n: int) -> None:
        repo = nodes[n % 2]
        study, same = datagen.uid(), datagen.uid()
        for i in range(per_writer):
            header = _header(datagen.uid(), study, same if series_per_writer else datagen.uid(), f"W{n}")
            repo.add_instance(header, _Blob(f"w{n}-{i}"), f"{n}-{i}", None, False)

    read_thread = threading.Thread(target=reader)
    read_thread.start()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(writer, range(writers)))
    done.set()
    read_thread.join(30)
    with a.connect() as conn:
        every = [int(s) for (s,) in conn.execute(text('SELECT seq FROM "change" ORDER BY seq'))]
    assert seen == every
    assert len(every) == writers * per_writer + writers * (2 + (per_writer if not series_per_writer else 1))


def test_a_background_job_is_claimed_by_one_node_at_a_time(engines: Callable[[], Engine]) -> None:
    a, b = engines(), engines()
    with lease(a, "header-worker") as mine:
        assert mine
        with lease(b, "header-worker") as theirs:
            assert not theirs
        with lease(b, "decode-check-worker") as other_job:
            assert other_job
    with lease(b, "header-worker") as theirs:
        assert theirs


def test_same_instance_on_two_nodes_at_once_is_one_row(engines: Callable[[], Engine]) -> None:
    a, b = engines(), engines()
    migrate(a)
    nodes = [IndexRepository(a), IndexRepository(b)]

    def add(n: int, header: InstanceHeader, barrier: threading.Barrier) -> AddResult:
        barrier.wait()
        blob = _Blob(f"{header.sop_instance_uid}-{n}")
        return nodes[n].add_instance(header, blob, "same-content", None, False).result

    for round_ in range(10):
        header = _header(datagen.uid(), datagen.uid(), datagen.uid(), f"P{round_}")
        barrier = threading.Barrier(2)
        with ThreadPoolExecutor(2) as pool:
            results = sorted(r.value for r in pool.map(add, range(2), [header] * 2, [barrier] * 2))
        assert results == ["created", "exists"]
    with a.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM instance")).scalar() == 10
        assert conn.execute(text("SELECT count(*) FROM study")).scalar() == 10
        assert conn.execute(text("SELECT count(*) FROM patient")).scalar() == 10


def test_cluster_runs_unprivileged(pg_cluster: PostgresCluster) -> None:
    assert pg_cluster.psql("SELECT current_setting('port')").strip() == str(pg_cluster.port)


def test_same_instance_in_a_known_series_on_two_nodes_is_one_row(engines: Callable[[], Engine]) -> None:
    """Both nodes know the series, so each stores with the one-statement insert; a UID
    sent to both at once is one row, and the counts and the change log count it once."""
    a, b = engines(), engines()
    migrate(a)
    nodes = [IndexRepository(a), IndexRepository(b)]
    study, series = datagen.uid(), datagen.uid()
    for n, node in enumerate(nodes):  # each node learns the series' keys
        node.add_instance(
            _header(datagen.uid(), study, series, "K"), _Blob(f"first-{n}"), f"f{n}", None, False
        )

    def add(n: int, header: InstanceHeader, barrier: threading.Barrier) -> AddResult:
        barrier.wait()
        return (
            nodes[n].add_instance(header, _Blob(f"{header.sop_instance_uid}-{n}"), "same", None, False).result
        )

    for _round in range(10):
        header = _header(datagen.uid(), study, series, "K")
        barrier = threading.Barrier(2)
        with ThreadPoolExecutor(2) as pool:
            results = sorted(r.value for r in pool.map(add, range(2), [header] * 2, [barrier] * 2))
        assert results == ["created", "exists"]
    with a.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM instance")).scalar() == 12
        assert conn.execute(text("SELECT number_of_instances FROM series")).scalar() == 12
        assert conn.execute(text("SELECT number_of_instances FROM study")).scalar() == 12
        created = "SELECT count(*) FROM change WHERE level = 'IMAGE' AND change_type = 'created'"
        assert conn.execute(text(created)).scalar() == 12


def test_the_append_lock_is_taken_once_per_transaction(engines: Callable[[], Engine]) -> None:
    from sqlalchemy import event

    engine = engines()
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cu, sql, *_a: sent.append(sql))
    with engine.begin() as conn:
        serialize_appends(conn)
        serialize_appends(conn)
        savepoint = conn.begin_nested()
        serialize_appends(conn)  # held by the transaction already
        savepoint.rollback()
    with engine.begin() as conn:
        savepoint = conn.begin_nested()
        serialize_appends(conn)
        savepoint.rollback()  # released with the savepoint: taken again
        serialize_appends(conn)
        serialize_appends(conn)
    assert sum("pg_advisory_xact_lock" in sql for sql in sent) == 3
