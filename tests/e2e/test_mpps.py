"""MPPS end to end: ``dicomhub serve`` with pynetdicom as the modality.

- N-CREATE IN PROGRESS then N-SET COMPLETED moves the order (REST shows it IN PROGRESS,
  then COMPLETED), N-GET gives back what was set, ``/api/mpps`` lists the step linked;
- the discontinued path, and an unscheduled step (no order, no SOP Instance UID: the SCP
  makes one and returns it), listed unlinked by ``dicomhub mpps list``;
- each refusal with its status, Attribute Identifier List and Error Comment: 0x0106 (bad
  status, an attribute N-SET may not set), 0x0120 (missing), 0x0105 (unknown attribute),
  0x0111 (duplicate), 0x0112 (unknown instance), 0x0110 (N-SET after COMPLETED); the
  server stays up and the next N-CREATE works;
- the HL7 ORM^O01 status messages (ORC-5 IP, CM, DC) reach a real MLLP listener in the
  test, which refuses the first delivery (MSA|AE): it arrives on a retry, and the DIMSE
  answers never wait for it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from .helpers import HOST, DicomhubServer, ServerPool, assert_alive, run_cli

pytestmark = pytest.mark.e2e

MPPS = "1.2.840.10008.3.1.2.3.3"
SB, EB = b"\x0b", b"\x1c\x0d"


class MllpListener:
    """An order system's MLLP listener: records each message and answers AE to the
    first one (to see the archive retry), AA to the others."""

    def __init__(self) -> None:
        self.sock = socket.create_server((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[str] = []
        self.refused = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                data = b""
                try:
                    while EB not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    continue
                if EB not in data:
                    continue
                message = data.split(EB)[0].lstrip(SB).decode("utf-8")
                control = next(s for s in message.split("\r") if s.startswith("MSH")).split("|")[9]
                code = "AE" if self.refused == 0 else "AA"
                if code == "AE":
                    self.refused += 1
                else:
                    self.received.append(message)
                ack = f"MSH|^~\\&|RIS||DICOMHUB||20260101||ACK|A{control}|P|2.5.1\rMSA|{code}|{control}"
                conn.sendall(SB + ack.encode() + EB)

    def orc5(self, accession: str) -> list[str]:
        """ORC-5 of the messages received for ``accession`` (OBR-18), in order."""
        out = []
        for message in list(self.received):
            segments = {s[:3]: s.split("|") for s in message.split("\r")}
            if segments["OBR"][18] == accession:
                out.append(segments["ORC"][5])
        return out

    def wait_for(self, accession: str, codes: list[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.orc5(accession) != codes:
            assert time.monotonic() < deadline, f"got {self.orc5(accession)} for {accession}, not {codes}"
            time.sleep(0.2)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture(scope="module")
def ris() -> Iterator[MllpListener]:
    listener = MllpListener()
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool, ris: MllpListener) -> DicomhubServer:
    return module_servers.start("mpps", args=["--mpps-hl7-destination", f"{HOST}:{ris.port}"])


def _order(hub: DicomhubServer, accession: str) -> dict[str, Any]:
    r = httpx.get(f"{hub.base_url}/api/orders/{accession}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _schedule(hub: DicomhubServer, accession: str) -> None:
    body = {
        "accession_number": accession, "patient_id": "P1", "patient_name": "Doe^Jane", "modality": "CT",
        "step_id": f"SPS{accession}", "procedure_id": f"RP{accession}", "station_ae_title": "CTAE",
    }  # fmt: skip
    r = httpx.post(f"{hub.base_url}/api/orders", json=body, timeout=10)
    assert r.status_code == 201, r.text


def attribute_list(accession: str, status: str = "IN PROGRESS") -> Dataset:
    """An N-CREATE Attribute List with every Type 1 and 2 attribute of PS3.4 Table F.7.2-1."""
    item = Dataset()
    item.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    item.ReferencedStudySequence = Sequence()
    item.AccessionNumber = accession
    item.RequestedProcedureID = f"RP{accession}"
    item.RequestedProcedureDescription = ""
    item.ScheduledProcedureStepID = f"SPS{accession}"
    item.ScheduledProcedureStepDescription = ""
    item.ScheduledProtocolCodeSequence = Sequence()
    ds = Dataset()
    ds.ScheduledStepAttributesSequence = Sequence([item])
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "P1", "", "F"
    ds.ReferencedPatientSequence = Sequence()
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CTAE"
    ds.PerformedStationName = ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20260301", "101500"
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepDescription = ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = Sequence()
    ds.PerformedProcedureStepEndDate = ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = Sequence()
    ds.PerformedSeriesSequence = Sequence()
    return ds


def modification_list(status: str, series: bool = True) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate, ds.PerformedProcedureStepEndTime = "20260301", "103000"
    if series:
        item = Dataset()
        item.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1.1"
        item.RetrieveAETitle = item.SeriesDescription = item.PerformingPhysicianName = ""
        item.OperatorsName = item.ProtocolName = ""
        item.ReferencedImageSequence = Sequence()
        item.ReferencedNonImageCompositeSOPInstanceSequence = Sequence()
        ds.PerformedSeriesSequence = Sequence([item])
    return ds


class Modality:
    """A pynetdicom association proposing MPPS; keeps the last response's command set,
    for what pynetdicom's status leaves out (Affected SOP Instance UID, and the Attribute
    Identifier List of an N-CREATE)."""

    def __init__(self, hub: DicomhubServer) -> None:
        self.ae = AE(ae_title="CTAE")
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 60
        self.ae.add_requested_context(MPPS, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.last: Dataset = Dataset()
        self.assoc = self.ae.associate(
            HOST, hub.dimse_port, ae_title=hub.aet, evt_handlers=[(evt.EVT_DIMSE_RECV, self._received)]
        )
        assert self.assoc.is_established

    def _received(self, event: evt.Event) -> None:
        self.last = event.message.command_set

    def create(self, ds: Dataset, uid: str | None) -> tuple[int, Dataset]:
        status, _ = self.assoc.send_n_create(ds, MPPS, uid)
        return int(status.Status), self.last

    def set(self, ds: Dataset, uid: str) -> tuple[int, Dataset]:
        status, _ = self.assoc.send_n_set(ds, MPPS, uid)
        return int(status.Status), self.last

    def close(self) -> None:
        self.assoc.release()
        self.ae.shutdown()


@pytest.fixture
def modality(hub: DicomhubServer) -> Iterator[Modality]:
    m = Modality(hub)
    yield m
    m.close()


def _tags(command: Dataset) -> list[int]:
    value = command.get("AttributeIdentifierList", [])
    return [int(t) for t in (value if isinstance(value, list | MultiValue) else [value])]


def test_in_progress_then_completed(hub: DicomhubServer, ris: MllpListener, modality: Modality) -> None:
    _schedule(hub, "M1")
    uid = generate_uid()
    status, command = modality.create(attribute_list("M1"), uid)
    assert status == 0x0000 and command.AffectedSOPInstanceUID == uid
    assert _order(hub, "M1")["status"] == "IN PROGRESS"
    assert modality.set(modification_list("COMPLETED"), uid)[0] == 0x0000
    order = _order(hub, "M1")
    assert order["status"] == "COMPLETED"
    assert order["procedures"][0]["steps"][0]["status"] == "COMPLETED"
    result, got = modality.assoc.send_n_get([Tag(0x00400340), Tag(0x00400252)], MPPS, uid)
    assert result.Status == 0x0000 and got is not None
    assert got.PerformedProcedureStepStatus == "COMPLETED"
    assert got.PerformedSeriesSequence[0].SeriesInstanceUID == "1.2.826.0.1.3680043.8.498.1.1"
    listed = httpx.get(f"{hub.base_url}/api/mpps", timeout=10).json()
    mine = next(s for s in listed if s["sop_instance_uid"] == uid)
    assert mine["status"] == "COMPLETED" and mine["linked"] and mine["linked_orders"] == [order["id"]]
    # Both changes reach the order system, the refused first delivery on a retry.
    ris.wait_for("M1", ["IP", "CM"])
    assert ris.refused == 1
    orc = next(s for s in ris.received[0].split("\r") if s.startswith("ORC")).split("|")
    assert orc[1] == "SC"


def test_discontinued_and_unscheduled(hub: DicomhubServer, ris: MllpListener, modality: Modality) -> None:
    _schedule(hub, "M2")
    uid = generate_uid()
    assert modality.create(attribute_list("M2"), uid)[0] == 0x0000
    assert modality.set(modification_list("DISCONTINUED", series=False), uid)[0] == 0x0000
    assert _order(hub, "M2")["status"] == "DISCONTINUED"
    ris.wait_for("M2", ["IP", "DC"])
    # No order with this Accession Number and no SOP Instance UID: accepted, the SCP's UID returned.
    status, command = modality.create(attribute_list("NOORDER"), None)
    assert status == 0x0000
    made = str(command.AffectedSOPInstanceUID)
    assert made.startswith("2.25.")
    code, out = run_cli("mpps", "list", "--unlinked", "--json", "--data-dir", str(hub.data_dir))
    assert code == 0, out
    unlinked = json.loads(out)
    assert [s["sop_instance_uid"] for s in unlinked] == [made]
    assert unlinked[0]["scheduled_steps"][0]["accession_number"] == "NOORDER"


def test_refusals(hub: DicomhubServer, modality: Modality) -> None:
    # N-CREATE not IN PROGRESS: 0x0106 naming the status.
    status, command = modality.create(attribute_list("M3", status="COMPLETED"), generate_uid())
    assert status == 0x0106 and _tags(command) == [0x00400252]
    assert "IN PROGRESS" in command.ErrorComment
    # A Type 1 attribute missing: 0x0120 with its tag.
    incomplete = attribute_list("M3")
    del incomplete.PerformedStationAETitle
    status, command = modality.create(incomplete, generate_uid())
    assert status == 0x0120 and _tags(command) == [0x00400241]
    # Unknown instance: 0x0112.
    assert modality.set(modification_list("COMPLETED"), generate_uid())[0] == 0x0112
    uid = generate_uid()
    assert modality.create(attribute_list("M3"), uid)[0] == 0x0000
    # The same instance again: 0x0111.
    assert modality.create(attribute_list("M3"), uid)[0] == 0x0111
    # N-SET of what identifies the step: 0x0106; of what the IOD lacks: 0x0105.
    not_allowed = modification_list("IN PROGRESS", series=False)
    not_allowed.PatientID = "OTHER"
    status, command = modality.set(not_allowed, uid)
    assert status == 0x0106 and _tags(command) == [0x00100020]
    unknown = modification_list("IN PROGRESS", series=False)
    unknown.Rows = 512
    status, command = modality.set(unknown, uid)
    assert status == 0x0105 and _tags(command) == [0x00280010]
    # COMPLETED without a performed series: 0x0120 naming the sequence.
    status, command = modality.set(modification_list("COMPLETED", series=False), uid)
    assert status == 0x0120 and _tags(command) == [0x00400340]
    assert modality.set(modification_list("COMPLETED"), uid)[0] == 0x0000
    # Once COMPLETED it may no longer be updated: 0x0110 saying why.
    status, command = modality.set(modification_list("DISCONTINUED"), uid)
    assert status == 0x0110 and "may no longer be updated" in command.ErrorComment
    result, got = modality.assoc.send_n_get([Tag(0x00400252)], MPPS, uid)
    assert result.Status == 0x0000 and got is not None and got.PerformedProcedureStepStatus == "COMPLETED"
    assert_alive(hub)
    # The association and the server go on serving.
    assert modality.create(attribute_list("M3"), generate_uid())[0] == 0x0000
    r = httpx.get(f"{hub.base_url}/api/mpps", params={"status": "bogus"}, timeout=10)
    assert r.status_code == 400 and "unknown status" in r.text


def test_dimse_answer_does_not_wait_for_a_silent_order_system(module_servers: ServerPool) -> None:
    # The destination accepts the connection but never answers: a sender on the DIMSE
    # path would hang for network_timeout (60 s); the steps are accepted at once instead.
    with socket.create_server((HOST, 0)) as silent:
        port = silent.getsockname()[1]
        srv = module_servers.start("mpps-silent", args=["--mpps-hl7-destination", f"{HOST}:{port}"])
        _schedule(srv, "D1")
        m = Modality(srv)
        try:
            uid = generate_uid()
            started = time.monotonic()
            assert m.create(attribute_list("D1"), uid)[0] == 0x0000
            assert m.set(modification_list("COMPLETED"), uid)[0] == 0x0000
            assert time.monotonic() - started < 20
        finally:
            m.close()
        assert _order(srv, "D1")["status"] == "COMPLETED"
