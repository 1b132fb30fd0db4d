"""Modality Worklist SCP end to end, side by side with DCMTK's wlmscpfs.

Orders are placed through the HL7 MLLP listener of a real ``dicomhub serve``;
modalities query with ``findscu -W`` (modality, station AE title, date range,
combined date and time range, patient name wildcard, universal) and with
pynetdicom (C-CANCEL after the first answer, an unsupported key -> 0xFF01, bad
identifiers -> 0xA900 with an Error Comment, and the server answering the next
query after them).

The same worklist is written as wlmscpfs worklist files (``<dir>/<AE>/*.wl``
and a ``lockfile``) and the same findscu queries run against both: the answers
are compared on their matched keys. Where wlmscpfs differs on purpose it is
asserted here: it offers every file whatever its Scheduled Procedure Step
Status (dicomhub offers SCHEDULED steps only), and it matches the start date and
start time separately where PS3.4 C.2.2.2.5.1 combines them into one range.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hl7.client
import pydicom
import pytest
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from .helpers import HOST, DicomhubServer, ServerPool, free_port, popen_dcmtk, run_dcmtk, wait_for_port

pytestmark = pytest.mark.e2e

MWL = "1.2.840.10008.5.1.4.31"
MSH = "MSH|^~\\&|RIS|HOSP|DICOMHUB|ARCH|20260101120000||{type}|{id}|P|2.5.1||||||UNICODE UTF-8"
WLM_AET = "WLMSCP"
BULK = 400  # steps of one order, so that a C-CANCEL arrives while answers are still going out


@dataclass(frozen=True)
class Step:
    accession: str
    patient_id: str
    name: str
    modality: str
    station: str
    start: str  # YYYYMMDDHHMMSS
    physician: str = ""
    status: str = "SCHEDULED"  # what the order system does to it after placing it

    def orm(self, msg_id: str, control: str = "NW", order_status: str = "") -> str:
        obr = ["OBR", "1", f"PL{self.accession}", f"FL{self.accession}", "CTHEAD^Head^LOCAL"]
        obr += [""] * 13 + [self.accession, f"RP{self.accession}", f"SPS{self.accession}", self.station]
        obr += ["", "", self.modality, "", "", f"^^^{self.start}^^R"] + [""] * 6
        obr.append(f"ID^{self.physician}")  # OBR-34 is an NDL: its name starts at the second component
        return "\r".join(
            [
                MSH.format(type="ORM^O01", id=msg_id),
                f"PID|||{self.patient_id}^^^HOSP^MR||{self.name}||19700102|F",
                f"ORC|{control}|PL{self.accession}|FL{self.accession}||{order_status}",
                "|".join(obr),
            ]
        )


STEPS = (
    Step("A1", "P1", "Doe^Jane", "CT", "CTAE", "20260301101500", "Smith^John"),
    Step("A2", "P2", "Doe^John", "CT", "CTAE", "20260301143000", "Smith^Anne"),
    Step("A3", "P3", "Roe^Richard", "MR", "MRAE", "20260302080000", "Jones^Bob"),
    Step("A4", "P4", "Dough^Jane", "CT", "CT2AE", "20260302160000"),
    Step("A5", "P5", "Poe^Edgar", "MR", "MRAE", "20260303090000", status="IN PROGRESS"),
    Step("A6", "P6", "Doe^Anna", "CT", "CTAE", "20260301090000", status="CANCELLED"),
)
OFFERED = {s.accession for s in STEPS if s.status == "SCHEDULED"}


def _ack(reply: bytes | str) -> str:
    text = reply.decode() if isinstance(reply, bytes) else reply
    return next(s for s in text.strip("\x0b\x1c\r").split("\r") if s.startswith("MSA")).split("|")[1]


def _bulk_omi() -> str:
    segments = [
        MSH.format(type="OMI^O23^OMI_O23", id="bulk"),
        "PID|||PB^^^HOSP^MR||Bulk^Patient||19800101|M",
        "ORC|NW|PLB|FLB",
        "TQ1|||||||20260310080000||R",
        "OBR|1|PLB|FLB|USABD^US Abdomen^LOCAL",
    ]
    segments += [f"IPC|B1|RPB|1.2.826.0.1.3680043.2.1143.9|S{i}|US||US1||BULKAE" for i in range(BULK)]
    return "\r".join(segments)


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool) -> DicomhubServer:
    port = free_port()
    srv = module_servers.start("mwl", args=["--hl7-port", str(port)])
    client = hl7.client.MLLPClient(HOST, port, encoding="utf-8")
    try:
        for i, step in enumerate(STEPS):
            assert _ack(client.send_message(step.orm(f"m{i}"))) == "AA"
        moves = {"IN PROGRESS": ("SC", "IP"), "CANCELLED": ("CA", "")}
        for i, step in enumerate(s for s in STEPS if s.status != "SCHEDULED"):
            control, status = moves[step.status]
            assert _ack(client.send_message(step.orm(f"s{i}", control, status))) == "AA"
        assert _ack(client.send_message(_bulk_omi())) == "AA"
    finally:
        client.close()
    return srv


def _wl_file(step: Step) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.AccessionNumber = step.accession
    ds.PatientName = step.name
    ds.PatientID = step.patient_id
    ds.IssuerOfPatientID = "HOSP"
    ds.PatientBirthDate = "19700102"
    ds.PatientSex = "F"
    ds.RequestedProcedureID = f"RP{step.accession}"
    ds.RequestedProcedureDescription = "Head"
    ds.StudyInstanceUID = generate_uid()
    ds.ReferringPhysicianName = ""
    sps = Dataset()
    sps.Modality = step.modality
    sps.ScheduledStationAETitle = step.station
    sps.ScheduledProcedureStepStartDate = step.start[:8]
    sps.ScheduledProcedureStepStartTime = step.start[8:]
    sps.ScheduledPerformingPhysicianName = step.physician
    sps.ScheduledProcedureStepID = f"SPS{step.accession}"
    sps.ScheduledProcedureStepDescription = "Head"
    sps.ScheduledProcedureStepStatus = step.status
    ds.ScheduledProcedureStepSequence = DicomSequence([sps])
    return ds


@pytest.fixture(scope="module")
def wlmscpfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """wlmscpfs serving the same steps (all of them: it does not look at their status)."""
    base = tmp_path_factory.mktemp("wlm")
    folder = base / WLM_AET
    folder.mkdir()
    (folder / "lockfile").touch()
    for step in STEPS:
        ds = _wl_file(step)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MWL
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"{step.accession}.wl", enforce_file_format=True)
    port = free_port()
    proc = popen_dcmtk("wlmscpfs", "-dfr", "-dfp", base, str(port), log=base / "wlmscpfs.log")
    try:
        wait_for_port(port, proc=proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_FINAL = re.compile(r"Received Final Find Response \(([^)]*)\)")


def findscu_w(port: int, aet: str, keys: Sequence[str], out_dir: Path) -> tuple[str, list[Dataset]]:
    """``findscu -W`` with ``-k`` keys; (final status as findscu names it, answers)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("rsp*.dcm"):
        old.unlink()
    args = [a for k in keys for a in ("-k", k)]
    rc, out = run_dcmtk(
        "findscu", "-W", "-v", "-X", "-od", out_dir, "-aet", "MODALITY", "-aec", aet, *args, HOST, str(port)
    )
    match = _FINAL.search(out)
    assert rc == 0 and match is not None, f"findscu returned {rc}:\n{out[-4000:]}"
    return match[1], [pydicom.dcmread(p, force=True) for p in sorted(out_dir.glob("rsp*.dcm"))]


