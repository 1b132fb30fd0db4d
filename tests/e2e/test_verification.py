"""C-ECHO and basic server lifecycle."""

from __future__ import annotations

import time
from pathlib import Path

import datagen
import pytest

from .helpers import DicomhubServer, ServerPool, descendant_pids, echo, store_ok, study_instance_count

pytestmark = [pytest.mark.e2e, pytest.mark.backend_neutral]


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


def test_workers_end_with_a_killed_server(servers: ServerPool) -> None:
    """kill -9 of the server process alone must not leave workers serving the port."""
    import os
    import signal
    import time

    srv = servers.start()
    assert srv.proc is not None
    # Its children (the fork server, the resource tracker) and theirs (the workers).
    workers = descendant_pids(srv.proc.pid)
    assert len(workers) >= 3, f"dicomhub serve runs its DIMSE side in worker processes: {workers}"
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.1)
    alive = [p for p in workers if Path(f"/proc/{p}").exists()]
    assert not alive, f"workers {alive} outlived the server"
    # The port is free again: a new server on the same data dir and port starts.
    srv.start()
    rc, out = echo(srv)
    assert rc == 0, out


def test_association_limit_rejects_transiently(servers: ServerPool) -> None:
    """Past --max-associations a peer is told to come back later (transient, local limit)."""
    from pynetdicom import AE

    srv = servers.start(args=["--max-associations", "1", "--workers", "1"])
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    # The harness's readiness probe (a bare connect) counts against the
    # limit until its thread has noticed the close: wait for that slot.
    deadline = time.monotonic() + 10
    held = ae.associate("127.0.0.1", srv.dimse_port, ae_title=srv.aet)
    while not held.is_established and time.monotonic() < deadline:
        time.sleep(0.2)
        held = ae.associate("127.0.0.1", srv.dimse_port, ae_title=srv.aet)
    try:
        assert held.is_established
        rc, out = echo(srv)
        assert rc != 0, out
        assert "Local Limit Exceeded" in out or "local-limit-exceeded" in out.lower(), out
        assert "Transient" in out or "transient" in out, out
    finally:
        held.release()
    rc, out = echo(srv)
    assert rc == 0, out
