"""Storage Commitment Push Model SCP, driven by pynetdicom acting as a modality.

A modality stores, asks the archive to commit (N-ACTION), and deletes its copy
once the N-EVENT-REPORT says the archive holds every instance. These tests
check the report against what the archive really holds: stored instances,
instances never stored, and a blob damaged on disk after it was stored;
delivery on the requesting association, on a new association once the first
is gone, and across a restart of the server in between.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import datagen
import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from .helpers import HOST, DicomhubServer, ServerPool, free_port, index_rows, read_blob, store_ok, write_blob

pytestmark = pytest.mark.e2e

WELL_KNOWN = "1.2.840.10008.1.20.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MODALITY = "MODALITY1"


class Reports:
    """N-EVENT-REPORTs received by the modality, on any association."""

    def __init__(self) -> None:
        self.items: list[tuple[int, Dataset]] = []
        self.arrived = threading.Condition()

    def handler(self, event: evt.Event) -> tuple[int, None]:
        with self.arrived:
            self.items.append((int(event.event_type), event.event_information))
            self.arrived.notify_all()
        return 0x0000, None  # pynetdicom wants (status, Event Reply)

    def wait_for(self, transaction_uid: str, timeout: float) -> tuple[int, Dataset]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                for event_type, info in self.items:
                    if info.TransactionUID == transaction_uid:
                        return event_type, info
                left = deadline - time.monotonic()
                assert left > 0, f"no report for {transaction_uid} within {timeout} s"
                self.arrived.wait(left)


def action_information(transaction_uid: str, refs: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = DicomSequence(items)
    return ds


def request(server: DicomhubServer, refs: list[tuple[str, str]], reports: Reports | None) -> tuple[str, int]:
    """Send one N-ACTION and release once the report on this association is answered.

    With ``reports`` the modality accepts the report that follows on this association;
    without, it refuses it (0x0110) and the archive must deliver it elsewhere. Either
    way the release waits until the answer has left the socket: pynetdicom runs the
    handler on one thread and sends its answer from another, so releasing as soon as
    the handler has run (or with no handler at all) raced the answer against the
    A-RELEASE-RQ and failed with an invalid-event exception in its reactor thread.
    """
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(StorageCommitmentPushModel)
    answer_queued = threading.Event()
    answered = threading.Event()

    def refuse(event: evt.Event) -> tuple[int, None]:
        return 0x0110, None

    def on_dimse_sent(event: evt.Event) -> None:
        if type(event.message).__name__ == "N_EVENT_REPORT_RSP":
            answer_queued.set()

    def on_pdu_sent(event: evt.Event) -> None:
        # The answer's P-DATA is the only PDU sent after it was queued.
        if answer_queued.is_set():
            answered.set()

    assoc = ae.associate(
        HOST,
        server.dimse_port,
        ae_title=server.aet,
        evt_handlers=[
            (evt.EVT_N_EVENT_REPORT, reports.handler if reports is not None else refuse),
            (evt.EVT_DIMSE_SENT, on_dimse_sent),
            (evt.EVT_PDU_SENT, on_pdu_sent),
        ],
    )
    assert assoc.is_established
    transaction = generate_uid()
    try:
        status, _ = assoc.send_n_action(
            action_information(transaction, refs), 1, StorageCommitmentPushModel, WELL_KNOWN
        )
        if status and status.Status == 0x0000:
            assert answered.wait(20), "no report on the requesting association"
    finally:
        assoc.release()
    return transaction, int(status.Status)


@pytest.fixture
def modality_scp() -> Iterator[tuple[int, Reports, AE]]:
    """The modality's own listener, where a report comes on a new association."""
    reports = Reports()
    ae = AE(ae_title=MODALITY)
    # The archive proposes the SCP role for itself (PS3.4 J.3.3): accept that.
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    port = free_port()
    scp = ae.start_server((HOST, port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)])
    yield port, reports, ae
    scp.shutdown()


def stored_series(server: DicomhubServer, tmp_path: Path, n: int = 3) -> list[Dataset]:
    series = [datagen.write_instance(tmp_path / "in" / f"{i}.dcm", rows=16, cols=16) for i in range(n)]
    store_ok(server, tmp_path / "in", calling=MODALITY, expect=n)
    return series


def refs_of(datasets: list[Dataset]) -> list[tuple[str, str]]:
    return [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets]


def uids(seq: object) -> set[str]:
    return {str(item.ReferencedSOPInstanceUID) for item in seq}  # type: ignore[attr-defined]


def test_commit_after_storing_on_the_same_association(server: DicomhubServer, tmp_path: Path) -> None:
    series = stored_series(server, tmp_path)
    reports = Reports()
    transaction, status = request(server, refs_of(series), reports)
    assert status == 0x0000
    event_type, info = reports.wait_for(transaction, 1)
    assert event_type == 1  # Storage Commitment Request Successful
    assert uids(info.ReferencedSOPSequence) == {str(ds.SOPInstanceUID) for ds in series}
    assert "FailedSOPSequence" not in info
    # The modality acknowledged the report on this association: delivered, never sent again.
    assert transaction_state(server, transaction)["state"] == "delivered"


def transaction_state(server: DicomhubServer, transaction: str, timeout: float = 10) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        rows = httpx.get(server.base_url + "/admin/storage-commitments").json()
        found = [r for r in rows if r["transaction_uid"] == transaction]
        if found and (found[0]["state"] != "pending" or time.monotonic() > deadline):
            return found[0]
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)


