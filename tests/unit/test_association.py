"""Tests of the association loop with Storage and Verification (dicomhub.dimse.association).

A tiny accept loop on 127.0.0.1:0 runs ``serve_association`` per connection;
it is driven by pynetdicom (always available), raw sockets (protocol edge
cases) and, in the ``e2e`` tests, by DCMTK's echoscu/storescu.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, build_context
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import AllStoragePresentationContexts

from dicomhub.dimse import messages as M
from dicomhub.dimse.association import serve_association
from dicomhub.dimse.pdu import ProtocolError
from dicomhub.dimse.requests import (
    AssociationConfig,
    AssociationInfo,
    StoreOutcome,
    StoreRequest,
)
from tests.unit.accept_loop import AcceptLoop

Verification = UID("1.2.840.10008.1.1")
StudyRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.2.1")
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
STORAGE = {str(cx.abstract_syntax): TRANSFER_SYNTAXES for cx in AllStoragePresentationContexts}


def make_config(**overrides: object) -> AssociationConfig:
    values: dict[str, object] = {
        "ae_title": "DICOMHUB",
        "storage_contexts": STORAGE,
        "acse_timeout": 5.0,
        "dimse_timeout": 5.0,
        "network_timeout": 10.0,
    }
    values.update(overrides)
    return AssociationConfig(**values)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# The test listener
# ---------------------------------------------------------------------------


class Listener(AcceptLoop):
    """Accept loop calling serve_association per connection, recording stores."""

    def __init__(self, config: AssociationConfig, refuse: frozenset[str] = frozenset()) -> None:
        self.config = config
        self.refuse = refuse
        self.status = 0x0000
        self.error_comment: str | None = None
        self.raise_in_store = False
        self.requests: list[StoreRequest] = []
        self.events: list[tuple[str, dict[str, object]]] = []
        super().__init__()

    def serve(self, sock: socket.socket, address: tuple[str, int]) -> None:
        serve_association(sock, address, self.config, self.on_store, self.accept, self.on_event)

    def on_store(self, request: StoreRequest) -> StoreOutcome:
        self.requests.append(request)
        if self.raise_in_store:
            raise RuntimeError("disk on fire")
        return StoreOutcome(self.status, self.error_comment)

    def accept(self, info: AssociationInfo) -> str | None:
        return "not welcome" if info.calling_ae_title in self.refuse else None

    def on_event(self, name: str, payload: dict[str, object]) -> None:
        self.events.append((name, payload))

    def event_names(self) -> list[str]:
        return [name for name, _ in self.events]

    def wait_for_event(self, name: str, count: int = 1, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.event_names().count(name) < count:
            assert time.monotonic() < deadline, f"no {name!r} event; got {self.event_names()}"
            time.sleep(0.01)



@pytest.fixture
def listen() -> Iterator[Callable[..., Listener]]:
    listeners: list[Listener] = []

    def start(**kwargs: object) -> Listener:
        config = kwargs.pop("config", None) or make_config()
        listener = Listener(config, **kwargs)  # type: ignore[arg-type]
        listeners.append(listener)
        return listener

    yield start
    for listener in listeners:
        listener.close()
        assert listener.errors == [], "serve_association raised"


# ---------------------------------------------------------------------------
# Helpers: data sets, DCMTK, pynetdicom, raw sockets
# ---------------------------------------------------------------------------


def make_ct(
    path: Path, transfer_syntax: str, rows: int = 64, columns: int = 64, seed: int = 0
) -> Dataset:
    """Write a small CT image (16-bit random pixels) to `path`; return it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.PatientName = "Fast^Path"
    ds.PatientID = "FP-1"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4096, size=rows * columns, dtype=np.uint16).tobytes()
    ds.save_as(
        path,
        enforce_file_format=True,
        implicit_vr=transfer_syntax == ImplicitVRLittleEndian,
        little_endian=True,
    )
    return ds


def decode(request: StoreRequest) -> Dataset:
    """Decode a received data set with its presentation context's transfer syntax."""
    implicit = request.transfer_syntax_uid == ImplicitVRLittleEndian
    return read_dataset(BytesIO(request.dataset), implicit, True)


