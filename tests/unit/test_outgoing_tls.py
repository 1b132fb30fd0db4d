"""Outgoing DICOM TLS through dicomhub's requestor engine: a DIMSE migration peer and a Storage
Commitment report destination with ``tls`` are called over TLS, verified against
our CA and presenting our certificate; a plain call to a TLS-only peer fails.
(C-MOVE sub-operations over TLS, through dicomhub's own SCU, are in
tests/e2e/test_peer_tls.py.)"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
)
from pynetdicom.transport import ThreadedAssociationServer

from dicomhub.config import Settings
from dicomhub.config.checks import tls_client_context
from dicomhub.dimse.commitment import CommitmentRefused, send_report
from dicomhub.migrate.sources import DimseSource, RemoteError
from dicomhub.model.commitment import CommitmentResult
from dicomhub.model.migration import RemoteArchive, RemoteKind
from tests.e2e.tlscerts import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class _Peer:
    """A pynetdicom SCP on DICOM TLS only, requiring a client certificate from the test CA."""

    def __init__(self, pki: Pki) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(pki.server.cert), str(pki.server.key))
        context.load_verify_locations(cafile=str(pki.ca))
        context.verify_mode = ssl.CERT_REQUIRED
        self.subjects: list[str] = []
        self.reports: list[Dataset] = []
        ae = AE(ae_title="TLSPEER")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self.server: ThreadedAssociationServer = ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            ssl_context=context,
            evt_handlers=[
                (evt.EVT_C_FIND, self._find),
                (evt.EVT_N_EVENT_REPORT, self._report),
            ],
        )
        self.port = int(self.server.server_address[1])
        self._lock = threading.Lock()

    def _find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        sock = event.assoc.dul.socket.socket
        assert isinstance(sock, ssl.SSLSocket)
        cert = sock.getpeercert() or {}
        with self._lock:
            self.subjects.append(dict(x[0] for x in cert.get("subject", ()))["commonName"])
        yield 0x0000, None

    def _report(self, event: evt.Event) -> tuple[int, None]:
        with self._lock:
            self.reports.append(event.event_information)
        return 0x0000, None


@pytest.fixture(scope="module")
def peer(pki: Pki) -> Iterator[_Peer]:
    started = _Peer(pki)
    yield started
    started.server.shutdown()


def _settings(pki: Pki) -> Settings:
    return Settings(tls_cert=str(pki.client.cert), tls_key=str(pki.client.key), tls_ca=str(pki.ca))


def test_a_dimse_migration_peer_is_called_over_tls(pki: Pki, peer: _Peer) -> None:
    remote = RemoteArchive("pacs", RemoteKind.DIMSE, "TLSPEER", "127.0.0.1", peer.port, tls=True)
    source = DimseSource(remote, "DICOMHUB", "DICOMHUB", 10.0, tls_client_context(_settings(pki)))
    assoc = source._associate([StudyRootQueryRetrieveInformationModelFind])
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        statuses = [r.status for r in assoc.send_c_find(StudyRootQueryRetrieveInformationModelFind, query)]
    finally:
        assoc.release()
    assert statuses == [0x0000] and peer.subjects[-1] == "modality-1"  # our certificate, over TLS
    # Plain TCP to a TLS-only peer does not associate.
    plain = DimseSource(remote, "DICOMHUB", "DICOMHUB", 5.0)
    with pytest.raises(RemoteError, match="refused or did not answer"):
        plain._associate([StudyRootQueryRetrieveInformationModelFind])


def test_a_commitment_report_to_a_tls_peer_goes_over_tls(pki: Pki, peer: _Peer) -> None:
    result = CommitmentResult("1.2.3.4", (), ())
    send_report(
        "127.0.0.1", peer.port, "TLSPEER", "DICOMHUB", result, 10.0, tls_client_context(_settings(pki))
    )
    assert peer.reports and peer.reports[-1].TransactionUID == "1.2.3.4"
    # Without --tls-ca the system's trust store is used, and the test CA is not in it:
    # no report, a clear refusal.
    system = Settings(tls_cert=str(pki.client.cert), tls_key=str(pki.client.key))
    with pytest.raises(CommitmentRefused, match="over TLS"):
        send_report("127.0.0.1", peer.port, "TLSPEER", "DICOMHUB", result, 5.0, tls_client_context(system))
