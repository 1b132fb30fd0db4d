"""--known-aes-only: only AEs configured with --remote-ae may associate."""

from __future__ import annotations

from pathlib import Path

import datagen
import pytest

from .helpers import HOST, DicomhubServer, ServerPool, find, run_dcmtk, store, store_ok

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def strict(module_servers: ServerPool) -> DicomhubServer:
    return module_servers.start(
        args=["--known-aes-only"], remote_aes={"KNOWNAE": (HOST, 11112), "OTHERKNOWN": (HOST, 11113)}
    )


def echo_as(server: DicomhubServer, calling: str) -> tuple[int, str]:
    return run_dcmtk(
        "echoscu", "-v", "-aet", calling, "-aec", server.aet, HOST, str(server.dimse_port), timeout=30
    )


@pytest.mark.parametrize("calling", ["KNOWNAE", "OTHERKNOWN"])
def test_known_ae_is_accepted(strict: DicomhubServer, calling: str) -> None:
    rc, out = echo_as(strict, calling)
    assert rc == 0, out
    assert "Association Accepted" in out, out


@pytest.mark.parametrize("calling", ["STRANGER", "KNOWNAE2", "KNOWN"])
def test_unknown_ae_is_refused(strict: DicomhubServer, calling: str) -> None:
    rc, out = echo_as(strict, calling)
    assert rc != 0, out
    assert "Association Rejected" in out, out
    assert "Received Echo Response" not in out


def test_unknown_ae_cannot_store_or_find(strict: DicomhubServer, tmp_path: Path) -> None:
    ds = datagen.write_instance(tmp_path / "in" / "x.dcm", rows=16, cols=16)
    res = store(strict, tmp_path / "in", calling="STRANGER")
    assert res.returncode != 0 and not res.statuses, res.output[-2000:]
    assert "Association Rejected" in res.output
    rc, out = run_dcmtk(
        "findscu", "-S", "-aet", "STRANGER", "-aec", strict.aet, "-k", "QueryRetrieveLevel=STUDY",
        "-k", "StudyInstanceUID", HOST, str(strict.dimse_port),
    )  # fmt: skip
    assert rc != 0 and "Association Rejected" in out, out
    # the known AE can store and find it
    store_ok(strict, tmp_path / "in", calling="KNOWNAE", expect=1)
    rsp = find(
        strict, "STUDY", {"StudyInstanceUID": str(ds.StudyInstanceUID)}, tmp_path / "f", calling="KNOWNAE"
    )
    assert len(rsp) == 1


def test_without_flag_any_ae_is_accepted(server: DicomhubServer) -> None:
    rc, out = echo_as(server, "STRANGER")
    assert rc == 0, out