def file_data_set_bytes(path: Path) -> bytes:
    """The bytes of a Part 10 file after its File Meta Information."""
    raw = path.read_bytes()
    # 128-byte preamble + "DICM", then (0002,0000) UL group length.
    assert raw[128:132] == b"DICM"
    group_length = struct.unpack_from("<I", raw, 132 + 8)[0]
    return raw[132 + 12 + group_length :]


def dcmtk(tool: str) -> str:
    """Path of a DCMTK tool (the venv also has pynetdicom apps of the same name)."""
    venv_bin = str(Path(sys.executable).parent)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or os.path.realpath(directory) == os.path.realpath(venv_bin):
            continue
        candidate = shutil.which(tool, path=directory)
        if candidate:
            return candidate
    pytest.skip(f"DCMTK {tool} not installed")


def run_dcmtk(tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TCP_NODELAY="1")  # Debian's DCMTK is 10-30x slower without it
    return subprocess.run(
        [dcmtk(tool), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def associate_rq_primitive(
    abstract_syntaxes: list[str],
    transfer_syntaxes: list[str] | None = None,
    calling: str = "RAWSCU",
    called: str = "DICOMHUB",
    max_pdu: int = 16384,
) -> A_ASSOCIATE:
    rq = A_ASSOCIATE()
    rq.application_context_name = UID("1.2.840.10008.3.1.1.1")
    rq.calling_ae_title = calling
    rq.called_ae_title = called
    contexts = []
    for index, uid in enumerate(abstract_syntaxes):
        context = build_context(uid, transfer_syntaxes or [ImplicitVRLittleEndian])
        context.context_id = 2 * index + 1
        contexts.append(context)
    rq.presentation_context_definition_list = contexts
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = UID("1.2.3.4")
    rq.user_information = [max_length, class_uid]
    return rq


def encode_rq(rq: A_ASSOCIATE) -> bytes:
    return A_ASSOCIATE_RQ(rq).encode()


def read_pdu(sock: socket.socket) -> bytes:
    """Read one whole PDU (header included) the way pynetdicom's DUL does."""
    header = recv_exact(sock, 6)
    length = struct.unpack(">I", header[2:])[0]
    return header + recv_exact(sock, length)


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def raw_associate(port: int, rq: A_ASSOCIATE) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(encode_rq(rq))
    return sock, read_pdu(sock)


def command_bytes(**elements: object) -> bytes:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, ds)
    body = fp.getvalue()
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def p_data(context_id: int, control: int, fragment: bytes) -> bytes:
    return (
        struct.pack(">BBI", 4, 0, len(fragment) + 6)
        + struct.pack(">IBB", len(fragment) + 2, context_id, control)
        + fragment
    )


def read_response(sock: socket.socket) -> Dataset:
    """Read a P-DATA-TF carrying one complete command set and decode it."""
    fragments = []
    while True:
        pdu = read_pdu(sock)
        assert pdu[0] == 0x04, f"expected P-DATA-TF, got PDU type {pdu[0]:#04x}"
        pos = 6
        while pos < len(pdu):
            length = struct.unpack_from(">I", pdu, pos)[0]
            control = pdu[pos + 5]
            assert control & 0x01
            fragments.append(pdu[pos + 6 : pos + 4 + length])
            pos += 4 + length
            if control & 0x02:
                return read_dataset(BytesIO(b"".join(fragments)), True, True)


def assert_listener_alive(listener: Listener) -> None:
    """Prove the listener still serves a normal association (pynetdicom echo)."""
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="DICOMHUB")
    assert assoc.is_established
    status = assoc.send_c_echo()
    assert status.Status == 0
    assoc.release()


# ---------------------------------------------------------------------------
# Command set codec
# ---------------------------------------------------------------------------


