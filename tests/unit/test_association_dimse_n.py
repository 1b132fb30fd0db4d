"""DIMSE-N on the acceptor side: the association loop with a provider registered for private SOP classes.

An engine-level test: the association loop runs on a real socket with a small
provider for two private SOP classes (the one place where a test-only
provider is right), and pynetdicom, as the requestor, sends N-CREATE, N-SET,
N-GET, N-ACTION, N-DELETE and N-EVENT-REPORT, and receives the N-EVENT-REPORT
the provider sends back. Every PS3.7 failure status the association or the
provider answers is checked, and so is Storage Commitment with SCP/SCU role
selection proposed by the requestor.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt, register_uid
from pynetdicom.events import Event
from pynetdicom.service_class_n import ProcedureStepServiceClass

from dicomhub.dimse.association import Association, serve_association
from dicomhub.dimse.messages import NRequest, NResponse
from dicomhub.dimse.providers.base import Provider
from dicomhub.dimse.requests import (
    AssociationConfig,
    NActionOutcome,
    NActionRequest,
    StoreOutcome,
    StoreRequest,
)
from dicomhub.model.commitment import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH_MODEL
from tests.unit.accept_loop import AcceptLoop

# Two private SOP classes (UUID-derived UIDs, PS3.5 B.2), served by one test provider.
REGISTRY = "2.25.302462123497658215347623186230145367711"
OTHER_REGISTRY = "2.25.302462123497658215347623186230145367712"
# A private class accepted only as storage (accept_unknown_storage): no DIMSE-N provider.
PRIVATE_STORAGE = "2.25.302462123497658215347623186230145367713"
VERIFICATION = "1.2.840.10008.1.1"
UNKNOWN_CLASS = "2.25.302462123497658215347623186230145367719"
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
EVENT_CREATED = 1
ACTION_ECHO, ACTION_BREAK = 1, 99

# pynetdicom needs a service class for the private SOP class to accept the
# N-EVENT-REPORT-RQ our provider sends back (otherwise it aborts).
register_uid(REGISTRY, "DicomhubTestRegistry", ProcedureStepServiceClass)


class Registry(Provider):
    """A tiny N-* service: instances of two private classes held in memory."""

    sop_classes = frozenset({REGISTRY, OTHER_REGISTRY})
    name = "test registry"
    settable = frozenset({Tag("PatientName"), Tag("StudyDescription"), Tag("InstanceNumber")})

    def __init__(self) -> None:
        self.instances: dict[str, tuple[str, Dataset]] = {}
        self.reports: list[NRequest] = []
        self.delivered = threading.Event()

    def _find(self, request: NRequest) -> Dataset | NResponse:
        assert request.sop_instance_uid is not None
        found = self.instances.get(request.sop_instance_uid)
        if found is None:
            return NResponse(0x0112, error_comment="no such instance")
        if found[0] != request.sop_class_uid:
            return NResponse(0x0119, error_comment="instance of another class")
        return found[1]

    def n_create(self, assoc: Association, request: NRequest) -> NResponse:
        uid = request.sop_instance_uid or generate_uid()
        if uid in self.instances:
            return NResponse(0x0111)
        dataset = request.dataset if request.dataset is not None else Dataset()
        self.instances[uid] = (request.sop_class_uid, dataset)

        def report() -> None:
            information = Dataset()
            information.AffectedSOPInstanceUID = uid
            assoc.send_n_event_report(
                request.context_id, request.sop_class_uid, uid, EVENT_CREATED, information, self.delivered.set
            )

        return NResponse(0x0000, dataset=dataset, sop_instance_uid=uid, after=report)

    def n_get(self, assoc: Association, request: NRequest) -> NResponse:
        found = self._find(request)
        if isinstance(found, NResponse):
            return found
        if request.attribute_identifier_list is None:
            return NResponse(0x0000, dataset=found)
        reply = Dataset()
        for tag in request.attribute_identifier_list:
            if tag in found:
                reply[tag] = found[tag]
        return NResponse(0x0000, dataset=reply)

    def n_set(self, assoc: Association, request: NRequest) -> NResponse:
        found = self._find(request)
        if isinstance(found, NResponse):
            return found
        changes = request.dataset if request.dataset is not None else Dataset()
        for element in changes:
            if element.tag not in self.settable:
                return NResponse(0x0105, error_comment=f"{element.tag} cannot be set")
        if "InstanceNumber" in changes and int(changes.InstanceNumber) <= 0:
            return NResponse(0x0106, error_comment="InstanceNumber must be positive")
        for element in changes:
            found[element.tag] = element
        return NResponse(0x0000, dataset=found)

    def n_action(self, assoc: Association, request: NRequest) -> NResponse:
        found = self._find(request)
        if isinstance(found, NResponse):
            return found
        if request.action_type_id == ACTION_BREAK:
            raise RuntimeError("the action broke")
        if request.action_type_id != ACTION_ECHO:
            return NResponse(0x0123)
        return NResponse(0x0000, dataset=request.dataset)

    def n_delete(self, assoc: Association, request: NRequest) -> NResponse:
        found = self._find(request)
        if isinstance(found, NResponse):
            return found
        assert request.sop_instance_uid is not None
        del self.instances[request.sop_instance_uid]
        return NResponse(0x0000)

    def n_event_report(self, assoc: Association, request: NRequest) -> NResponse:
        self.reports.append(request)
        return NResponse(0x0000)


class Listener(AcceptLoop):
    def __init__(self, config: AssociationConfig, provider: Provider) -> None:
        self.config = config
        self.provider = provider
        self.commitments: list[NActionRequest] = []
        self.reports_delivered = threading.Event()
        super().__init__()

    def serve(self, sock: socket.socket, address: tuple[str, int]) -> None:
        serve_association(
            sock,
            address,
            self.config,
            self.on_store,
            on_n_action=self.on_n_action,
            providers=[self.provider],
        )

    def on_store(self, request: StoreRequest) -> StoreOutcome:
        return StoreOutcome(0x0000)

    def on_n_action(self, request: NActionRequest) -> NActionOutcome:
        self.commitments.append(request)

        def report() -> tuple[int, Dataset]:
            result = Dataset()
            result.TransactionUID = request.dataset.TransactionUID
            result.ReferencedSOPSequence = request.dataset.ReferencedSOPSequence
            return 1, result

        return NActionOutcome(0x0000, report, self.reports_delivered.set)


@pytest.fixture
def listener() -> Iterator[Listener]:
    config = AssociationConfig(
        ae_title="DICOMHUB",
        storage_contexts={},
        storage_commitment=True,
        accept_unknown_storage=True,
        dimse_timeout=10,
        network_timeout=10,
    )
    loop = Listener(config, Registry())
    yield loop
    loop.close()
    assert not loop.errors


@pytest.fixture
def associate(listener: Listener) -> Iterator[Callable[..., object]]:
    opened = []

    def open_association(*, handlers: list[tuple[object, Callable[[Event], object]]] | None = None) -> object:
        ae = AE(ae_title="NSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        for uid in (REGISTRY, OTHER_REGISTRY, PRIVATE_STORAGE, VERIFICATION):
            ae.add_requested_context(uid, SYNTAXES)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="DICOMHUB", evt_handlers=handlers or [])
        assert assoc.is_established
        opened.append(assoc)
        return assoc

    yield open_association
    for assoc in opened:
        if assoc.is_established:  # type: ignore[attr-defined]
            assoc.release()  # type: ignore[attr-defined]


def _status(result: object) -> int:
    status = result[0] if isinstance(result, tuple) else result
    assert isinstance(status, Dataset) and "Status" in status, f"no response: {result!r}"
    return int(status.Status)


def _attributes() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "N-42"
    ds.StudyDescription = "created"
    return ds


def test_n_create_get_set_action_delete_and_the_report_back(
    listener: Listener, associate: Callable[..., object]
) -> None:
    received: list[tuple[int, Dataset]] = []

    def on_report(event: Event) -> tuple[int, None]:
        received.append((int(event.event_type), event.event_information))
        return 0x0000, None

    assoc = associate(handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    registry = listener.provider
    assert isinstance(registry, Registry)

    status, created = assoc.send_n_create(_attributes(), REGISTRY)  # type: ignore[attr-defined]
    assert int(status.Status) == 0x0000
    assert created is not None and created.PatientID == "N-42"
    # pynetdicom does not hand out the response's Affected SOP Instance UID:
    # the one the provider assigned is the only instance it holds.
    (uid,) = registry.instances
    assert registry.instances[uid][1].PatientName == "Doe^Jane"

    # The report the provider sent after the N-CREATE-RSP arrives while the
    # next request's response is awaited; its success response is recorded.
    status, everything = assoc.send_n_get([], REGISTRY, uid)  # type: ignore[attr-defined]
    assert int(status.Status) == 0x0000
    assert everything is not None and {"PatientName", "PatientID", "StudyDescription"} <= set(
        everything.dir()
    )
    assert registry.delivered.wait(10)
    assert received and received[0][0] == EVENT_CREATED
    assert received[0][1].AffectedSOPInstanceUID == uid

    status, some = assoc.send_n_get([Tag("PatientID"), Tag("StudyInstanceUID")], REGISTRY, uid)  # type: ignore[attr-defined]
    assert int(status.Status) == 0x0000
    assert some is not None and some.dir() == ["PatientID"] and some.PatientID == "N-42"

    change = Dataset()
    change.StudyDescription = "changed"
    status, after = assoc.send_n_set(change, REGISTRY, uid)  # type: ignore[attr-defined]
    assert int(status.Status) == 0x0000
    assert after is not None and after.StudyDescription == "changed"
    assert registry.instances[uid][1].StudyDescription == "changed"

    argument = Dataset()
    argument.TextValue = "ping"
    status, reply = assoc.send_n_action(argument, ACTION_ECHO, REGISTRY, uid)  # type: ignore[attr-defined]
    assert int(status.Status) == 0x0000
    assert reply is not None and reply.TextValue == "ping"

    assert _status(assoc.send_n_delete(REGISTRY, uid)) == 0x0000  # type: ignore[attr-defined]
    assert uid not in registry.instances
    assert _status(assoc.send_n_get([], REGISTRY, uid)) == 0x0112  # type: ignore[attr-defined]


def test_n_create_with_a_requested_instance_uid_and_a_duplicate(
    listener: Listener, associate: Callable[..., object]
) -> None:
    assoc = associate()
    uid = generate_uid()
    status, _ = assoc.send_n_create(_attributes(), REGISTRY, uid)  # type: ignore[attr-defined]
    assert int(status.Status) == 0x0000
    registry = listener.provider
    assert isinstance(registry, Registry) and list(registry.instances) == [uid]
    assert _status(assoc.send_n_create(_attributes(), REGISTRY, uid)) == 0x0111  # type: ignore[attr-defined]


def test_n_event_report_received_from_the_peer(listener: Listener, associate: Callable[..., object]) -> None:
    assoc = associate()
    information = Dataset()
    information.TextValue = "something happened"
    uid = generate_uid()
    status, _ = assoc.send_n_event_report(information, 7, REGISTRY, uid)  # type: ignore[attr-defined]
    assert int(status.Status) == 0x0000 and int(status.EventTypeID) == 7
    registry = listener.provider
    assert isinstance(registry, Registry)
    (report,) = registry.reports
    assert report.event_type_id == 7 and report.sop_instance_uid == uid
    assert report.dataset is not None and report.dataset.TextValue == "something happened"


def test_failure_statuses(listener: Listener, associate: Callable[..., object]) -> None:
    assoc = associate()
    uid = generate_uid()
    assert _status(assoc.send_n_create(_attributes(), REGISTRY, uid)) == 0x0000  # type: ignore[attr-defined]

    # Provider statuses.
    assert _status(assoc.send_n_get([], REGISTRY, generate_uid())) == 0x0112  # type: ignore[attr-defined]
    assert _status(assoc.send_n_get([], OTHER_REGISTRY, uid)) == 0x0119  # type: ignore[attr-defined]
    not_settable = Dataset()
    not_settable.PatientID = "other"
    assert _status(assoc.send_n_set(not_settable, REGISTRY, uid)) == 0x0105  # type: ignore[attr-defined]
    invalid = Dataset()
    invalid.InstanceNumber = -3
    assert _status(assoc.send_n_set(invalid, REGISTRY, uid)) == 0x0106  # type: ignore[attr-defined]
    assert _status(assoc.send_n_action(None, 5, REGISTRY, uid)) == 0x0123  # type: ignore[attr-defined]

    # Association statuses: a provider that fails, a SOP class that is not the
    # context's, a context without a DIMSE-N provider, an operation not defined.
    assert _status(assoc.send_n_action(None, ACTION_BREAK, REGISTRY, uid)) == 0x0110  # type: ignore[attr-defined]
    assert (
        _status(assoc.send_n_get([], UNKNOWN_CLASS, uid, meta_uid=REGISTRY))  # type: ignore[attr-defined]
        == 0x0118
    )
    assert _status(assoc.send_n_get([], PRIVATE_STORAGE, uid)) == 0x0122  # type: ignore[attr-defined]
    assert _status(assoc.send_n_delete(VERIFICATION, uid)) == 0x0211  # type: ignore[attr-defined]

    # After all of that the association still serves.
    status, data = assoc.send_n_get([Tag("PatientName"), Tag("PatientID")], REGISTRY, uid)  # type: ignore[attr-defined]
    assert int(status.Status) == 0x0000 and data is not None and data.PatientName == "Doe^Jane"
    assert assoc.send_c_echo().Status == 0x0000  # type: ignore[attr-defined]


def test_storage_commitment_report_on_the_same_association_with_role_selection(listener: Listener) -> None:
    """The requestor proposes both roles for Storage Commitment; the report still comes back on it."""
    reports: list[tuple[int, Dataset]] = []

    def on_report(event: Event) -> tuple[int, None]:
        reports.append((int(event.event_type), event.event_information))
        return 0x0000, None

    ae = AE(ae_title="COMMITSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL, SYNTAXES)
    role = build_role(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=True, scp_role=True)
    assoc = ae.associate(
        "127.0.0.1",
        listener.port,
        ae_title="DICOMHUB",
        ext_neg=[role],
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
    )
    assert assoc.is_established
    (context,) = assoc.accepted_contexts
    assert context.as_scu and context.as_scp  # both roles accepted
    request = Dataset()
    request.TransactionUID = generate_uid()
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = generate_uid()
    request.ReferencedSOPSequence = [item]
    status, _ = assoc.send_n_action(request, 1, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE)
    assert int(status.Status) == 0x0000
    # The report follows the N-ACTION-RSP on this association; its success
    # response marks it delivered.
    assert listener.reports_delivered.wait(10)
    assoc.release()
    assert reports and reports[0][0] == 1
    assert reports[0][1].TransactionUID == request.TransactionUID
    assert listener.commitments[0].transfer_syntax_uid in SYNTAXES
