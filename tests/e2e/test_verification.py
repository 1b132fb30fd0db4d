"""C-ECHO and basic server lifecycle."""

from __future__ import annotations

from pathlib import Path

import datagen
import pytest

from .helpers import DicomhubServer, ServerPool, echo, store_ok, study_instance_count

pytestmark = pytest.mark.e2e


def test_echoscu_succeeds(server: DicomhubServer) -> None:
    rc, out = echo(server)
    assert rc == 0, out
    assert "Received Echo Response (Success)" in out, out


def test_healthz_is_200(server: DicomhubServer) -> None:
    assert server.healthz() == 200


def test_configuration_from_environment(servers: ServerPool, tmp_path: Path) -> None:
    """DICOMHUB_* env vars mirror the flags (data dir, AE title, ports, host)."""
    srv = servers.start(aet="ENVHUB", use_env_config=True)
    rc, out = echo(srv)
    assert rc == 0, out
    ds = datagen.write_instance(tmp_path / "one.dcm", patient_id="ENV001")
    store_ok(srv, tmp_path / "one.dcm", expect=1)
    assert study_instance_count(srv.data_dir, str(ds.StudyInstanceUID)) == 1


def test_sigterm_stops_server(servers: ServerPool) -> None:
    srv = servers.start()
    rc = srv.stop(timeout=15)
    assert rc is not None and not srv.is_running()
    assert rc in (0, -15, 143), f"unexpected exit code after SIGTERM: {rc}\n{srv.log_tail()}"