def test_response_encoding_decodes_with_pydicom() -> None:
    raw = M.encode_response(0x8001, 7, CTImageStorage, "1.2.3.45", 0xA900, "é" + "x" * 100)
    ds = read_dataset(BytesIO(raw), True, True)
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.CommandField == 0x8001
    assert ds.MessageIDBeingRespondedTo == 7
    assert ds.AffectedSOPClassUID == CTImageStorage
    assert ds.AffectedSOPInstanceUID == "1.2.3.45"
    assert ds.CommandDataSetType == 0x0101
    assert ds.Status == 0xA900
    assert len(ds.ErrorComment) == 64
    # A success never carries an error comment.
    ok = read_dataset(
        BytesIO(M.encode_response(0x8001, 7, CTImageStorage, "1.2.3", 0, "nope")),
        True,
        True,
    )
    assert "ErrorComment" not in ok


def test_command_parsing() -> None:
    raw = command_bytes(
        AffectedSOPClassUID=CTImageStorage,
        CommandField=0x0001,
        MessageID=42,
        Priority=0,
        CommandDataSetType=0x0000,
        AffectedSOPInstanceUID="1.2.3.4.5",
        MoveOriginatorApplicationEntityTitle="MOVER ",
        MoveOriginatorMessageID=9,
    )
    command = M.parse_command(raw)
    assert command.command_field == 1
    assert command.message_id == 42
    assert command.sop_class_uid == CTImageStorage
    assert command.sop_instance_uid == "1.2.3.4.5"
    assert command.has_data_set
    assert command.move_originator_ae_title == "MOVER"
    assert command.move_originator_message_id == 9
    with pytest.raises(ProtocolError):
        M.parse_command(raw[:-3])
    with pytest.raises(ProtocolError):
        M.parse_command(b"\x08\x00\x16\x00\x02\x00\x00\x00ab")  # group 0008


# ---------------------------------------------------------------------------
# pynetdicom as the requestor
# ---------------------------------------------------------------------------


def test_pynetdicom_storage_scu(listen: Callable[..., Listener], tmp_path: Path) -> None:
    listener = listen()
    datasets = [make_ct(tmp_path / f"{i}.dcm", ExplicitVRLittleEndian, seed=i) for i in range(3)]
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="DICOMHUB")
    assert assoc.is_established
    assert assoc.acceptor.implementation_class_uid == "1.2.826.0.1.3680043.10.1419.1"
    assert assoc.acceptor.implementation_version_name == "DICOMHUB_010"
    assert assoc.acceptor.maximum_length == 262144
    for ds in datasets:
        status = assoc.send_c_store(ds)
        assert status.Status == 0x0000
    assoc.release()
    listener.wait_for_event("released")

    assert [r.sop_instance_uid for r in listener.requests] == [ds.SOPInstanceUID for ds in datasets]
    for request, ds in zip(listener.requests, datasets, strict=True):
        assert request.calling_ae_title == "PYSCU"
        assert request.called_ae_title == "DICOMHUB"
        assert request.peer_host == "127.0.0.1"
        assert request.sop_class_uid == CTImageStorage
        assert request.transfer_syntax_uid == ExplicitVRLittleEndian
        assert request.move_originator_ae_title is None
        received = decode(request)
        assert received.SOPInstanceUID == ds.SOPInstanceUID
        assert received.PixelData == ds.PixelData
    assert listener.event_names() == ["associated", "store", "store", "store", "releasing", "released"]
    released = listener.events[-1][1]
    assert released["stores"] == 3


def test_pynetdicom_large_dataset_in_many_pdus(
    listen: Callable[..., Listener], tmp_path: Path
) -> None:
    # A 16 kB maximum makes pynetdicom split the 2 MiB data set into ~130 PDUs.
    listener = listen(config=make_config(maximum_pdu_size=16384))
    ds = make_ct(tmp_path / "big.dcm", ExplicitVRLittleEndian, rows=1024, columns=1024)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", listener.port)
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    (request,) = listener.requests
    assert decode(request).PixelData == ds.PixelData
    assert len(request.dataset) > 2 * 1024 * 1024


