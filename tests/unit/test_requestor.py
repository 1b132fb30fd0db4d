"""dicomhub's requestor engine (dimse/requestor.py) against pynetdicom as the acceptor.

Each DIMSE message type goes to a pynetdicom AE with handlers in this process
over loopback: C-ECHO, C-STORE, C-FIND (and C-CANCEL), C-GET (sub-operations on
the same association), C-MOVE (to a second pynetdicom Storage SCP), N-ACTION
with the N-EVENT-REPORT the peer sends back, N-EVENT-REPORT sent by us (SCP role),
N-GET with an attribute list, N-SET, N-CREATE, N-DELETE; failure statuses come
back as sent; rejection and abort are clear errors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    BasicFilmSession,
    CTImageStorage,
    ModalityPerformedProcedureStep,
    Printer,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from dicomhub.dimse.requestor import (
    Association,
    AssociationAborted,
    AssociationError,
    AssociationRejected,
    IncomingStore,
)
from dicomhub.dimse.responses import decode_dataset, encode_dataset

HOST = "127.0.0.1"
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
PRINTER_INSTANCE = "1.2.840.10008.5.1.1.17"


def _ct(n: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.PatientID = f"P{n}"
    ds.InstanceNumber = n
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


class Peer:
    """A pynetdicom AE with a handler per message type; remembers what it got."""

    def __init__(self, ae_title: str = "PEER", *, require_called: bool = False) -> None:
        self.got: dict[str, list[Any]] = {}
        self.matches = [_ct(n) for n in range(20)]
        self.store_status = 0x0000
        self.n_status = 0x0000
        self.move_to: tuple[str, int] | None = None
        self.abort_in_find = False
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = require_called
        for cls in (
            Verification,
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelGet,
            StudyRootQueryRetrieveInformationModelMove,
            Printer,
            ModalityPerformedProcedureStep,
            BasicFilmSession,
        ):
            ae.add_supported_context(cls, SYNTAXES)
        ae.add_supported_context(CTImageStorage, SYNTAXES, scu_role=True, scp_role=True)
        ae.add_supported_context(StorageCommitmentPushModel, SYNTAXES, scu_role=True, scp_role=True)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)  # C-MOVE sub-operations
        handlers = [
            (evt.EVT_C_ECHO, lambda e: 0x0000),
            (evt.EVT_C_STORE, self._store),
            (evt.EVT_C_FIND, self._find),
            (evt.EVT_C_GET, self._get),
            (evt.EVT_C_MOVE, self._move),
            (evt.EVT_N_GET, self._n_get),
            (evt.EVT_N_SET, self._n_set),
            (evt.EVT_N_CREATE, self._n_create),
            (evt.EVT_N_DELETE, self._n_delete),
            (evt.EVT_N_ACTION, self._n_action),
            (evt.EVT_N_EVENT_REPORT, self._n_event_report),
        ]
        self.server: ThreadedAssociationServer = ae.start_server(
            (HOST, 0), block=False, evt_handlers=handlers
        )
        self.port = int(self.server.server_address[1])
        self.ae_title = ae_title

    def _note(self, key: str, value: Any) -> None:
        self.got.setdefault(key, []).append(value)

    def _store(self, event: evt.Event) -> int:
        self._note("store", event.dataset)
        return self.store_status

    def _find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        self._note("find", event.identifier)
        if self.abort_in_find:
            event.assoc.abort()
            return
        for n, ds in enumerate(self.matches):
            if event.is_cancelled:
                self._note("cancelled", n)
                yield 0xFE00, None
                return
            answer = Dataset()
            answer.QueryRetrieveLevel = "IMAGE"
            answer.SOPInstanceUID = ds.SOPInstanceUID
            yield 0xFF00, answer
            time.sleep(0.02)  # room for the C-CANCEL to arrive
        yield 0x0000, None

    def _get(self, event: evt.Event) -> Iterator[Any]:
        self._note("get", event.identifier)
        wanted = self.matches[:3]
        yield len(wanted)
        for ds in wanted:
            yield 0xFF00, ds

    def _move(self, event: evt.Event) -> Iterator[Any]:
        self._note("move", (event.move_destination, event.identifier))
        yield self.move_to
        wanted = self.matches[:2]
        yield len(wanted)
        for ds in wanted:
            yield 0xFF00, ds

    def _n_get(self, event: evt.Event) -> tuple[int, Dataset | None]:
        self._note("n_get", list(event.attribute_identifiers))
        ds = Dataset()
        ds.PrinterStatus = "NORMAL"
        ds.PrinterName = "LASER"
        return self.n_status, ds

    def _n_set(self, event: evt.Event) -> tuple[int, Dataset | None]:
        self._note("n_set", (event.request.RequestedSOPInstanceUID, event.modification_list))
        return self.n_status, event.modification_list if self.n_status == 0 else None

    def _n_create(self, event: evt.Event) -> tuple[int, Dataset | None]:
        self._note("n_create", (event.request.AffectedSOPInstanceUID, event.attribute_list))
        return self.n_status, event.attribute_list if self.n_status == 0 else None

    def _n_delete(self, event: evt.Event) -> int:
        self._note("n_delete", event.request.RequestedSOPInstanceUID)
        return self.n_status

    def _n_action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        info = event.action_information
        self._note("n_action", (event.action_type, info))
        if self.n_status == 0:
            # The report goes on the same association once the N-ACTION-RSP is out.
            assoc = event.assoc

            def report() -> None:
                time.sleep(0.2)
                reply = Dataset()
                reply.TransactionUID = info.TransactionUID
                reply.ReferencedSOPSequence = info.ReferencedSOPSequence
                try:
                    status = assoc.send_n_event_report(
                        reply, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
                    )[0]
                    self._note("report_status", status.Status if status else None)
                except Exception as exc:  # noqa: BLE001 - reported to the test
                    self._note("report_status", repr(exc))

            threading.Thread(target=report, daemon=True).start()
        return self.n_status, None

    def _n_event_report(self, event: evt.Event) -> tuple[int, Dataset | None]:
        self._note("n_event_report", (event.event_type, event.event_information))
        return self.n_status, None

    def associate(self, contexts: list[tuple[str, list[str]]], **kwargs: Any) -> Association:
        return Association.open(
            HOST, self.port, self.ae_title, "DICOMHUB", contexts, dimse_timeout=10, **kwargs
        )


@pytest.fixture
def peer() -> Iterator[Peer]:
    started = Peer()
    yield started
    started.server.shutdown()


def test_c_echo(peer: Peer) -> None:
    with peer.associate([(Verification, SYNTAXES)]) as assoc:
        assert assoc.send_c_echo() == 0x0000
        assert assoc.send_c_echo() == 0x0000  # the association stays usable


def test_c_store_and_a_failure_status_passed_back(peer: Peer) -> None:
    ds = _ct(1)
    with peer.associate([(CTImageStorage, [ExplicitVRLittleEndian])]) as assoc:
        cid = assoc.accepted(CTImageStorage, ExplicitVRLittleEndian)
        assert cid is not None
        data = encode_dataset(ds, ExplicitVRLittleEndian)
        assert assoc.send_c_store(cid, CTImageStorage, ds.SOPInstanceUID, data, 1) == (0x0000, None)
        peer.store_status = 0xA700
        status, _comment = assoc.send_c_store(cid, CTImageStorage, ds.SOPInstanceUID, data, 2)
        assert status == 0xA700
    assert [d.SOPInstanceUID for d in peer.got["store"]] == [ds.SOPInstanceUID] * 2
    assert peer.got["store"][0].PatientID == "P1"


def test_c_find_iterates_matches_and_c_cancel_stops_them(peer: Peer) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.SOPInstanceUID = ""
    with peer.associate([(StudyRootQueryRetrieveInformationModelFind, SYNTAXES)]) as assoc:
        responses = list(assoc.send_c_find(StudyRootQueryRetrieveInformationModelFind, query))
        assert [r.status for r in responses] == [0xFF00] * 20 + [0x0000]
        found = [r.dataset.SOPInstanceUID for r in responses[:-1] if r.dataset is not None]
        assert found == [d.SOPInstanceUID for d in peer.matches]
        assert peer.got["find"][0].QueryRetrieveLevel == "IMAGE"

        find = assoc.send_c_find(StudyRootQueryRetrieveInformationModelFind, query)
        first = next(find)
        assert first.is_pending
        find.cancel()
        rest = list(find)
        assert rest[-1].status == 0xFE00 and find.final is rest[-1]
        assert 1 + len(rest) < 21  # stopped early
        assert peer.got["cancelled"]
        # ... and the association still serves requests.
        again = list(assoc.send_c_find(StudyRootQueryRetrieveInformationModelFind, query))
        assert again[-1].status == 0x0000 and len(again) == 21


def test_c_get_receives_its_sub_operations_on_the_same_association(peer: Peer) -> None:
    received: list[IncomingStore] = []

    def on_store(request: IncomingStore) -> int:
        received.append(request)
        return 0x0000

    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.SeriesInstanceUID = "1.2.3.4.5"
    with peer.associate(
        [(StudyRootQueryRetrieveInformationModelGet, SYNTAXES), (CTImageStorage, SYNTAXES)],
        roles={CTImageStorage: (False, True)},
    ) as assoc:
        assert assoc.role(CTImageStorage) == (False, True)
        responses = list(
            assoc.send_c_get(StudyRootQueryRetrieveInformationModelGet, query, on_c_store=on_store)
        )
    final = responses[-1]
    assert final.status == 0x0000
    assert final.suboperations[1:] == (3, 0, 0)  # completed, failed, warning
    assert [r.sop_instance_uid for r in received] == [d.SOPInstanceUID for d in peer.matches[:3]]
    back = decode_dataset(received[0].data, received[0].transfer_syntax_uid)
    assert back.PatientID == "P0" and received[0].sop_class_uid == CTImageStorage


def test_c_get_sub_operation_failures_are_reported_to_the_peer(peer: Peer) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.SeriesInstanceUID = "1.2.3.4.5"
    with peer.associate(
        [(StudyRootQueryRetrieveInformationModelGet, SYNTAXES), (CTImageStorage, SYNTAXES)],
        roles={CTImageStorage: (False, True)},
    ) as assoc:
        responses = list(
            assoc.send_c_get(StudyRootQueryRetrieveInformationModelGet, query, on_c_store=lambda r: 0xA700)
        )
    final = responses[-1]
    assert final.status == 0xA702  # PS3.4 C.4.3.1.3.1: sub-operations failed
    assert final.suboperations[1:] == (0, 3, 0)


def test_c_move_to_a_storage_scp(peer: Peer) -> None:
    destination = Peer("DEST")
    try:
        peer.move_to = (HOST, destination.port)
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.SeriesInstanceUID = "1.2.3.4.5"
        with peer.associate([(StudyRootQueryRetrieveInformationModelMove, SYNTAXES)]) as assoc:
            responses = list(assoc.send_c_move(StudyRootQueryRetrieveInformationModelMove, query, "DEST"))
        assert responses[-1].status == 0x0000
        assert responses[-1].suboperations[1] == 2
        assert peer.got["move"][0][0] == "DEST"
        assert [d.SOPInstanceUID for d in destination.got["store"]] == [
            d.SOPInstanceUID for d in peer.matches[:2]
        ]
    finally:
        destination.server.shutdown()


def _commitment_request() -> Dataset:
    info = Dataset()
    info.TransactionUID = generate_uid()
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = generate_uid()
    info.ReferencedSOPSequence = [item]
    return info


def test_n_action_then_the_peers_n_event_report_on_the_same_association(peer: Peer) -> None:
    info = _commitment_request()
    reports = []
    with peer.associate([(StorageCommitmentPushModel, SYNTAXES)]) as assoc:
        assoc.on_n_event_report = lambda report: reports.append(report) or 0x0000
        response = assoc.send_n_action(StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1", 1, info)
        assert response.status == 0x0000
        report = assoc.wait_for_event_report(10)
        assert report is not None and reports == [report]
        assert report.event_type_id == 1 and report.sop_class_uid == StorageCommitmentPushModel
        assert report.dataset is not None and report.dataset.TransactionUID == info.TransactionUID
    action_type, got = peer.got["n_action"][0]
    assert action_type == 1 and got.TransactionUID == info.TransactionUID
    assert peer.got["report_status"] == [0x0000]  # our N-EVENT-REPORT-RSP reached the peer


def test_n_action_failure_status_and_no_report(peer: Peer) -> None:
    peer.n_status = 0x0112  # No such SOP Instance
    with peer.associate([(StorageCommitmentPushModel, SYNTAXES)]) as assoc:
        response = assoc.send_n_action(
            StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1", 1, _commitment_request()
        )
        assert response.status == 0x0112
        assert assoc.wait_for_event_report(0.5) is None


def test_n_event_report_sent_by_us_in_the_scp_role(peer: Peer) -> None:
    info = _commitment_request()
    with peer.associate(
        [(StorageCommitmentPushModel, SYNTAXES)], roles={StorageCommitmentPushModel: (False, True)}
    ) as assoc:
        assert assoc.role(StorageCommitmentPushModel) == (False, True)
        response = assoc.send_n_event_report(StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1", 2, info)
        assert response.status == 0x0000
    event_type, got = peer.got["n_event_report"][0]
    assert event_type == 2 and got.TransactionUID == info.TransactionUID


def test_n_get_with_an_attribute_list(peer: Peer) -> None:
    with peer.associate([(Printer, SYNTAXES)]) as assoc:
        response = assoc.send_n_get(Printer, PRINTER_INSTANCE, [0x21100010, 0x21100030])
    assert response.status == 0x0000
    assert peer.got["n_get"] == [[0x21100010, 0x21100030]]
    assert response.dataset is not None and response.dataset.PrinterStatus == "NORMAL"


def test_n_set_n_create_n_delete_and_their_failures(peer: Peer) -> None:
    mpps = generate_uid()
    attributes = Dataset()
    attributes.PerformedProcedureStepStatus = "IN PROGRESS"
    with peer.associate([(ModalityPerformedProcedureStep, SYNTAXES), (BasicFilmSession, SYNTAXES)]) as assoc:
        created = assoc.send_n_create(ModalityPerformedProcedureStep, mpps, attributes)
        assert created.status == 0x0000 and created.command.sop_instance_uid == mpps
        assert created.dataset is not None and created.dataset.PerformedProcedureStepStatus == "IN PROGRESS"
        change = Dataset()
        change.PerformedProcedureStepStatus = "COMPLETED"
        updated = assoc.send_n_set(ModalityPerformedProcedureStep, mpps, change)
        assert updated.status == 0x0000
        session = generate_uid()
        assert assoc.send_n_delete(BasicFilmSession, session).status == 0x0000
        peer.n_status = 0x0110  # Processing failure
        assert assoc.send_n_set(ModalityPerformedProcedureStep, mpps, change).status == 0x0110
        assert assoc.send_n_delete(BasicFilmSession, session).status == 0x0110
        assert assoc.send_n_create(ModalityPerformedProcedureStep, mpps, attributes).status == 0x0110
    assert peer.got["n_create"][0][0] == mpps
    assert (
        peer.got["n_set"][0][0] == mpps
        and peer.got["n_set"][0][1].PerformedProcedureStepStatus == "COMPLETED"
    )
    assert peer.got["n_delete"] == [session, session]


def test_rejection_is_a_clear_error() -> None:
    peer = Peer("STRICT", require_called=True)
    try:
        with pytest.raises(AssociationRejected, match="called AE title not recognised") as raised:
            Association.open(HOST, peer.port, "WRONG", "DICOMHUB", [(Verification, SYNTAXES)])
        assert (raised.value.result, raised.value.source, raised.value.diagnostic) == (1, 1, 7)
    finally:
        peer.server.shutdown()


def test_abort_by_the_peer_is_a_clear_error(peer: Peer) -> None:
    peer.abort_in_find = True
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    assoc = peer.associate([(StudyRootQueryRetrieveInformationModelFind, SYNTAXES)])
    with pytest.raises(AssociationAborted, match="A-ABORT|closed"):
        list(assoc.send_c_find(StudyRootQueryRetrieveInformationModelFind, query))
    assert not assoc.is_open


def test_no_accepted_context_and_no_peer_are_clear_errors() -> None:
    peer = Peer()
    with peer.associate([(Verification, SYNTAXES)]) as assoc:
        with pytest.raises(AssociationError, match="accepted no presentation context"):
            assoc.send_n_get(Printer, PRINTER_INSTANCE)
        assert assoc.send_c_echo() == 0x0000
    port = peer.port
    peer.server.shutdown()
    with pytest.raises(AssociationError, match="cannot connect"):
        Association.open(HOST, port, "PEER", "DICOMHUB", [(Verification, SYNTAXES)], connect_timeout=2)
