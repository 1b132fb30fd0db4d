"""Large objects over DIMSE without holding them in memory (issue 4, item 6).

* Receiving: a C-STORE data set past ``AssociationConfig.spool_threshold`` is
  spooled to a file handed to ``on_store`` as ``StoreRequest.dataset_path``,
  and the file is gone afterwards whatever happened (on_store raising, peer
  abort, closed connection, protocol error, release or timeout mid-message).
* Sending: a :class:`FileRegion` from ``Sendable.read`` goes out with
  ``sendfile`` (or ``preadv`` into one buffer) on C-GET (the association itself) and C-MOVE
  (``scu.StoreAssociation``), honouring ``delete_after``.
* Memory: 200 MB through the association loop, measured with tracemalloc.

Everything runs in-process on loopback: ``serve_association`` per connection,
driven by pynetdicom or by :class:`~dicomhub.dimse.scu.StoreAssociation`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt

from dicomhub.dimse import messages as M
from dicomhub.dimse import pdu as P
from dicomhub.dimse import transport as T
from dicomhub.dimse.association import serve_association
from dicomhub.dimse.requests import (
    AssociationConfig,
    FileRegion,
    QueryRequest,
    RetrievePlan,
    Sendable,
    StoreOutcome,
    StoreRequest,
)
from dicomhub.dimse.scu import AssociationAborted, StoreAssociation
from tests.unit.accept_loop import AcceptLoop

STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
MiB = 1 << 20


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def make_ct(rows: int, seed: int = 0) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Large^Object"
    ds.PatientID = "LO-1"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 65535, size=rows * rows, dtype=np.uint16).tobytes()
    return ds


def encode(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, ds)
    return fp.getvalue()


def write_region(path: Path, data: bytes, prefix: bytes = b"P" * 132) -> FileRegion:
    """`data` after some bytes that are not part of it (like a Part 10 file's preamble)."""
    path.write_bytes(prefix + data + b"trailing bytes not sent")
    return FileRegion(str(path), len(prefix), len(data))


def sha256_of(path: str | Path, offset: int = 0, length: int | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(offset)
        remaining = length if length is not None else -1
        while remaining:
            block = fh.read(MiB if remaining < 0 else min(MiB, remaining))
            if not block:
                break
            digest.update(block)
            remaining -= len(block) if remaining > 0 else 0
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# The listener
# ---------------------------------------------------------------------------


def make_config(**overrides: object) -> AssociationConfig:
    values: dict[str, object] = {
        "ae_title": "DICOMHUB",
        "storage_contexts": {CTImageStorage: [ExplicitVRLittleEndian]},
        "acse_timeout": 5.0,
        "dimse_timeout": 5.0,
        "network_timeout": 10.0,
        "query_retrieve": True,
    }
    values.update(overrides)
    return AssociationConfig(**values)  # type: ignore[arg-type]


class Listener(AcceptLoop):
    """Accept loop calling serve_association per connection."""

    def __init__(
        self,
        config: AssociationConfig,
        on_store: Callable[[StoreRequest], StoreOutcome],
        on_retrieve: Callable[[QueryRequest], RetrievePlan] | None = None,
    ) -> None:
        self.config = config
        self.on_store = on_store
        self.on_retrieve = on_retrieve
        self.events: list[tuple[str, dict[str, object]]] = []
        super().__init__()

    def serve(self, sock: socket.socket, address: tuple[str, int]) -> None:
        serve_association(
            sock,
            address,
            self.config,
            self.on_store,
            on_event=lambda name, payload: self.events.append((name, payload)),
            on_retrieve=self.on_retrieve,
        )


@pytest.fixture
def listen() -> Iterator[Callable[..., Listener]]:
    listeners: list[Listener] = []

    def start(
        on_store: Callable[[StoreRequest], StoreOutcome] = lambda request: StoreOutcome(0),
        on_retrieve: Callable[[QueryRequest], RetrievePlan] | None = None,
        **overrides: object,
    ) -> Listener:
        listener = Listener(make_config(**overrides), on_store, on_retrieve)
        listeners.append(listener)
        return listener

    yield start
    for listener in listeners:
        listener.close()
        assert listener.errors == []


class Received:
    """on_store that records requests and what their spool files held."""

    def __init__(self, status: int = 0, fail: bool = False) -> None:
        self.status = status
        self.fail = fail
        self.requests: list[StoreRequest] = []
        self.contents: list[bytes] = []

    def __call__(self, request: StoreRequest) -> StoreOutcome:
        self.requests.append(request)
        if request.dataset_path is not None:
            assert request.dataset == b""
            self.contents.append(Path(request.dataset_path).read_bytes())
        else:
            self.contents.append(request.dataset)
        if self.fail:
            raise RuntimeError("disk on fire")
        return StoreOutcome(self.status)


def storage_scu(port: int, max_pdu: int = 16384) -> tuple[StoreAssociation, int]:
    assoc = StoreAssociation.open(
        "127.0.0.1",
        port,
        "DICOMHUB",
        "LARGESCU",
        [(CTImageStorage, [ExplicitVRLittleEndian])],
        maximum_pdu_size=max_pdu,
    )
    context_id = assoc.accepted(CTImageStorage, ExplicitVRLittleEndian)
    assert context_id is not None
    return assoc, context_id


# ---------------------------------------------------------------------------
# Receiving to a spool file
# ---------------------------------------------------------------------------


def test_large_store_is_spooled_and_removed(listen: Callable[..., Listener], tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    received = Received()
    listener = listen(received, spool_threshold=256 * 1024, spool_dir=str(spool))
    small, large = make_ct(64), make_ct(1024, seed=1)  # 8 KiB and 2 MiB of pixels

    ae = AE(ae_title="PYNSTORE")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.maximum_pdu_size = 16384  # many PDUs, several PDVs per spool write
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="DICOMHUB")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(large).Status == 0
        assert assoc.send_c_store(small).Status == 0
    finally:
        assoc.release()
    listener.wait_idle()

    big, little = received.requests
    assert big.dataset_path is not None and Path(big.dataset_path).parent == spool
    assert received.contents[0] == encode(large)
    assert little.dataset_path is None and little.dataset == encode(small)
    assert list(spool.iterdir()) == []
    store_events = [payload for name, payload in listener.events if name == "store"]
    assert [e["bytes"] for e in store_events] == [len(encode(large)), len(encode(small))]


def test_spool_removed_when_on_store_raises(listen: Callable[..., Listener], tmp_path: Path) -> None:
    received = Received(fail=True)
    listener = listen(received, spool_threshold=1024, spool_dir=str(tmp_path))
    data = encode(make_ct(256))
    assoc, cid = storage_scu(listener.port)
    with assoc:
        status, _ = assoc.send_c_store(cid, CTImageStorage, "1.2.3.4", data, 1)
    assert status == 0xC210
    assert received.contents == [data]
    listener.wait_idle()
    assert list(tmp_path.iterdir()) == []


def _wait_for_spool(folder: Path, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not list(folder.iterdir()):
        assert time.monotonic() < deadline, "no spool file appeared"
        time.sleep(0.01)


@pytest.mark.parametrize("ending", ["abort", "close", "garbage", "release", "timeout"])
def test_message_cut_short_leaves_no_spool_file(
    listen: Callable[..., Listener], tmp_path: Path, ending: str
) -> None:
    received = Received()
    listener = listen(received, spool_threshold=4096, spool_dir=str(tmp_path), dimse_timeout=0.5)
    assoc, cid = storage_scu(listener.port)
    sock = assoc.sock
    command = M.encode_store_rq(1, CTImageStorage, "1.2.3.4")
    T.send_buffers(sock, P.message_buffers(cid, command, None, 0))
    fragment = b"\x00" * 8000
    for _ in range(3):  # well past the threshold, never the last fragment
        sock.sendall(P.P_DATA_HEADERS.pack(P.P_DATA_TF, 0, len(fragment) + 6, len(fragment) + 2, cid, 0))
        sock.sendall(fragment)
    _wait_for_spool(tmp_path)
    if ending == "abort":
        sock.sendall(P.PDU_HEADER.pack(P.A_ABORT, 0, 4) + b"\x00\x00\x00\x00")
    elif ending == "close":
        sock.close()
    elif ending == "garbage":
        sock.sendall(b"\x42\x00\x00\x00\x00\x00")
    elif ending == "release":
        sock.sendall(P.RELEASE_RQ_PDU)
    else:  # "timeout": stay silent past the DIMSE timeout, until the A-ABORT comes
        sock.settimeout(5)
        assert sock.recv(10)[:1] == bytes([P.A_ABORT])
    if ending != "close":
        # The requestor closes (spares the ARTIM linger); the acceptor may have
        # closed first after an A-ABORT, which leaves nothing to shut down.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
    listener.wait_idle()
    assert received.requests == []
    assert list(tmp_path.iterdir()) == []
    assoc.abort()
    aborted = [payload for name, payload in listener.events if name in ("aborted", "released")]
    assert aborted, listener.events


def test_unwritable_spool_answers_out_of_resources(listen: Callable[..., Listener], tmp_path: Path) -> None:
    received = Received()
    listener = listen(received, spool_threshold=1024, spool_dir=str(tmp_path / "missing"))
    big, small = encode(make_ct(128)), b""  # an empty data set stays in memory
    assoc, cid = storage_scu(listener.port)
    with assoc:
        status, comment = assoc.send_c_store(cid, CTImageStorage, "1.2.3.4", big, 1)
        assert status == 0xA700 and comment is not None and "spool" in comment
        # The association survives, and a small store still works.
        status, _ = assoc.send_c_store(cid, CTImageStorage, "1.2.3.5", small, 2)
        assert status == 0
    assert [r.sop_instance_uid for r in received.requests] == ["1.2.3.5"]


def test_identifiers_are_never_spooled(listen: Callable[..., Listener], tmp_path: Path) -> None:
    """Only C-STORE data sets go to disk; a C-GET identifier past the threshold stays in memory."""
    seen: list[QueryRequest] = []

    def on_retrieve(request: QueryRequest) -> RetrievePlan:
        seen.append(request)
        return RetrievePlan([])

    listener = listen(on_retrieve=on_retrieve, spool_threshold=16, spool_dir=str(tmp_path))
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = "1.2.3"
    identifier.StudyDescription = "x" * 64
    ae = AE(ae_title="PYNGET")
    ae.add_requested_context(STUDY_GET, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="DICOMHUB")
    try:
        statuses = [int(s.Status) for s, _ in assoc.send_c_get(identifier, STUDY_GET)]
    finally:
        assoc.release()
    assert statuses == [0]
    assert seen[0].identifier.StudyDescription == "x" * 64


# ---------------------------------------------------------------------------
# Sending from files
# ---------------------------------------------------------------------------


def pyn_get(port: int, max_pdu: int = 16384) -> tuple[list[bytes], list[int]]:
    received: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        request: Any = event.request
        received.append(request.DataSet.getvalue())
        return 0

    ae = AE(ae_title="PYNGET")
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(STUDY_GET, ExplicitVRLittleEndian)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="DICOMHUB",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = "1.2.3"
    try:
        statuses = [int(s.Status) for s, _ in assoc.send_c_get(identifier, STUDY_GET)]
    finally:
        assoc.release()
    return received, statuses


def region_sendable(read: Callable[[], FileRegion]) -> Sendable:
    return Sendable(CTImageStorage, generate_uid(), ExplicitVRLittleEndian, read)


@pytest.mark.parametrize("sendfile", [True, False], ids=["sendfile", "preadv"])
def test_c_get_sends_file_regions(
    listen: Callable[..., Listener], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sendfile: bool
) -> None:
    if not sendfile:

        def no_sendfile(*args: object) -> int:
            raise OSError(errno.EINVAL, "not here")

        monkeypatch.setattr(os, "sendfile", no_sendfile)
    datasets = [encode(make_ct(rows, seed=rows)) for rows in (512, 64, 300)]
    regions = [write_region(tmp_path / f"{i}.dcm", data) for i, data in enumerate(datasets)]
    temporary = FileRegion(regions[1].path, regions[1].offset, regions[1].length, delete_after=True)
    sendables = [
        region_sendable(lambda: regions[0]),
        region_sendable(lambda: temporary),
        region_sendable(lambda: FileRegion(str(tmp_path / "gone.dcm"), 0, 10, delete_after=True)),
        region_sendable(lambda: regions[2]),
    ]
    listener = listen(on_retrieve=lambda request: RetrievePlan(sendables))
    received, statuses = pyn_get(listener.port)
    assert received == [datasets[0], datasets[1], datasets[2]]
    assert statuses[-1] == 0xB000  # the missing file failed, alone
    assert os.path.exists(regions[0].path) and os.path.exists(regions[2].path)
    assert not os.path.exists(temporary.path)
    get = [payload for name, payload in listener.events if name == "get"]
    assert get[0]["completed"] == 3 and get[0]["failed"] == 1


def test_c_get_region_deleted_when_the_send_fails(listen: Callable[..., Listener], tmp_path: Path) -> None:
    path = tmp_path / "tmp.dcm"
    size, _ = write_large_object(path, 16 * MiB)  # more than loopback buffers hold
    region = FileRegion(str(path), 0, size, delete_after=True)
    listener = listen(on_retrieve=lambda request: RetrievePlan([region_sendable(lambda: region)]))
    with pytest.raises(ConnectionError):
        raw_c_get(listener.port, vanish=True)
    listener.wait_idle()
    assert not path.exists()
    assert "aborted" in [name for name, _ in listener.events]


def test_scu_sends_file_regions(listen: Callable[..., Listener], tmp_path: Path) -> None:
    received = Received()
    listener = listen(received, maximum_pdu_size=16384)
    data = encode(make_ct(700))
    kept = write_region(tmp_path / "kept.dcm", data)
    temporary = write_region(tmp_path / "tmp.dcm", data)
    temporary = FileRegion(temporary.path, temporary.offset, temporary.length, delete_after=True)
    assoc, cid = storage_scu(listener.port)
    with assoc:
        assert assoc.send_c_store(cid, CTImageStorage, "1.2.3.1", kept, 1) == (0, None)
        assert assoc.send_c_store(cid, CTImageStorage, "1.2.3.2", temporary, 2) == (0, None)
        empty = FileRegion(kept.path, 5, 0)
        assert assoc.send_c_store(cid, CTImageStorage, "1.2.3.3", empty, 3) == (0, None)
        # A missing or short file fails before anything is sent: the
        # association stays usable, and a temporary region is still removed.
        short = tmp_path / "short.dcm"
        short.write_bytes(b"tiny")
        with pytest.raises(OSError):
            assoc.send_c_store(cid, CTImageStorage, "1.2.3.4", FileRegion(str(short), 0, 99, True), 4)
        assert not short.exists()
        with pytest.raises(OSError):
            assoc.send_c_store(cid, CTImageStorage, "1.2.3.5", FileRegion(str(short), 0, 1), 5)
        assert assoc.is_open
        assert assoc.send_c_store(cid, CTImageStorage, "1.2.3.6", data, 6) == (0, None)
    assert received.contents == [data, data, b"", data]
    assert os.path.exists(kept.path) and not os.path.exists(temporary.path)
    # A closed association refuses, and still removes a temporary file.
    doomed = FileRegion(kept.path + ".copy", 0, 1, delete_after=True)
    Path(doomed.path).write_bytes(b"x")
    with pytest.raises(AssociationAborted):
        assoc.send_c_store(cid, CTImageStorage, "1.2.3.7", doomed, 7)
    assert not os.path.exists(doomed.path)


class StoreSCP:
    """A pynetdicom Storage SCP as a C-MOVE destination."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.ae = AE(ae_title="DEST")
        self.ae.maximum_pdu_size = 32768
        self.ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
        server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)]
        )
        assert server is not None
        self.server = server
        self.port: int = server.server_address[1]

    def on_store(self, event: evt.Event) -> int:
        request: Any = event.request
        self.received.append(request.DataSet.getvalue())
        return 0


def test_c_move_sends_file_regions(listen: Callable[..., Listener], tmp_path: Path) -> None:
    scp = StoreSCP()
    try:
        data = [encode(make_ct(rows, seed=rows)) for rows in (400, 100)]
        kept = write_region(tmp_path / "kept.dcm", data[0])
        tmp = write_region(tmp_path / "tmp.dcm", data[1])
        tmp = FileRegion(tmp.path, tmp.offset, tmp.length, delete_after=True)
        sendables = [
            region_sendable(lambda: kept),
            region_sendable(lambda: FileRegion(str(tmp_path / "gone"), 0, 1)),
            region_sendable(lambda: tmp),
        ]
        listener = listen(
            on_retrieve=lambda request: RetrievePlan(sendables, ("127.0.0.1", scp.port, "DEST"))
        )
        ae = AE(ae_title="PYNMOVE")
        ae.add_requested_context(STUDY_MOVE, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="DICOMHUB")
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = "1.2.3"
        try:
            statuses = [int(s.Status) for s, _ in assoc.send_c_move(identifier, "DEST", STUDY_MOVE)]
        finally:
            assoc.release()
        assert statuses[-1] == 0xB000
        assert scp.received == data
        assert os.path.exists(kept.path) and not os.path.exists(tmp.path)
    finally:
        scp.server.shutdown()


# ---------------------------------------------------------------------------
# Memory, measured
# ---------------------------------------------------------------------------


def write_large_object(path: Path, pixel_bytes: int) -> tuple[int, str]:
    """A CT data set with `pixel_bytes` of Pixel Data, written in chunks; (size, sha256)."""
    header = make_ct(2)
    del header.PixelData
    header.Rows = header.Columns = int((pixel_bytes // 2) ** 0.5)
    head = encode(header) + b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_bytes.to_bytes(4, "little")
    digest = hashlib.sha256(head)
    rng = np.random.default_rng(7)
    with open(path, "wb") as fh:
        fh.write(head)
        left = pixel_bytes
        while left:
            block = rng.bytes(min(4 * MiB, left))
            digest.update(block)
            fh.write(block)
            left -= len(block)
    return len(head) + pixel_bytes, digest.hexdigest()


def test_200_mb_store_and_get_stay_out_of_memory(listen: Callable[..., Listener], tmp_path: Path) -> None:
    """Receive 200 MB (default 16 MiB threshold) and send it back with C-GET; trace the heap."""
    source = tmp_path / "source.dcm"
    size, digest = write_large_object(source, 200 * 1000 * 1000)
    spool = tmp_path / "spool"
    spool.mkdir()
    kept = tmp_path / "kept.dcm"
    seen: list[tuple[int, str]] = []

    def on_store(request: StoreRequest) -> StoreOutcome:
        assert request.dataset_path is not None and request.dataset == b""
        seen.append((os.path.getsize(request.dataset_path), sha256_of(request.dataset_path)))
        os.link(request.dataset_path, kept)  # what an ingest on the same file system may do
        return StoreOutcome(0)

    listener = listen(
        on_store,
        on_retrieve=lambda request: RetrievePlan(
            [region_sendable(lambda: FileRegion(str(kept), 0, size, delete_after=True))]
        ),
        spool_dir=str(spool),
        maximum_pdu_size=262144,
    )
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        assoc, cid = storage_scu(listener.port)
        with assoc:
            status = assoc.send_c_store(cid, CTImageStorage, "1.2.3.4", FileRegion(str(source), 0, size), 1)
        listener.wait_idle()
        _, store_peak = tracemalloc.get_traced_memory()

        # C-GET back with a raw receiver that hashes fragments as they come.
        tracemalloc.reset_peak()
        got_size, got_digest = raw_c_get(listener.port)
        listener.wait_idle()
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\n200 MB C-STORE peak traced {store_peak / MiB:.1f} MiB; C-GET peak {get_peak / MiB:.1f} MiB")
    assert status == (0, None)
    assert seen == [(size, digest)]
    assert list(spool.iterdir()) == []
    # The threshold (16 MiB) plus a PDU or two, never the object (~191 MiB).
    assert store_peak < 24 * MiB
    assert got_size == size and got_digest == digest
    assert get_peak < 4 * MiB
    assert not kept.exists()


def raw_c_get(port: int, vanish: bool = False) -> tuple[int, str]:
    """A C-GET requestor on a bare socket that hashes the data set without keeping it.

    With `vanish`, reset the connection as soon as the C-STORE-RQ command
    arrives (raises ConnectionError).
    """
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import (
        A_ASSOCIATE,
        ImplementationClassUIDNotification,
        MaximumLengthNotification,
        SCP_SCU_RoleSelectionNegotiation,
    )
    from pynetdicom.presentation import PresentationContext

    rq = A_ASSOCIATE()
    rq.application_context_name = "1.2.840.10008.3.1.1.1"
    rq.calling_ae_title, rq.called_ae_title = "RAWGET", "DICOMHUB"
    contexts = []
    for cid, abstract in ((1, STUDY_GET), (3, CTImageStorage)):
        cx = PresentationContext()
        cx.context_id, cx.abstract_syntax, cx.transfer_syntax = cid, abstract, [ExplicitVRLittleEndian]
        contexts.append(cx)
    rq.presentation_context_definition_list = contexts
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 65536
    uid = ImplementationClassUIDNotification()
    uid.implementation_class_uid = "1.2.3.4"
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid, role.scu_role, role.scp_role = CTImageStorage, False, True
    rq.user_information = [max_length, uid, role]

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    digest = hashlib.sha256()
    size = 0
    store_message_id = 0
    try:
        sock.sendall(A_ASSOCIATE_RQ(rq).encode())
        pdu_type, _ = read_pdu(sock)
        assert pdu_type == P.A_ASSOCIATE_AC
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = "1.2.3"
        command = M.encode_command(
            [
                M.text_element(M.E_AFFECTED_SOP_CLASS, STUDY_GET.encode(), b"\x00"),
                M.US_ELEMENT.pack(0, M.E_COMMAND_FIELD, 2, M.C_GET_RQ),
                M.US_ELEMENT.pack(0, M.E_MESSAGE_ID, 2, 1),
                M.US_ELEMENT.pack(0, M.E_PRIORITY, 2, 0),
                M.US_ELEMENT.pack(0, M.E_DATA_SET_TYPE, 2, 1),
            ]
        )
        T.send_buffers(sock, P.message_buffers(1, command, encode(identifier), 65536))
        while True:
            pdu_type, body = read_pdu(sock)
            assert pdu_type == P.P_DATA_TF
            length, cid, control = P.PDV_HEADER.unpack_from(body)
            fragment = memoryview(body)[6 : 4 + length]
            if control & 0x01:
                rsp = M.parse_command(bytes(fragment))
                if rsp.command_field == M.C_STORE_RQ:
                    assert rsp.message_id is not None
                    store_message_id = rsp.message_id
                    if vanish:
                        # Unread data in our buffer: close() sends RST.
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        raise ConnectionResetError("vanished")
                    continue
                assert rsp.command_field == M.C_GET_RSP
                if rsp.status != 0xFF00:
                    assert rsp.status == 0
                    break
                continue
            digest.update(fragment)
            size += len(fragment)
            if control & 0x02:
                answer = M.encode_response(M.C_STORE_RSP, store_message_id, CTImageStorage, "1.2.3.4", 0)
                T.send_buffers(sock, P.message_buffers(cid, answer, None, 65536))
        sock.sendall(P.RELEASE_RQ_PDU)
        read_pdu(sock)
    finally:
        sock.close()
    return size, digest.hexdigest()


def read_pdu(sock: socket.socket) -> tuple[int, bytearray]:
    header = bytearray(6)
    T.recv_exact(sock, memoryview(header))
    pdu_type, _, length = P.PDU_HEADER.unpack(header)
    body = bytearray(length)
    T.recv_exact(sock, memoryview(body))
    return pdu_type, body
