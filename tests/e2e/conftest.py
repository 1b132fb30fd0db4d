"""Fixtures for the end-to-end tests: dicomhub servers, DCMTK storescp, data.

The server runs as a real subprocess (``dicomhub serve``) and is driven with the
DCMTK command line tools; see helpers.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parent.parent)
if _TESTS_DIR not in sys.path:  # make ``import datagen`` work in every import mode
    sys.path.insert(0, _TESTS_DIR)

from .helpers import (  # noqa: E402
    LIVE_SERVERS,
    DicomhubServer,
    ServerPool,
    StoreSCP,
    run_dcmtk,
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Attach the tail of every running server's log to a failing report."""
    report = yield
    if report.failed:
        for srv in list(LIVE_SERVERS):
            report.sections.append((f"dicomhub log {srv!r}", srv.log_tail(150)))
    return report


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    """Factory for servers that live for the whole test module."""
    pool = ServerPool(tmp_path_factory.mktemp("servers"))
    yield pool
    pool.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServerPool]:
    """Factory for servers that live for one test (policies, kill -9, ...)."""
    pool = ServerPool(tmp_path / "servers")
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def server(module_servers: ServerPool) -> DicomhubServer:
    """One default server (keep policy, no remote AEs) shared by a module."""
    return module_servers.start()


@pytest.fixture(scope="module")
def storescp_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., StoreSCP]]:
    """``storescp_factory(aet="STORESCP", implicit_only=False, extra=())`` -> running StoreSCP."""
    base = tmp_path_factory.mktemp("storescp")
    started: list[StoreSCP] = []

    def factory(aet: str = "STORESCP", implicit_only: bool = False, extra: Sequence[str] = ()) -> StoreSCP:
        n = len(started)
        scp = StoreSCP(
            base / f"out{n}", base / f"storescp{n}.log", aet=aet, implicit_only=implicit_only, extra=extra
        )
        started.append(scp.start())
        return scp

    yield factory
    for scp in started:
        scp.stop()


@pytest.fixture(scope="module")
def storescp(storescp_factory: Callable[..., StoreSCP]) -> StoreSCP:
    return storescp_factory()


@pytest.fixture(scope="session")
def dcmtk() -> Callable[..., tuple[int, str]]:
    """The run_dcmtk helper as a fixture."""
    return run_dcmtk