def test_pynetdicom_failure_status_and_comment(
    listen: Callable[..., Listener], tmp_path: Path
) -> None:
    listener = listen()
    listener.status = 0xA900
    listener.error_comment = "does not match SOP class " + "x" * 80
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", listener.port)
    status = assoc.send_c_store(make_ct(tmp_path / "a.dcm", ExplicitVRLittleEndian))
    assert status.Status == 0xA900
    assert status.ErrorComment == ("does not match SOP class " + "x" * 80)[:64]
    assoc.release()


def test_on_store_exception_answers_c210(
    listen: Callable[..., Listener], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listener = listen()
    listener.raise_in_store = True
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", listener.port)
    with caplog.at_level(logging.ERROR, logger="dicomhub.dimse"):
        assert assoc.send_c_store(make_ct(tmp_path / "a.dcm", ExplicitVRLittleEndian)).Status == (
            0xC210
        )
        # The association survives and serves the next store.
        listener.raise_in_store = False
        assert assoc.send_c_store(make_ct(tmp_path / "b.dcm", ExplicitVRLittleEndian)).Status == 0
    assoc.release()
    assert any("on_store failed" in r.getMessage() for r in caplog.records)


def test_pynetdicom_rejected_by_policy_and_called_ae(listen: Callable[..., Listener]) -> None:
    listener = listen(refuse=frozenset({"BADGUY"}))
    ae = AE(ae_title="BADGUY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", listener.port)
    assert assoc.is_rejected
    listener.wait_for_event("rejected")

    strict = listen(config=make_config(require_called_ae_title=True))
    ae = AE(ae_title="GOODGUY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", strict.port, ae_title="SOMEONE")
    # Once, our FIN right after the A-ASSOCIATE-RJ made pynetdicom end this
    # attempt as neither rejected nor established; we now wait for the
    # requestor to close (PS3.8 Sta13).
    assert assoc.is_rejected
    strict.wait_for_event("rejected")
    assoc = ae.associate("127.0.0.1", strict.port, ae_title="DICOMHUB")
    assert assoc.is_established
    assoc.release()


def test_no_acceptable_context_still_accepts(listen: Callable[..., Listener]) -> None:
    listener = listen(config=make_config(storage_contexts={}))
    sock, response = raw_associate(listener.port, associate_rq_primitive([CTImageStorage]))
    with sock:
        assert response[0] == 0x02  # A-ASSOCIATE-AC, every context rejected
        sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
        assert read_pdu(sock)[0] == 0x06


def test_role_selection_answered_like_pynetdicom(listen: Callable[..., Listener]) -> None:
    listener = listen()
    rq = associate_rq_primitive([CTImageStorage])
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CTImageStorage
    role.scu_role = True
    role.scp_role = False
    rq.user_information.append(role)
    sock, response = raw_associate(listener.port, rq)
    with sock:
        assert response[0] == 0x02
        # context 1 accepted: result byte of the first presentation context item
        position = response.index(b"\x21\x00", 74)
        assert response[position + 6] == 0x00
        sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
        assert read_pdu(sock)[0] == 0x06


# ---------------------------------------------------------------------------
# Raw protocol edge cases
# ---------------------------------------------------------------------------


def test_store_on_wrong_context_answers_0122(listen: Callable[..., Listener]) -> None:
    listener = listen()
    rq = associate_rq_primitive([Verification, CTImageStorage])
    sock, response = raw_associate(listener.port, rq)
    with sock:
        assert response[0] == 0x02
        for context_id in (1, 7):  # Verification context; a context never proposed
            command = command_bytes(
                AffectedSOPClassUID=CTImageStorage,
                CommandField=0x0001,
                MessageID=5,
                Priority=0,
                CommandDataSetType=0,
                AffectedSOPInstanceUID="1.2.3.4",
            )
            sock.sendall(p_data(context_id, 0x03, command) + p_data(context_id, 0x02, b"\0" * 8))
            rsp = read_response(sock)
            assert rsp.CommandField == 0x8001
            assert rsp.Status == 0x0122
            assert rsp.MessageIDBeingRespondedTo == 5
        sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
        assert read_pdu(sock)[0] == 0x06
    assert listener.requests == []


def test_fragmented_command_and_data(listen: Callable[..., Listener], tmp_path: Path) -> None:
    """Command and data set split in odd fragments, several PDVs per PDU."""
    listener = listen()
    make_ct(tmp_path / "a.dcm", ImplicitVRLittleEndian)
    data = file_data_set_bytes(tmp_path / "a.dcm")
    sock, response = raw_associate(listener.port, associate_rq_primitive([CTImageStorage]))
    with sock:
        assert response[0] == 0x02
        command = command_bytes(
            AffectedSOPClassUID=CTImageStorage,
            CommandField=0x0001,
            MessageID=77,
            Priority=0,
            CommandDataSetType=0,
            AffectedSOPInstanceUID="1.2.3.4.77",
        )
        pdvs = [(0x01, command[:13]), (0x03, command[13:])]
        chunks = [data[i : i + 997] for i in range(0, len(data), 997)]
        pdvs += [(0x00, chunk) for chunk in chunks[:-1]] + [(0x02, chunks[-1])]
        # Pack three PDVs per P-DATA-TF.
        for start in range(0, len(pdvs), 3):
            items = b"".join(
                struct.pack(">IBB", len(fragment) + 2, 1, control) + fragment
                for control, fragment in pdvs[start : start + 3]
            )
            sock.sendall(struct.pack(">BBI", 4, 0, len(items)) + items)
        rsp = read_response(sock)
        assert rsp.Status == 0
        assert rsp.AffectedSOPInstanceUID == "1.2.3.4.77"
        sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
        assert read_pdu(sock)[0] == 0x06
    (request,) = listener.requests
    assert request.dataset == data
    assert request.message_id == 77
    assert request.transfer_syntax_uid == ImplicitVRLittleEndian


def test_c_find_on_fast_path_is_aborted(listen: Callable[..., Listener]) -> None:
    listener = listen()
    sock, response = raw_associate(listener.port, associate_rq_primitive([Verification]))
    with sock:
        assert response[0] == 0x02
        command = command_bytes(
            AffectedSOPClassUID=StudyRootQueryRetrieveInformationModelFind,
            CommandField=0x0020,
            MessageID=1,
            Priority=0,
            CommandDataSetType=0,
        )
        sock.sendall(p_data(1, 0x03, command))
        abort = read_pdu(sock)
        assert abort[0] == 0x07
        assert abort[8] == 2  # source: service provider
    listener.wait_for_event("aborted")
    assert_listener_alive(listener)


@pytest.mark.parametrize(
    "after_association",
    [
        pytest.param(b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x01\x01\x03\xff\xff", id="pdv-len-1"),
        pytest.param(b"\x04\x00\x00\x00\x00\x0a\x00\x00\xff\xff\x01\x03abcd", id="pdv-overrun"),
        pytest.param(b"\x04\x00\x7f\xff\xff\xff", id="oversized-p-data"),
        pytest.param(b"\x09\x00\x00\x00\x00\x02\x00\x00", id="unknown-pdu-type"),
        pytest.param(b"\x01\x00\x00\x00\x00\x02\x00\x00", id="second-associate-rq"),
        pytest.param(p_data(1, 0x02, b"data before command"), id="data-without-command"),
        pytest.param(p_data(1, 0x03, b"\x00\x00\x00\x01\x04\x00"), id="garbage-command"),
    ],
)
def test_protocol_errors_abort(listen: Callable[..., Listener], after_association: bytes) -> None:
    listener = listen()
    sock, response = raw_associate(listener.port, associate_rq_primitive([Verification]))
    with sock:
        assert response[0] == 0x02
        sock.sendall(after_association)
        abort = read_pdu(sock)
        assert abort[0] == 0x07
    listener.wait_for_event("aborted")
    assert_listener_alive(listener)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(os.urandom(3000), id="random"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="http"),
        pytest.param(b"\x01\x00\x00\x00\x01\x00" + b"\x00" * 50, id="truncated-rq"),
        pytest.param(b"\x01\x00\xff\xff\xff\xf0" + b"\x00" * 100, id="absurd-length"),
        pytest.param(b"\x01\x00\x00\x00\x00\x50" + b"\xff" * 0x50, id="undecodable-rq"),
        pytest.param(b"\x01", id="one-byte"),
    ],
)
def test_garbage_before_association(listen: Callable[..., Listener], payload: bytes) -> None:
    listener = listen()
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
    assert_listener_alive(listener)


