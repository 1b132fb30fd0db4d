"""Bad input must be refused cleanly; the server stays up and earlier data
stays intact."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import datagen
import pytest
from pydicom.dataset import Dataset

from .helpers import (
    HOST,
    DicomhubServer,
    ServerPool,
    assert_alive,
    assert_same_instances,
    get,
    is_contract_failure,
    is_failure,
    ls_json,
    move,
    pyn_associate,
    pyn_store,
    read_dir,
    store,
    store_ok,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def baseline(server: DicomhubServer, tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    src = tmp_path_factory.mktemp("baseline")
    series = datagen.write_ct_series(src, 3, rows=16, cols=16, patient_id="BASE" + datagen.uid()[-6:])
    store_ok(server, src, expect=3)
    return series


@pytest.fixture(scope="module")
def victim(
    module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory
) -> tuple[DicomhubServer, list[Dataset]]:
    """A server of its own with one stored instance, for the tests that may wreck it
    (not the shared ``server``, whose baseline the other tests check).

    One for the module, not one per test: every test ends by checking that this
    server is alive and still serves its instance, so a payload that wrecks it
    fails that test (and, since nothing repairs it, the ones after it).
    """
    src = tmp_path_factory.mktemp("victim")
    series = datagen.write_ct_series(src, 1, rows=16, cols=16)
    srv = module_servers.start("victim")
    store_ok(srv, src, expect=1)
    return srv, series


def assert_intact(server: DicomhubServer, baseline: list[Dataset], tmp_path: Path) -> None:
    assert_alive(server)
    out = tmp_path / "intact"
    res = get(server, "STUDY", {"StudyInstanceUID": str(baseline[0].StudyInstanceUID)}, out)
    assert res.returncode == 0, res.output[-3000:]
    assert_same_instances(read_dir(out), baseline)


def study_uids_and_instance_count(server: DicomhubServer) -> tuple[set[str], int]:
    """Both from one ``dicomhub ls`` (each is a process start, about a second)."""
    rows = ls_json(server.data_dir, "study")
    uids = {str(r["StudyInstanceUID"]) for r in rows}
    return uids, sum(int(r["NumberOfStudyRelatedInstances"]) for r in rows)  # type: ignore[call-overload]


def all_study_uids(server: DicomhubServer) -> set[str]:
    return study_uids_and_instance_count(server)[0]


def all_instance_count(server: DicomhubServer) -> int:
    return study_uids_and_instance_count(server)[1]


BAD_WRITERS: dict[str, Callable[..., object]] = {
    "truncated": datagen.write_truncated,
    "missing-sop-instance-uid": datagen.write_missing_sop_instance_uid,
    "missing-study-uid": datagen.write_missing_study_uid,
    "dotdot-sop-uid": datagen.write_dotdot_uid,
    "long-sop-uid": datagen.write_long_uid,
}


@pytest.fixture
def allow_long_uids(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom refuses to *send* UIDs > 64 chars; switch that check off so
    the server gets to see one."""
    import pynetdicom._config

    monkeypatch.setitem(pynetdicom._config.VALIDATORS, "UI", lambda value: (True, ""))


@pytest.mark.parametrize("kind", list(BAD_WRITERS))
def test_bad_object_is_refused(
    server: DicomhubServer, baseline: list[Dataset], tmp_path: Path, kind: str, allow_long_uids: None
) -> None:
    path = tmp_path / "bad" / f"{kind}.dcm"
    study_uid = datagen.uid()
    ds = BAD_WRITERS[kind](path, study_uid=study_uid, patient_id="BAD" + study_uid[-6:])
    assert isinstance(ds, Dataset)
    before = all_instance_count(server)

    # 1. DCMTK storescu: either refuses to send it or the server refuses it
    res = store(server, path)
    sent = [st for st in res.statuses.values()]
    assert all(is_failure(st) for st in sent), (
        f"storescu stored a bad object: {res.statuses}\n{res.output[-3000:]}"
    )
    assert_alive(server)

    # 2. pynetdicom sends the raw file (data set bytes as they are in the file)
    t0 = time.monotonic()
    results = pyn_store(server, [path], dimse_timeout=15)
    elapsed = time.monotonic() - t0
    assert len(results) == 1
    _uid, status, _comment = results[0]
    if kind in ("truncated", "long-sop-uid"):
        # An undecodable data set or a request whose Affected SOP Instance UID
        # is not a valid UI value: a failure status, or the server aborts the
        # association promptly (no response, but no hang either).
        assert status is None or is_failure(status), f"0x{status:04X}"
        assert status is not None or elapsed < 10, f"no response for {elapsed:.1f}s: server hung"
    else:
        assert is_contract_failure(status), (
            f"expected a 0xA9xx/0xCxxx failure, got {status if status is None else hex(status)}"
        )

    uids, count = study_uids_and_instance_count(server)
    assert study_uid not in uids
    assert count == before
    assert_intact(server, baseline, tmp_path)