RETURN_KEYS = [
    "PatientName",
    "PatientID",
    "AccessionNumber",
    "RequestedProcedureID",
    "ScheduledProcedureStepSequence[0].Modality",
    "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
    "ScheduledProcedureStepSequence[0].ScheduledPerformingPhysicianName",
]


def _keys(**matching: str) -> list[str]:
    """The return keys, with values for the ``matching`` ones (``step_`` prefix: in the item)."""
    keys = []
    for key in RETURN_KEYS:
        short = key.split(".")[-1]
        name = f"step_{short}" if "." in key else short
        keys.append(f"{key}={matching[name]}" if name in matching else key)
    return keys


def _normalised(answer: Dataset) -> tuple[str, ...]:
    item = answer.ScheduledProcedureStepSequence[0]
    return (
        str(answer.AccessionNumber),
        str(answer.PatientID),
        str(answer.PatientName),
        str(answer.RequestedProcedureID),
        str(item.Modality),
        str(item.ScheduledStationAETitle),
        str(item.ScheduledProcedureStepStartDate),
        str(item.ScheduledProcedureStepStartTime)[:6],
        str(item.ScheduledProcedureStepID),
        str(item.get("ScheduledPerformingPhysicianName", "") or ""),
    )


QUERIES = {
    "modality": ({"step_Modality": "CT"}, {"A1", "A2", "A4"}),
    "station": ({"step_ScheduledStationAETitle": "MRAE"}, {"A3"}),
    "date range": ({"step_ScheduledProcedureStepStartDate": "20260301-20260302"}, {"A1", "A2", "A3", "A4"}),
    "one day": ({"step_ScheduledProcedureStepStartDate": "20260302"}, {"A3", "A4"}),
    "name wildcard": ({"PatientName": "Doe*"}, {"A1", "A2"}),
    "name ?": ({"PatientName": "D?e^J*"}, {"A1", "A2"}),
    "physician": ({"step_ScheduledPerformingPhysicianName": "Smith^*"}, {"A1", "A2"}),
    "patient id": ({"PatientID": "P3"}, {"A3"}),
    "accession": ({"AccessionNumber": "A4"}, {"A4"}),
    "modality + station + day": (
        {
            "step_Modality": "CT",
            "step_ScheduledStationAETitle": "CTAE",
            "step_ScheduledProcedureStepStartDate": "20260301",
        },
        {"A1", "A2"},
    ),
    # PS3.4 C.2.2.2.5.1: one range, 1 March 10:00 to 2 March 15:00 (A3 starts 08:00 on 2 March).
    "combined date and time": (
        {
            "step_ScheduledProcedureStepStartDate": "20260301-20260302",
            "step_ScheduledProcedureStepStartTime": "1000-1500",
        },
        {"A1", "A2", "A3"},
    ),
    "universal": ({}, OFFERED),
}