def test_dicomhub_as_storage_commitment_scu(server: DicomhubServer, tmp_path: Path) -> None:
    """The SCU side (for migration and forwarding): ask an archive to commit, read its report.

    The archive asked is the module's default server: the request names only
    instances stored here and a made-up one, so it needs no archive of its own."""
    from dicomhub.dimse.commitment import request_commitment
    from dicomhub.model.commitment import CommitmentItem

    peer = server
    series = stored_series(peer, tmp_path, 2)
    missing = CommitmentItem(CT, datagen.uid())
    items = [CommitmentItem(c, i) for c, i in refs_of(series)] + [missing]
    transaction = generate_uid()
    result = request_commitment(HOST, peer.dimse_port, peer.aet, MODALITY, transaction, items, timeout=20)
    assert result is not None and result.transaction_uid == transaction
    assert {i.sop_instance_uid for i in result.successes} == {str(ds.SOPInstanceUID) for ds in series}
    assert result.failures == ((missing, 0x0112),)


def test_instances_never_stored_and_class_conflicts_fail(server: DicomhubServer, tmp_path: Path) -> None:
    series = stored_series(server, tmp_path, 2)
    missing = datagen.uid()
    wrong_class = (
        "1.2.840.10008.5.1.4.1.1.4",  # MR, but the instance is a CT
        str(series[1].SOPInstanceUID),
    )
    reports = Reports()
    refs = [refs_of(series)[0], (CT, missing), wrong_class]
    transaction, status = request(server, refs, reports)
    assert status == 0x0000
    event_type, info = reports.wait_for(transaction, 1)
    assert event_type == 2  # Storage Commitment Request Complete - Failures Exist
    assert uids(info.ReferencedSOPSequence) == {str(series[0].SOPInstanceUID)}
    reasons = {str(i.ReferencedSOPInstanceUID): int(i.FailureReason) for i in info.FailedSOPSequence}
    assert reasons == {missing: 0x0112, str(series[1].SOPInstanceUID): 0x0119}


def test_a_blob_damaged_on_disk_is_not_committed(servers: ServerPool, tmp_path: Path) -> None:
    server = servers.start()
    series = stored_series(server, tmp_path, 2)
    victim = str(series[0].SOPInstanceUID)
    ((key,),) = index_rows(
        server.data_dir, "SELECT blob_key FROM instance WHERE sop_instance_uid = :uid", uid=victim
    )
    stored = read_blob(server.data_dir, str(key))
    assert stored is not None
    data = bytearray(stored)
    data[-10] ^= 0xFF  # one bit pattern in the pixel data: the header still parses
    write_blob(server.data_dir, str(key), bytes(data))
    reports = Reports()
    transaction, status = request(server, refs_of(series), reports)
    event_type, info = reports.wait_for(transaction, 1)
    assert status == 0x0000 and event_type == 2
    assert {str(i.ReferencedSOPInstanceUID): int(i.FailureReason) for i in info.FailedSOPSequence} == {
        victim: 0x0110
    }
    assert uids(info.ReferencedSOPSequence) == {str(series[1].SOPInstanceUID)}


def test_report_on_a_new_association_after_the_first_is_gone(
    servers: ServerPool, tmp_path: Path, modality_scp: tuple[int, Reports, AE]
) -> None:
    port, reports, _ae = modality_scp
    server = servers.start(remote_aes={MODALITY: (HOST, port)})
    series = stored_series(server, tmp_path)
    # The modality refuses the report on the requesting association, so the
    # archive must deliver it on an association of its own.
    transaction, status = request(server, refs_of(series), None)
    assert status == 0x0000
    event_type, info = reports.wait_for(transaction, 30)
    assert event_type == 1
    assert uids(info.ReferencedSOPSequence) == {str(ds.SOPInstanceUID) for ds in series}
    state = transaction_state(server, transaction)
    assert state["state"] == "delivered" and state["result"] is not None


def test_a_restart_between_request_and_report_loses_nothing(servers: ServerPool, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there yet: every delivery attempt fails
    server = servers.start(remote_aes={MODALITY: (HOST, port)})
    series = stored_series(server, tmp_path)
    transaction, status = request(server, refs_of(series), None)
    assert status == 0x0000
    time.sleep(3)  # at least one failed attempt, recorded in the index
    server.restart()
    reports = Reports()
    ae = AE(ae_title=MODALITY)
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    scp = ae.start_server((HOST, port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)])
    try:
        event_type, info = reports.wait_for(transaction, 45)
    finally:
        scp.shutdown()
    assert event_type == 1
    assert uids(info.ReferencedSOPSequence) == {str(ds.SOPInstanceUID) for ds in series}


def test_malformed_requests_get_n_action_failures_and_the_server_stays_up(
    server: DicomhubServer, tmp_path: Path
) -> None:
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(HOST, server.dimse_port, ae_title=server.aet)
    assert assoc.is_established
    try:
        no_transaction = Dataset()
        no_transaction.ReferencedSOPSequence = DicomSequence([])
        status, _ = assoc.send_n_action(no_transaction, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assert int(status.Status) == 0x0120  # missing attribute
        with datagen.no_validation():  # pydicom would refuse to send the bad UID
            bad_uid = action_information("1.2.abc", [(CT, datagen.uid())])
            status, _ = assoc.send_n_action(bad_uid, 1, StorageCommitmentPushModel, WELL_KNOWN)
            assert int(status.Status) == 0x0115  # invalid argument value
            status, _ = assoc.send_n_action(bad_uid, 7, StorageCommitmentPushModel, WELL_KNOWN)
            assert int(status.Status) == 0x0123  # no such action
            status, _ = assoc.send_n_action(bad_uid, 1, StorageCommitmentPushModel, "1.2.3.4")
            assert int(status.Status) == 0x0112  # no such object instance
    finally:
        assoc.release()
    stored_series(server, tmp_path, 1)  # still serving
