"""Tests of Query/Retrieve through the association loop (C-FIND/C-GET/C-MOVE/C-CANCEL).

``serve_association`` runs per connection on a loopback listener with
callbacks backed by a tiny in-memory archive; it is driven by pynetdicom
(always available) and, in the ``e2e`` tests, by DCMTK's findscu, getscu,
movescu and storescp.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext

from dicomhub.dimse import messages as M
from dicomhub.dimse.association import serve_association
from dicomhub.dimse.requests import (
    AssociationConfig,
    QueryRequest,
    RetrievePlan,
    Sendable,
    StoreOutcome,
    StoreRequest,
)
from dicomhub.dimse.scu import AssociationRejected, StoreAssociation, StoreAssociationError
from tests.unit.accept_loop import AcceptLoop

PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
PATIENT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]


# ---------------------------------------------------------------------------
# A tiny in-memory archive
# ---------------------------------------------------------------------------


@dataclass
class Stored:
    dataset: Dataset  # for matching
    raw: bytes  # data set bytes in `transfer_syntax`
    transfer_syntax: str


def make_ct(
    study: str, series: str, number: int, rows: int = 64, seed: int = 0, patient: str = "QR-1"
) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Query^Retrieve"
    ds.PatientID = patient
    ds.StudyInstanceUID = study
    ds.StudyDate = "20240102"
    ds.AccessionNumber = "ACC1"
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = 1 if rows == 64 else 2
    ds.InstanceNumber = number
    ds.Modality = "CT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 65535, size=rows * rows, dtype=np.uint16).tobytes()
    return ds


def encode(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
    fp.is_little_endian = transfer_syntax != ExplicitVRBigEndian
    write_dataset(fp, ds)
    return fp.getvalue()


_LEVEL_KEY = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}


@dataclass
class Archive:
    instances: list[Stored] = field(default_factory=list)
    destinations: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    find_delay: float = 0.0
    find_requests: list[QueryRequest] = field(default_factory=list)
    retrieve_requests: list[QueryRequest] = field(default_factory=list)
    refuse_retrieve: tuple[int, str | None] | None = None
    broken_reads: frozenset[str] = frozenset()
    raise_in_find: bool = False

    def add(self, ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> Stored:
        stored = Stored(ds, encode(ds, transfer_syntax), transfer_syntax)
        self.instances.append(stored)
        return stored

    def matching(self, identifier: Dataset) -> list[Stored]:
        out = []
        for stored in self.instances:
            ok = True
            for elem in identifier:
                if elem.keyword in ("QueryRetrieveLevel", "SpecificCharacterSet", ""):
                    continue
                value = elem.value
                if value in (None, "", "*"):
                    continue
                have = str(stored.dataset.get(elem.keyword, ""))
                wanted = [str(v) for v in value] if elem.VM > 1 else [str(value)]
                if have not in wanted:
                    ok = False
                    break
            if ok:
                out.append(stored)
        return out

    def on_find(self, request: QueryRequest) -> Iterator[tuple[int, Dataset | None]]:
        self.find_requests.append(request)
        if self.raise_in_find:
            raise RuntimeError("index on fire")
        identifier = request.identifier
        level = str(identifier.QueryRetrieveLevel)
        key = _LEVEL_KEY[level]
        seen: set[str] = set()
        for stored in self.matching(identifier):
            uid = str(stored.dataset.get(key))
            if uid in seen:
                continue
            seen.add(uid)
            result = Dataset()
            for elem in identifier:
                if elem.keyword == "QueryRetrieveLevel":
                    continue
                setattr(result, elem.keyword, stored.dataset.get(elem.keyword, elem.value))
            result.QueryRetrieveLevel = level
            if self.find_delay:
                time.sleep(self.find_delay)
            yield 0xFF00, result
        yield 0x0000, None

    def on_retrieve(self, request: QueryRequest) -> RetrievePlan | tuple[int, str | None]:
        self.retrieve_requests.append(request)
        if self.refuse_retrieve is not None:
            return self.refuse_retrieve
        destination = None
        if request.move_destination is not None:
            destination = self.destinations.get(request.move_destination)
            if destination is None:
                return 0xA801, f"unknown destination {request.move_destination}"
        sendables = []
        for stored in self.matching(request.identifier):
            ds = stored.dataset

            def read(stored: Stored = stored) -> bytes:
                if stored.dataset.SOPInstanceUID in self.broken_reads:
                    raise OSError("blob missing")
                return stored.raw

            sendables.append(Sendable(ds.SOPClassUID, ds.SOPInstanceUID, stored.transfer_syntax, read))
        return RetrievePlan(sendables, destination)


@pytest.fixture
def archive() -> Archive:
    arch = Archive()
    study, series_a, series_b = generate_uid(), generate_uid(), generate_uid()
    for i in range(20):
        arch.add(make_ct(study, series_a, i + 1, seed=i))
    for i in range(3):
        arch.add(make_ct(study, series_b, i + 1, rows=512, seed=100 + i))
    return arch


# ---------------------------------------------------------------------------
# The test listener
# ---------------------------------------------------------------------------


def make_config(**overrides: object) -> AssociationConfig:
    values: dict[str, object] = {
        "ae_title": "DICOMHUB",
        "storage_contexts": {CTImageStorage: [*UNCOMPRESSED, JPEG2000Lossless]},
        "acse_timeout": 5.0,
        "dimse_timeout": 5.0,
        "network_timeout": 10.0,
        "query_retrieve": True,
    }
    values.update(overrides)
    return AssociationConfig(**values)  # type: ignore[arg-type]


class Listener(AcceptLoop):
    def __init__(self, config: AssociationConfig, archive: Archive) -> None:
        self.config = config
        self.archive = archive
        self.events: list[tuple[str, dict[str, object]]] = []
        self.stores: list[StoreRequest] = []
        super().__init__()

    def serve(self, sock: socket.socket, address: tuple[str, int]) -> None:
        serve_association(
            sock,
            address,
            self.config,
            self.on_store,
            on_event=lambda name, payload: self.events.append((name, payload)),
            on_find=self.archive.on_find,
            on_retrieve=self.archive.on_retrieve,
        )

    def on_store(self, request: StoreRequest) -> StoreOutcome:
        self.stores.append(request)
        return StoreOutcome(0)

    def event(self, name: str, timeout: float = 10.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while True:
            for got, payload in self.events:
                if got == name:
                    return payload
            assert time.monotonic() < deadline, f"no {name!r} event: {self.events}"
            time.sleep(0.01)



@pytest.fixture
def listen(archive: Archive) -> Iterator[Callable[..., Listener]]:
    listeners: list[Listener] = []

    def start(**overrides: object) -> Listener:
        listener = Listener(make_config(**overrides), archive)
        listeners.append(listener)
        return listener

    yield start
    for listener in listeners:
        listener.close()
        assert listener.errors == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def study_uid(archive: Archive) -> str:
    return str(archive.instances[0].dataset.StudyInstanceUID)


def retrieve_identifier(archive: Archive, level: str = "STUDY") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = study_uid(archive)
    return ds


# ---------------------------------------------------------------------------
# Routing and helpers
# ---------------------------------------------------------------------------


def rq_primitive(abstract_syntaxes: list[str]) -> A_ASSOCIATE:
    rq = A_ASSOCIATE()
    contexts = []
    for index, uid in enumerate(abstract_syntaxes):
        cx = PresentationContext()
        cx.context_id = 2 * index + 1
        cx.abstract_syntax = UID(uid)
        cx.transfer_syntax = [UID(ImplicitVRLittleEndian)]
        contexts.append(cx)
    rq.presentation_context_definition_list = contexts
    return rq


def test_response_with_suboperation_counts() -> None:
    raw = M.encode_response(
        0x8010, 3, STUDY_GET, None, 0xFF00, suboperations=(5, 1, 2, 3), has_data_set=True
    )
    ds = read_dataset(BytesIO(raw), True, True)
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.NumberOfRemainingSuboperations == 5
    assert ds.NumberOfCompletedSuboperations == 1
    assert ds.NumberOfFailedSuboperations == 2
    assert ds.NumberOfWarningSuboperations == 3
    assert ds.CommandDataSetType != 0x0101
    final = read_dataset(
        BytesIO(M.encode_response(0x8021, 3, STUDY_MOVE, None, 0, suboperations=(None, 4, 0, 0))),
        True,
        True,
    )
    assert "NumberOfRemainingSuboperations" not in final
    assert final.NumberOfCompletedSuboperations == 4


# ---------------------------------------------------------------------------
# pynetdicom as the requestor
# ---------------------------------------------------------------------------


def pyn_find(port: int, identifier: Dataset, model: str = STUDY_FIND) -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title="PYNSCU")
    ae.add_requested_context(model, UNCOMPRESSED)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMHUB")
    assert assoc.is_established
    try:
        return [(int(status.Status), ident) for status, ident in assoc.send_c_find(identifier, model)]
    finally:
        assoc.release()


def find_identifier(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_pynetdicom_find_levels(listen: Callable[..., Listener], archive: Archive) -> None:
    listener = listen()
    results = pyn_find(listener.port, find_identifier("STUDY", StudyInstanceUID="", PatientID="QR-1"))
    assert [s for s, _ in results] == [0xFF00, 0x0000]
    assert results[0][1] is not None and results[0][1].StudyInstanceUID == study_uid(archive)
    series = pyn_find(
        listener.port,
        find_identifier("SERIES", StudyInstanceUID=study_uid(archive), SeriesInstanceUID="", Modality=""),
    )
    assert len(series) == 3 and series[-1][0] == 0
    series_uid = archive.instances[0].dataset.SeriesInstanceUID
    images = pyn_find(
        listener.port,
        find_identifier(
            "IMAGE", StudyInstanceUID=study_uid(archive), SeriesInstanceUID=series_uid, SOPInstanceUID=""
        ),
    )
    assert len(images) == 21
    got = {ident.SOPInstanceUID for status, ident in images if ident is not None}
    assert got == {s.dataset.SOPInstanceUID for s in archive.instances[:20]}
    request = archive.find_requests[0]
    assert request.calling_ae_title == "PYNSCU"
    assert request.sop_class_uid == STUDY_FIND
    assert request.move_destination is None
    assert listener.event("find")["matches"] == 1


def test_pynetdicom_find_no_match_and_exception(listen: Callable[..., Listener], archive: Archive) -> None:
    listener = listen()
    assert pyn_find(listener.port, find_identifier("STUDY", PatientID="NOBODY")) == [(0, None)]
    archive.raise_in_find = True
    assert [s for s, _ in pyn_find(listener.port, find_identifier("STUDY", PatientID=""))] == [0xC000]


def test_pynetdicom_cancel_stops_find(listen: Callable[..., Listener], archive: Archive) -> None:
    archive.find_delay = 0.05
    listener = listen()
    ae = AE(ae_title="PYNSCU")
    ae.add_requested_context(STUDY_FIND, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="DICOMHUB")
    assert assoc.is_established
    context_id = assoc.accepted_contexts[0].context_id
    identifier = find_identifier("IMAGE", StudyInstanceUID=study_uid(archive), SOPInstanceUID="")
    statuses = []
    for status, _ in assoc.send_c_find(identifier, STUDY_FIND, msg_id=7):
        statuses.append(int(status.Status))
        if len(statuses) == 2:
            assoc.send_c_cancel(7, context_id)
    assoc.release()
    assert statuses[-1] == 0xFE00
    assert len(statuses) < 10
    assert listener.event("find")["status"] == 0xFE00


def pyn_get(
    port: int,
    identifier: Dataset,
    transfer_syntaxes: list[str] | None = None,
    model: str = STUDY_GET,
) -> tuple[list[Dataset], list[tuple[int, Dataset | None]], list[str]]:
    received: list[Dataset] = []
    received_ts: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        received_ts.append(str(event.context.transfer_syntax))
        return 0x0000

    ae = AE(ae_title="PYNGET")
    ae.add_requested_context(model, ExplicitVRLittleEndian)
    for transfer_syntax in transfer_syntaxes or [ExplicitVRLittleEndian]:
        ae.add_requested_context(CTImageStorage, transfer_syntax)  # one context each
    role = build_role(CTImageStorage, scp_role=True)
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="DICOMHUB",
        ext_neg=[role],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        responses = []
        for status, ident in assoc.send_c_get(identifier, model):
            responses.append((int(status.Status), ident))
            if status.Status == 0xFF00:
                assert "NumberOfRemainingSuboperations" in status
    finally:
        assoc.release()
    return received, responses, received_ts


def test_pynetdicom_get_sends_identical_data_sets(listen: Callable[..., Listener], archive: Archive) -> None:
    listener = listen()
    received, responses, _ = pyn_get(listener.port, retrieve_identifier(archive))
    assert len(received) == 23
    assert responses[-1][0] == 0x0000
    assert sum(1 for s, _ in responses if s == 0xFF00) == 23
    by_uid = {s.dataset.SOPInstanceUID: s for s in archive.instances}
    for ds in received:
        stored = by_uid[ds.SOPInstanceUID]
        assert encode(ds) == stored.raw
    assert listener.event("get")["completed"] == 23


def test_pynetdicom_get_without_matching_context_fails(
    listen: Callable[..., Listener], archive: Archive
) -> None:
    for stored in archive.instances[:5]:
        stored.transfer_syntax = JPEG2000Lossless  # "stored compressed": no context for it
    listener = listen()
    received, responses, _ = pyn_get(listener.port, retrieve_identifier(archive))
    assert len(received) == 18
    status, identifier = responses[-1]
    assert status == 0xB000
    assert identifier is not None
    assert set(identifier.FailedSOPInstanceUIDList) == {
        s.dataset.SOPInstanceUID for s in archive.instances[:5]
    }
    series_uid = archive.instances[0].dataset.SeriesInstanceUID
    one = retrieve_identifier(archive, "IMAGE")
    one.SeriesInstanceUID = series_uid
    one.SOPInstanceUID = archive.instances[0].dataset.SOPInstanceUID
    received, responses, _ = pyn_get(listener.port, one)
    assert received == [] and responses[-1][0] == 0xA702


def test_get_read_failure_and_refusal(listen: Callable[..., Listener], archive: Archive) -> None:
    archive.broken_reads = frozenset({archive.instances[3].dataset.SOPInstanceUID})
    listener = listen()
    received, responses, _ = pyn_get(listener.port, retrieve_identifier(archive))
    assert len(received) == 22 and responses[-1][0] == 0xB000
    archive.refuse_retrieve = (0xA900, "bad identifier")
    received, responses, _ = pyn_get(listener.port, retrieve_identifier(archive))
    assert received == [] and [s for s, _ in responses] == [0xA900]


def test_get_in_big_endian_and_implicit(listen: Callable[..., Listener], archive: Archive) -> None:
    archive.instances[:] = archive.instances[:4]
    syntaxes = [ExplicitVRBigEndian, ImplicitVRLittleEndian] * 2
    for stored, syntax in zip(archive.instances, syntaxes, strict=True):
        stored.transfer_syntax = syntax
        stored.raw = encode(stored.dataset, syntax)
    listener = listen()
    received, responses, ts = pyn_get(
        listener.port, retrieve_identifier(archive), [ExplicitVRBigEndian, ImplicitVRLittleEndian]
    )
    assert responses[-1][0] == 0 and len(received) == 4
    assert sorted(ts) == sorted(s.transfer_syntax for s in archive.instances)
    by_uid = {s.dataset.SOPInstanceUID: s for s in archive.instances}
    for ds, got in zip(received, ts, strict=True):
        stored = by_uid[ds.SOPInstanceUID]
        assert got == stored.transfer_syntax
        assert encode(ds, got) == stored.raw


class StoreSCP:
    """A pynetdicom Storage SCP as a C-MOVE destination."""

    def __init__(self, ae_title: str = "DEST") -> None:
        self.received: list[Dataset] = []
        self.originators: list[tuple[str, int]] = []
        self.ae = AE(ae_title=ae_title)
        self.ae.add_supported_context(CTImageStorage, UNCOMPRESSED)
        self.port = free_port()
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self.on_store)],
        )

    def on_store(self, event: evt.Event) -> int:
        self.received.append(event.dataset)
        req: Any = event.request
        self.originators.append(
            (str(req.MoveOriginatorApplicationEntityTitle).strip(), int(req.MoveOriginatorMessageID))
        )
        return 0

    def close(self) -> None:
        assert self.server is not None
        self.server.shutdown()


def pyn_move(port: int, identifier: Dataset, destination: str) -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title="PYNMOVE")
    ae.add_requested_context(STUDY_MOVE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMHUB")
    assert assoc.is_established
    try:
        return [
            (int(status.Status), ident)
            for status, ident in assoc.send_c_move(identifier, destination, STUDY_MOVE, msg_id=11)
        ]
    finally:
        assoc.release()


def test_pynetdicom_move(listen: Callable[..., Listener], archive: Archive) -> None:
    scp = StoreSCP()
    try:
        archive.destinations["DEST"] = ("127.0.0.1", scp.port, "DEST")
        listener = listen()
        responses = pyn_move(listener.port, retrieve_identifier(archive), "DEST")
        assert responses[-1][0] == 0x0000
        assert len(scp.received) == 23
        assert set(scp.originators) == {("PYNMOVE", 11)}
        by_uid = {s.dataset.SOPInstanceUID: s for s in archive.instances}
        for ds in scp.received:
            assert encode(ds) == by_uid[ds.SOPInstanceUID].raw
        assert archive.retrieve_requests[-1].move_destination == "DEST"
    finally:
        scp.close()


def test_move_unknown_and_unreachable_destination(listen: Callable[..., Listener], archive: Archive) -> None:
    listener = listen()
    assert [s for s, _ in pyn_move(listener.port, retrieve_identifier(archive), "NOWHERE")] == [0xA801]
    archive.destinations["GONE"] = ("127.0.0.1", free_port(), "GONE")
    assert [s for s, _ in pyn_move(listener.port, retrieve_identifier(archive), "GONE")] == [0xA801]


def test_store_association_errors() -> None:
    with pytest.raises(StoreAssociationError):
        StoreAssociation.open(
            "127.0.0.1", free_port(), "X", "Y", [(CTImageStorage, [ExplicitVRLittleEndian])]
        )
    ae = AE(ae_title="PICKY")
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.require_called_aet = True
    port = free_port()

    def on_store(event: evt.Event) -> Dataset:
        rsp = Dataset()
        rsp.Status = 0xB007
        rsp.ErrorComment = "coerced"
        return rsp

    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        with pytest.raises(AssociationRejected) as info:
            StoreAssociation.open(
                "127.0.0.1", port, "WRONG", "Y", [(CTImageStorage, [ExplicitVRLittleEndian])]
            )
        assert info.value.result == 1
        assoc = StoreAssociation.open(
            "127.0.0.1",
            port,
            "PICKY",
            "Y",
            [(CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])],
        )
        assert assoc.accepted(CTImageStorage, JPEG2000Lossless) is None
        assert assoc.accepted(CTImageStorage, ImplicitVRLittleEndian) is None
        assert assoc.accepted(CTImageStorage, ExplicitVRLittleEndian) == 1
        ds = make_ct(generate_uid(), generate_uid(), 1, rows=512)
        status, comment = assoc.send_c_store(1, CTImageStorage, ds.SOPInstanceUID, memoryview(encode(ds)), 1)
        assert (status, comment) == (0xB007, "coerced")
        assoc.release()
        assert not assoc.is_open
    finally:
        assert server is not None
        server.shutdown()


# ---------------------------------------------------------------------------
# DCMTK as the requestor
# ---------------------------------------------------------------------------


def dcmtk(tool: str) -> str:
    """Path of a DCMTK tool (the venv has pynetdicom apps of the same name)."""
    path = Path("/usr/bin") / tool
    if path.exists():
        return str(path)
    venv_bin = os.path.realpath(Path(sys.executable).parent)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if directory and os.path.realpath(directory) != venv_bin:
            candidate = shutil.which(tool, path=directory)
            if candidate:
                return candidate
    pytest.skip(f"DCMTK {tool} not installed")


def run_dcmtk(tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.run(
        [dcmtk(tool), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def keys(ds: Dataset) -> list[str]:
    args = []
    for elem in ds:
        value = elem.value if elem.value is not None else ""
        args += ["-k", f"{elem.keyword}={value}" if value != "" else elem.keyword]
    return args


@pytest.mark.e2e
@pytest.mark.parametrize("level", ["STUDY", "SERIES", "IMAGE"])
def test_findscu(listen: Callable[..., Listener], archive: Archive, tmp_path: Path, level: str) -> None:
    listener = listen()
    identifier = find_identifier(level, PatientID="QR-1", StudyInstanceUID="")
    if level == "STUDY":
        identifier.StudyDate = ""
    else:
        identifier.StudyInstanceUID = study_uid(archive)
        identifier.SeriesInstanceUID = ""
    if level == "IMAGE":
        identifier.SeriesInstanceUID = archive.instances[0].dataset.SeriesInstanceUID
        identifier.SOPInstanceUID = ""
    result = run_dcmtk(
        "findscu", "-S", "-aec", "DICOMHUB", "-X", "-od", str(tmp_path),
        *keys(identifier), "127.0.0.1", str(listener.port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    responses = [dcmread(p) for p in sorted(tmp_path.glob("rsp*.dcm"))]
    expected = {"STUDY": 1, "SERIES": 2, "IMAGE": 20}[level]
    assert len(responses) == expected
    if level == "STUDY":
        assert responses[0].StudyInstanceUID == study_uid(archive)
        assert responses[0].StudyDate == "20240102"
    if level == "IMAGE":
        assert {r.SOPInstanceUID for r in responses} == {
            s.dataset.SOPInstanceUID for s in archive.instances[:20]
        }


@pytest.mark.e2e
def test_findscu_cancel(listen: Callable[..., Listener], archive: Archive, tmp_path: Path) -> None:
    archive.find_delay = 0.02
    listener = listen()
    identifier = find_identifier("IMAGE", StudyInstanceUID=study_uid(archive), SOPInstanceUID="")
    result = run_dcmtk(
        "findscu", "-v", "-S", "-aec", "DICOMHUB", "--cancel", "3", "-X", "-od", str(tmp_path),
        *keys(identifier), "127.0.0.1", str(listener.port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert len(list(tmp_path.glob("rsp*.dcm"))) < 10
    assert listener.event("find")["status"] == 0xFE00


@pytest.mark.e2e
def test_getscu_retrieves_everything(
    listen: Callable[..., Listener], archive: Archive, tmp_path: Path
) -> None:
    listener = listen()
    result = run_dcmtk(
        "getscu", "-S", "-aec", "DICOMHUB", "-od", str(tmp_path),
        *keys(retrieve_identifier(archive)), "127.0.0.1", str(listener.port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    files = list(tmp_path.iterdir())
    assert len(files) == 23
    by_uid = {s.dataset.SOPInstanceUID: s for s in archive.instances}
    for path in files:
        ds = dcmread(path)
        stored = by_uid.pop(ds.SOPInstanceUID)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.PixelData == stored.dataset.PixelData
        expected = np.frombuffer(stored.dataset.PixelData, "<u2").reshape(ds.Rows, ds.Columns)
        assert np.array_equal(ds.pixel_array, expected)
        del ds.file_meta
        assert encode(ds) == stored.raw
    assert not by_uid
    assert listener.event("get")["completed"] == 23


@pytest.mark.e2e
@pytest.mark.parametrize("compressed", [5, 23])
def test_getscu_compressed_without_context_fails(
    listen: Callable[..., Listener], archive: Archive, tmp_path: Path, compressed: int
) -> None:
    for stored in archive.instances[:compressed]:
        stored.transfer_syntax = JPEG2000Lossless
    listener = listen()
    result = run_dcmtk(
        "getscu", "-v", "-S", "-aec", "DICOMHUB", "-od", str(tmp_path),
        *keys(retrieve_identifier(archive)), "127.0.0.1", str(listener.port),
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert len(list(tmp_path.iterdir())) == 23 - compressed
    payload = listener.event("get")
    assert payload["failed"] == compressed
    expected = 0xA702 if compressed == 23 else 0xB000
    assert payload["status"] == expected
    assert "Failed" in output or "Warning" in output, output


class StoreSCPProcess:
    """DCMTK storescp writing into a directory."""

    def __init__(self, directory: Path, ae_title: str = "STORESCP") -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [dcmtk("storescp"), "-aet", ae_title, "-od", str(directory), str(self.port)],
            env=dict(os.environ, TCP_NODELAY="1"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "storescp did not start"
                time.sleep(0.05)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.mark.e2e
def test_movescu_to_storescp(listen: Callable[..., Listener], archive: Archive, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    scp = StoreSCPProcess(out)
    try:
        archive.destinations["STORESCP"] = ("127.0.0.1", scp.port, "STORESCP")
        listener = listen()
        result = run_dcmtk(
            "movescu", "-S", "-aec", "DICOMHUB", "-aem", "STORESCP",
            *keys(retrieve_identifier(archive)), "127.0.0.1", str(listener.port),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + result.stdout
        deadline = time.monotonic() + 5
        while len(list(out.iterdir())) < 23 and time.monotonic() < deadline:
            time.sleep(0.05)
        files = list(out.iterdir())
        assert len(files) == 23
        by_uid = {s.dataset.SOPInstanceUID: s for s in archive.instances}
        for path in files:
            ds = dcmread(path)
            assert ds.PixelData == by_uid.pop(ds.SOPInstanceUID).dataset.PixelData
        payload = listener.event("move")
        assert payload["completed"] == 23 and payload["status"] == 0
    finally:
        scp.close()


@pytest.mark.e2e
def test_movescu_unreachable_and_refused(
    listen: Callable[..., Listener], archive: Archive, tmp_path: Path
) -> None:
    archive.destinations["GONE"] = ("127.0.0.1", free_port(), "GONE")
    listener = listen()
    result = run_dcmtk(
        "movescu", "-v", "-S", "-aec", "DICOMHUB", "-aem", "GONE",
        *keys(retrieve_identifier(archive)), "127.0.0.1", str(listener.port),
    )  # fmt: skip
    assert listener.event("move")["status"] == 0xA801
    assert "Final Move Response (Refused: MoveDestinationUnknown)" in result.stdout + result.stderr
    listener.events.clear()
    archive.refuse_retrieve = (0xA900, "identifier does not match")
    result = run_dcmtk(
        "movescu", "-v", "-S", "-aec", "DICOMHUB", "-aem", "GONE",
        *keys(retrieve_identifier(archive)), "127.0.0.1", str(listener.port),
    )  # fmt: skip
    assert listener.event("move")["status"] == 0xA900
    assert "Final Move Response (Error: DataSetDoesNotMatchSOPClass)" in (result.stdout + result.stderr)