@pytest.mark.parametrize("name", list(QUERIES))
def test_findscu_worklist_same_as_wlmscpfs(
    name: str, hub: DicomhubServer, wlmscpfs: int, tmp_path: Path
) -> None:
    matching, expected = QUERIES[name]
    keys = _keys(**matching)
    status, ours = findscu_w(hub.dimse_port, hub.aet, keys, tmp_path / "ours")
    assert status == "Success"
    # The bulk order (for C-CANCEL) is not in the wlmscpfs files: universal matching finds it.
    bulk = [a for a in ours if a.AccessionNumber == "B1"]
    assert len(bulk) == (BULK if not matching else 0)
    ours = [a for a in ours if a.AccessionNumber != "B1"]
    status, theirs = findscu_w(wlmscpfs, WLM_AET, keys, tmp_path / "theirs")
    assert status == "Success"
    assert {a.AccessionNumber for a in ours} == expected
    # wlmscpfs offers steps whatever their status; with those left out, the same answers.
    scheduled = [t for t in theirs if t.AccessionNumber in OFFERED]
    assert sorted(map(_normalised, ours)) == sorted(map(_normalised, scheduled))
    # Only the keys asked for (Specific Character Set aside).
    asked = {k.split("=")[0].split(".")[0].split("[")[0] for k in keys}
    for answer in ours:
        assert {e.keyword for e in answer if e.keyword != "SpecificCharacterSet"} == asked


# Where wlmscpfs departs from PS3.4: (matching keys, dicomhub's answers, wlmscpfs's scheduled ones).
DIFFERENCES = {
    # C.2.2.2.4 allows wildcards for AE values; wlmscpfs matches the station AE title as a
    # single value only, so "CT*" finds nothing there.
    "station AE wildcard": ({"step_ScheduledStationAETitle": "CT*"}, {"A1", "A2", "A4"}, set()),
}


@pytest.mark.parametrize("name", list(DIFFERENCES))
def test_where_wlmscpfs_differs_ours_is_the_standard(
    name: str, hub: DicomhubServer, wlmscpfs: int, tmp_path: Path
) -> None:
    matching, expected, wlmscpfs_answers = DIFFERENCES[name]
    keys = _keys(**matching)
    status, ours = findscu_w(hub.dimse_port, hub.aet, keys, tmp_path / "ours")
    assert status == "Success"
    assert {a.AccessionNumber for a in ours} == expected
    status, theirs = findscu_w(wlmscpfs, WLM_AET, keys, tmp_path / "theirs")
    assert status == "Success"
    assert {t.AccessionNumber for t in theirs if t.AccessionNumber in OFFERED} == wlmscpfs_answers


def test_returned_keys_of_the_scheduled_workflow_query(hub: DicomhubServer, tmp_path: Path) -> None:
    """The IHE SWF return keys, filled from the order (Requesting Physician: not held, zero-length)."""
    keys = [
        "AccessionNumber=A1",
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "RequestedProcedureID",
        "RequestedProcedureDescription",
        "RequestedProcedureCodeSequence",
        "RequestedProcedurePriority",
        "ReferringPhysicianName",
        "RequestingPhysician",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription",
        "ScheduledProcedureStepSequence[0].ScheduledStationName",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepLocation",
        "ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence",
    ]
    status, answers = findscu_w(hub.dimse_port, hub.aet, keys, tmp_path)
    assert status == "Success" and len(answers) == 1
    a = answers[0]
    assert (a.PatientName, a.PatientID, a.IssuerOfPatientID) == ("Doe^Jane", "P1", "HOSP")
    assert (a.PatientBirthDate, a.PatientSex, a.RequestedProcedureID) == ("19700102", "F", "RPA1")
    assert a.RequestedProcedureCodeSequence[0].CodeValue == "CTHEAD"
    assert a.RequestedProcedurePriority == "ROUTINE" and a.RequestingPhysician == ""
    item = a.ScheduledProcedureStepSequence[0]
    assert item.ScheduledProcedureStepStatus == "SCHEDULED"
    assert item.ScheduledProcedureStepDescription == "Head"
    assert "Modality" not in item  # not asked for