def test_unknown_user_information_items_are_ignored(listen: Callable[..., Listener]) -> None:
    listener = listen()
    rq_bytes = bytearray(encode_rq(associate_rq_primitive([Verification])))
    # Append an unknown sub-item (type 0x5F) to the user information item,
    # and an unknown top-level item (type 0x60) after it.
    user_info = rq_bytes.index(b"\x50\x00", 74)
    extra = b"\x5f\x00\x00\x03abc"
    length = struct.unpack_from(">H", rq_bytes, user_info + 2)[0]
    struct.pack_into(">H", rq_bytes, user_info + 2, length + len(extra))
    rq_bytes[user_info + 4 + length : user_info + 4 + length] = extra
    rq_bytes += b"\x60\x00\x00\x02zz"
    struct.pack_into(">I", rq_bytes, 2, len(rq_bytes) - 6)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        sock.sendall(rq_bytes)
        assert read_pdu(sock)[0] == 0x02
        sock.sendall(
            p_data(
                1,
                0x03,
                command_bytes(
                    AffectedSOPClassUID=Verification,
                    CommandField=0x0030,
                    MessageID=3,
                    CommandDataSetType=0x0101,
                ),
            )
        )
        rsp = read_response(sock)
        assert (rsp.CommandField, rsp.Status, rsp.MessageIDBeingRespondedTo) == (0x8030, 0, 3)
        sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
        assert read_pdu(sock)[0] == 0x06


