"""Pooled PostgreSQL connections are tested before use only after sitting idle
(``dicomhub.index.engine._ping_when_idle``): a connection whose server process went
away while it was idle is replaced without the caller seeing an error, and one used
a moment ago costs no test round trip."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, text

from dicomhub.index import engine as engines


@pytest.fixture
def pg_engine(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setattr(engines, "PING_AFTER_IDLE", 0.2)
    engine = engines.connect_engine(pg_url, pool_size=1, max_overflow=0)
    yield engine  # type: ignore[misc]
    engine.dispose()


def _backend_pid(engine: Engine) -> int:
    with engines.read_statements(engine) as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    seen: list[object] = []
    real = engine.dialect.do_ping

    def counting(dbapi_conn: object) -> bool:
        seen.append(dbapi_conn)
        return real(dbapi_conn)

    monkeypatch.setattr(engine.dialect, "do_ping", counting)
    return seen


def test_a_connection_that_died_while_idle_is_replaced_unseen(
    pg_engine: Engine, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _backend_pid(pg_engine)
    pings = _pings(pg_engine, monkeypatch)
    # The pooled connection's server process ends (a restart, a fail-over, an idle kill).
    other = engines.connect_engine(pg_url)
    try:
        with engines.read_statements(other) as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": first}).scalar_one()
    finally:
        other.dispose()
    time.sleep(0.3)

    second = _backend_pid(pg_engine)  # no error: the test failed, the pool reconnected

    assert second != first
    assert len(pings) == 1


def test_a_connection_used_a_moment_ago_is_not_tested(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _backend_pid(pg_engine)
    pings = _pings(pg_engine, monkeypatch)
    for _ in range(5):
        _backend_pid(pg_engine)
    assert pings == []
    time.sleep(0.3)
    _backend_pid(pg_engine)
    assert len(pings) == 1