def _pyn_find(port: int, identifier: Dataset, cancel: bool = False) -> tuple[list[int], list[str]]:
    """pynetdicom C-FIND; (statuses of every response, Error Comments).

    With ``cancel`` a C-CANCEL-RQ follows the C-FIND-RQ as soon as the request
    has left, from another thread, while the server is still answering. Waiting
    for the first answer before cancelling raced the server: it sends all 400
    answers in well under 100 ms, sooner than a loaded machine wakes the
    requestor's reader.
    """
    ae = AE(ae_title="PYNMOD")
    ae.add_requested_context(MWL)
    request_sent = threading.Event()

    def on_sent(event: Any) -> None:
        if type(event.message).__name__ == "C_FIND_RQ":
            request_sent.set()

    assoc = ae.associate(HOST, port, ae_title="DICOMHUB", evt_handlers=[(evt.EVT_DIMSE_SENT, on_sent)])
    assert assoc.is_established
    statuses: list[int] = []
    comments: list[str] = []

    def send_cancel() -> None:
        if request_sent.wait(30):
            assoc.send_c_cancel(7, assoc.accepted_contexts[0].context_id)

    canceller = threading.Thread(target=send_cancel, daemon=True) if cancel else None
    if canceller is not None:
        canceller.start()
    try:
        responses = assoc.send_c_find(identifier, MWL, msg_id=7)
        for status, _answer in responses:
            assert status is not None, "no response (association aborted?)"
            statuses.append(int(status.Status))
            comments.append(str(status.get("ErrorComment", "")))
    finally:
        if canceller is not None:
            canceller.join(30)
        assoc.release()
        ae.shutdown()
    return statuses, comments


def _sps_query(**item: str) -> Dataset:
    """A worklist identifier; ``item``: Scheduled Procedure Step keys, malformed ones included."""
    reading, writing = config.settings.reading_validation_mode, config.settings.writing_validation_mode
    config.settings.reading_validation_mode = config.settings.writing_validation_mode = config.IGNORE
    try:
        return _build_sps_query(item)
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = reading, writing


def _build_sps_query(item: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.PatientName = ""
    ds.AccessionNumber = ""
    sps = Dataset()
    sps.Modality = ""
    sps.ScheduledProcedureStepID = ""
    for key, value in item.items():
        setattr(sps, key, value)
    ds.ScheduledProcedureStepSequence = DicomSequence([sps])
    return ds


def test_c_cancel_between_answers(hub: DicomhubServer) -> None:
    started = time.monotonic()
    statuses, _ = _pyn_find(hub.dimse_port, _sps_query(ScheduledStationAETitle="BULKAE"), cancel=True)
    assert statuses[-1] == 0xFE00, hex(statuses[-1])
    assert len(statuses) - 1 < BULK and set(statuses[:-1]) <= {0xFF00}
    # Without the cancel, all of them.
    statuses, _ = _pyn_find(hub.dimse_port, _sps_query(ScheduledStationAETitle="BULKAE"))
    assert statuses.count(0xFF00) == BULK and statuses[-1] == 0x0000
    assert time.monotonic() - started < 60


def test_unsupported_key_is_pending_warning(hub: DicomhubServer) -> None:
    query = _sps_query(ScheduledStationAETitle="MRAE")
    query.PatientMotherBirthName = ""  # not a worklist key
    statuses, _ = _pyn_find(hub.dimse_port, query)
    assert statuses == [0xFF01, 0x0000]


@pytest.mark.parametrize(
    ("item", "comment"),
    [
        ({"ScheduledProcedureStepStartDate": "2026XX01"}, "not a date"),
        ({"ScheduledProcedureStepStartDate": "20260302-20260301"}, "ends before"),
        ({"ScheduledProcedureStepStartTime": "25"}, "not a time"),
    ],
)
def test_bad_identifier_fails_and_server_answers_next(
    hub: DicomhubServer, item: dict[str, str], comment: str
) -> None:
    statuses, comments = _pyn_find(hub.dimse_port, _sps_query(**item))
    assert statuses == [0xA900] and comment in comments[0], (statuses, comments)
    statuses, _ = _pyn_find(hub.dimse_port, _sps_query(ScheduledStationAETitle="MRAE"))
    assert statuses == [0xFF00, 0x0000]


def test_two_sequence_items_are_refused(hub: DicomhubServer) -> None:
    query = _sps_query(Modality="CT")
    query.ScheduledProcedureStepSequence.append(Dataset())
    statuses, comments = _pyn_find(hub.dimse_port, query)
    assert statuses == [0xA900] and "one item" in comments[0]