def test_idle_timeout_aborts(listen: Callable[..., Listener]) -> None:
    listener = listen(config=make_config(network_timeout=0.3))
    sock, response = raw_associate(listener.port, associate_rq_primitive([Verification]))
    with sock:
        assert response[0] == 0x02
        assert read_pdu(sock)[0] == 0x07
    listener.wait_for_event("aborted")


def test_small_peer_maximum_fragments_the_response(listen: Callable[..., Listener]) -> None:
    listener = listen()
    sock, response = raw_associate(
        listener.port, associate_rq_primitive([CTImageStorage], max_pdu=40)
    )
    with sock:
        assert response[0] == 0x02
        command = command_bytes(
            AffectedSOPClassUID=CTImageStorage,
            CommandField=0x0001,
            MessageID=5,
            Priority=0,
            CommandDataSetType=0,
            AffectedSOPInstanceUID="1.2.3.4",
        )
        sock.sendall(
            p_data(1, 0x03, command) + p_data(1, 0x02, b"\x08\x00\x18\x00\x00\x00\x00\x00")
        )
        rsp = read_response(sock)  # asserts every PDU is a P-DATA-TF
        assert rsp.Status == 0


# ---------------------------------------------------------------------------
# DCMTK as the requestor
# ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_echoscu(listen: Callable[..., Listener]) -> None:
    listener = listen()
    result = run_dcmtk("echoscu", "-aec", "DICOMHUB", "127.0.0.1", str(listener.port))
    assert result.returncode == 0, result.stderr
    listener.wait_for_event("released")
    assert listener.event_names() == ["associated", "echo", "releasing", "released"]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("file_syntax", "options", "wire_syntax"),
    [
        (ExplicitVRLittleEndian, [], ExplicitVRLittleEndian),
        (ExplicitVRLittleEndian, ["-xe"], ExplicitVRLittleEndian),
        (ExplicitVRLittleEndian, ["-xi"], ImplicitVRLittleEndian),
        (ImplicitVRLittleEndian, [], ImplicitVRLittleEndian),
        (ImplicitVRLittleEndian, ["-xi"], ImplicitVRLittleEndian),
        (ImplicitVRLittleEndian, ["-xe"], ImplicitVRLittleEndian),
    ],
)
def test_storescu(
    listen: Callable[..., Listener],
    tmp_path: Path,
    file_syntax: str,
    options: list[str],
    wire_syntax: str,
) -> None:
    listener = listen()
    paths = [tmp_path / f"ct{i}.dcm" for i in range(5)]
    datasets = [make_ct(path, file_syntax, seed=i) for i, path in enumerate(paths)]
    result = run_dcmtk(
        "storescu",
        *options,
        "-aet",
        "MODALITY",
        "127.0.0.1",
        str(listener.port),
        *map(str, paths),
    )
    assert result.returncode == 0, result.stderr
    assert len(listener.requests) == len(datasets)
    by_uid = {r.sop_instance_uid: r for r in listener.requests}
    for path, ds in zip(paths, datasets, strict=True):
        request = by_uid[ds.SOPInstanceUID]
        assert request.calling_ae_title == "MODALITY"
        assert request.sop_class_uid == CTImageStorage
        assert request.transfer_syntax_uid == wire_syntax
        received = decode(request)
        assert received.SOPInstanceUID == ds.SOPInstanceUID
        assert received.PixelData == ds.PixelData
        if wire_syntax == file_syntax:
            assert request.dataset == file_data_set_bytes(path)
    listener.wait_for_event("released")


