"""Session-wide fixtures: the throw-away PostgreSQL cluster (started only when a test asks)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import backends
from tests.pgcluster import PostgresCluster


@pytest.fixture(scope="session", autouse=True)
def _backend_shutdown() -> Iterator[None]:
    """Stop whatever backend servers the session started, when it ends."""
    yield
    backends.shutdown()


@pytest.fixture(scope="session")
def pg_cluster() -> PostgresCluster:
    """The shared throw-away PostgreSQL cluster."""
    return backends.postgres()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> str:
    """A fresh empty database on the cluster (its ``postgresql://`` URL)."""
    return pg_cluster.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty index on each dialect: SQLite in a temp dir, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('index') / 'index.sqlite'}"
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    return cluster.create_database()