def test_dotdot_uid_writes_nothing_outside_data_dir(server: DicomhubServer, tmp_path: Path) -> None:
    bad_uid = datagen.dotdot_uid()
    tail = bad_uid.rsplit("/", 1)[-1]
    with datagen.no_validation():
        ds = datagen.make_dataset(sop_uid=bad_uid, rows=16, cols=16)
    results = pyn_store(server, [ds])
    assert is_contract_failure(results[0][1]), results
    root = server.data_dir.parent.parent  # the whole server pool dir
    leaked = [
        p for p in root.rglob("*")
        if tail in p.name and server.data_dir not in p.parents
    ]  # fmt: skip
    assert not leaked, leaked
    assert not Path("/etc", tail).exists()


def test_dataset_uid_must_match_command_uid(
    server: DicomhubServer, baseline: list[Dataset], tmp_path: Path
) -> None:
    """Data set names a SOP Instance UID other than the C-STORE request's
    Affected SOP Instance UID: must not be stored under either silently
    mismatched identity (a failure status is expected)."""
    ds = datagen.make_dataset(rows=16, cols=16, patient_id="MISM" + datagen.uid()[-6:])
    # pynetdicom takes the Affected SOP Instance UID from the file meta
    ds.file_meta.MediaStorageSOPInstanceUID = datagen.uid()
    path = datagen.write_part10_raw(tmp_path / "m.dcm", ds)
    results = pyn_store(server, [path])
    status = results[0][1]
    assert is_failure(status), f"mismatched UIDs accepted: {status if status is None else hex(status)}"
    assert_intact(server, baseline, tmp_path)


def test_unknown_move_destination(server: DicomhubServer, baseline: list[Dataset]) -> None:
    res = move(server, "NOSUCHAE", "STUDY", {"StudyInstanceUID": str(baseline[0].StudyInstanceUID)})
    assert res.statuses(), f"no C-MOVE response:\n{res.output[-3000:]}"
    assert res.statuses()[-1] == 0xA801, (
        f"final status {[hex(s) for s in res.statuses()]}\n{res.output[-3000:]}"
    )
    assert_alive(server)


def _send_raw(port: int, payload: bytes, read: bool = True) -> bytes:
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(payload)
        if not read:
            return b""
        s.settimeout(3)
        try:
            return s.recv(1024)
        except (TimeoutError, ConnectionResetError):
            return b""


@pytest.mark.parametrize(
    "payload",
    [
        os.urandom(4096),
        b"\x00" * 64,
        struct.pack(">BBI", 0x01, 0x00, 0xFFFFFFF0) + b"\x00\x01" + os.urandom(200),  # huge A-ASSOCIATE-RQ
        struct.pack(">BBI", 0x04, 0x00, 0x00000100) + os.urandom(64),  # P-DATA before association, short
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["random", "zeros", "huge-pdu-length", "pdata-no-assoc", "http"],
)
def test_garbage_on_dimse_port(
    victim: tuple[DicomhubServer, list[Dataset]], tmp_path: Path, payload: bytes
) -> None:
    srv, data = victim
    _send_raw(srv.dimse_port, payload, read=False)
    _send_raw(srv.dimse_port, payload, read=True)
    assert_intact(srv, data, tmp_path)


def test_many_connections_closed_immediately(
    victim: tuple[DicomhubServer, list[Dataset]], tmp_path: Path
) -> None:
    """50 connect-and-close (a port scan): the server must not keep a slot per
    dead connection; it accepts associations again within a few seconds."""
    srv, data = victim
    for _ in range(50):
        with socket.create_connection((HOST, srv.dimse_port), timeout=5):
            pass
    assert_intact(srv, data, tmp_path)


def test_only_unsupported_sop_class_is_not_accepted(
    server: DicomhubServer, baseline: list[Dataset], tmp_path: Path
) -> None:
    established, accepted, why = pyn_associate(server, ["1.2.3.4.5.6.7"])
    assert accepted == [], f"server accepted a made-up abstract syntax: {accepted}"
    assert not established or accepted == [], why
    assert_intact(server, baseline, tmp_path)


def test_unsupported_sop_class_with_storescu(
    server: DicomhubServer, baseline: list[Dataset], tmp_path: Path
) -> None:
    """A Part 10 file whose SOP class is made up: storescu cannot get a context."""
    ds = datagen.make_dataset(rows=16, cols=16)
    ds.SOPClassUID = "1.2.3.4.5.6.7"
    ds.file_meta.MediaStorageSOPClassUID = "1.2.3.4.5.6.7"
    datagen.write_dataset(tmp_path / "bogus.dcm", ds)
    res = store(server, tmp_path / "bogus.dcm")
    # storescu proposes the file's SOP class; the server must not accept it
    assert "No presentation context for" in res.output or res.returncode != 0, res.output[-3000:]
    assert str(ds.SOPInstanceUID) not in res.statuses, res.statuses
    assert str(ds.StudyInstanceUID) not in all_study_uids(server)
    assert_intact(server, baseline, tmp_path)


def test_wrong_called_ae_title(server: DicomhubServer, baseline: list[Dataset], tmp_path: Path) -> None:
    """Not in the contract as a must; whatever the server does with a wrong
    called AE title, it must stay up."""
    from .helpers import run_dcmtk

    run_dcmtk("echoscu", "-aec", "WRONGAE", HOST, str(server.dimse_port), timeout=30)
    assert_intact(server, baseline, tmp_path)