@pytest.mark.e2e
def test_storescu_large_dataset(listen: Callable[..., Listener], tmp_path: Path) -> None:
    listener = listen()
    path = tmp_path / "big.dcm"
    ds = make_ct(path, ExplicitVRLittleEndian, rows=1024, columns=1024)
    result = run_dcmtk(
        "storescu", "--max-send-pdu", "4096", "127.0.0.1", str(listener.port), str(path)
    )
    assert result.returncode == 0, result.stderr
    (request,) = listener.requests
    assert request.dataset == file_data_set_bytes(path)
    assert dcmread(path).PixelData == decode(request).PixelData == ds.PixelData


@pytest.mark.e2e
def test_storescu_reports_failure_status(listen: Callable[..., Listener], tmp_path: Path) -> None:
    listener = listen()
    listener.status = 0xA900
    listener.error_comment = "identifier mismatch"
    path = tmp_path / "a.dcm"
    make_ct(path, ExplicitVRLittleEndian)
    result = run_dcmtk("storescu", "-v", "127.0.0.1", str(listener.port), str(path))
    output = result.stdout + result.stderr
    assert "Error: DataSetDoesNotMatchSOPClass" in output, output
    assert listener.event_names()[:2] == ["associated", "store"]
    assert listener.events[1][1]["status"] == 0xA900


@pytest.mark.e2e
def test_dcmtk_rejected_by_policy(listen: Callable[..., Listener], tmp_path: Path) -> None:
    listener = listen(refuse=frozenset({"BADGUY"}))
    echo = run_dcmtk("echoscu", "-aet", "BADGUY", "127.0.0.1", str(listener.port))
    assert echo.returncode != 0
    assert "rejected" in (echo.stdout + echo.stderr).lower()
    path = tmp_path / "a.dcm"
    make_ct(path, ExplicitVRLittleEndian)
    store = run_dcmtk("storescu", "-aet", "BADGUY", "127.0.0.1", str(listener.port), str(path))
    assert store.returncode != 0
    assert "rejected" in (store.stdout + store.stderr).lower()
    # The listener records the rejection once the requestor has closed its end
    # (PS3.8 Sta13), which can be after storescu has exited: wait for it.
    listener.wait_for_event("rejected", count=2)
    assert listener.requests == []
    assert listener.event_names() == ["rejected", "rejected"]


@pytest.mark.e2e
def test_garbage_then_echoscu(listen: Callable[..., Listener]) -> None:
    listener = listen()
    payloads = [
        os.urandom(5000),
        b"\x01\x00\x00\x00\x01\x00" + b"\x00" * 50,  # truncated A-ASSOCIATE-RQ
        b"\x01\x00\xff\xff\xff\xf0",  # absurd length
    ]
    for payload in payloads:
        with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
            sock.sendall(payload)
    result = run_dcmtk("echoscu", "127.0.0.1", str(listener.port))
    assert result.returncode == 0, result.stderr
