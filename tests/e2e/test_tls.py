"""DICOM TLS and HTTPS with real clients: DCMTK (+tls) and httpx, against a test CA.

One server listens on a plain DIMSE port, a DICOM TLS port that requires a
client certificate signed by the test CA, and HTTPS on the HTTP port.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import httpx
import pytest
from datagen import write_instance
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet  # type: ignore[attr-defined]

from .helpers import HOST, DicomhubServer, ServerPool, echo, free_port, ls_study, run_cli, run_dcmtk
from .tlscerts import Pki, make_pki

# The subject is the transport; the index and blob store behind it are those of every other test.
pytestmark = [pytest.mark.e2e, pytest.mark.backend_neutral]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _client_context(pki: Pki, cert: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert:
        context.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    return context


@pytest.fixture(scope="module")
def tls_server(module_servers: ServerPool, pki: Pki) -> DicomhubServer:
    srv = module_servers.create("tls", https_context=_client_context(pki))
    srv.tls_port = free_port()  # type: ignore[attr-defined]
    srv.args += [
        "--dimse-tls-port", str(srv.tls_port),  # type: ignore[attr-defined]
        "--tls-cert", str(pki.server.cert),
        "--tls-key", str(pki.server.key),
        "--tls-ca", str(pki.ca),
        "--tls-verify-client",
        "--https",
    ]  # fmt: skip
    return srv.start()


def _tls(pki: Pki, client: str = "client") -> list[str]:
    pair = getattr(pki, client)
    return ["+tls", str(pair.key), str(pair.cert), "+cf", str(pki.ca)]


def test_dicom_tls_echo_store_find_and_get(tls_server: DicomhubServer, pki: Pki, tmp_path: Path) -> None:
    port = str(tls_server.tls_port)  # type: ignore[attr-defined]
    rc, out = run_dcmtk("echoscu", "-v", *_tls(pki), "-aec", tls_server.aet, HOST, port, timeout=30)
    assert rc == 0, out
    ds = write_instance(tmp_path / "in" / "ct.dcm")
    rc, out = run_dcmtk(
        "storescu", "-v", *_tls(pki), "-aec", tls_server.aet, HOST, port, tmp_path / "in" / "ct.dcm"
    )
    assert rc == 0 and "Received Store Response (Success)" in out, out
    study = ls_study(tls_server.data_dir, ds.StudyInstanceUID)
    assert study is not None and study["NumberOfStudyRelatedInstances"] == 1
    # Responses and C-GET sub-operations go out on the TLS socket (no sendmsg/sendfile there).
    rc, out = run_dcmtk(
        "findscu", "-S", "-v", *_tls(pki), "-aec", tls_server.aet, "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={ds.StudyInstanceUID}", "-k", "PatientID", HOST, port, timeout=30,
    )  # fmt: skip
    assert rc == 0 and "Final Find Response (Success)" in out and ds.PatientID in out, out
    # DCMTK 3.6.7's getscu has no TLS: C-GET over TLS with pynetdicom.
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(ds.SOPClassUID)
    assoc = ae.associate(
        HOST,
        int(port),
        ae_title=tls_server.aet,
        ext_neg=[build_role(ds.SOPClassUID, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
        tls_args=(_client_context(pki), HOST),
    )
    assert assoc.is_established
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ds.StudyInstanceUID
        statuses = [
            s.Status for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet) if s
        ]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    assert [r.SOPInstanceUID for r in received] == [ds.SOPInstanceUID]
    assert received[0].PixelData == ds.PixelData


def test_untrusted_or_missing_client_certificate_is_refused(tls_server: DicomhubServer, pki: Pki) -> None:
    port = str(tls_server.tls_port)  # type: ignore[attr-defined]
    rc, out = run_dcmtk(
        "echoscu", "-v", *_tls(pki, "untrusted"), "-aec", tls_server.aet, HOST, port, timeout=30
    )
    assert rc != 0 and "Association Accepted" not in out, out
    # A client that verifies the server but has no certificate of its own.
    rc, out = run_dcmtk(
        "echoscu", "-v", "+tla", "+cf", str(pki.ca), "-aec", tls_server.aet, HOST, port, timeout=30
    )
    assert rc != 0 and "Association Accepted" not in out, out
    assert "TLS handshake failed" in tls_server.log_text()
    rc, out = run_cli("audit-export", "--data-dir", str(tls_server.data_dir), "--format", "jsonl")
    assert rc == 0, out
    refused = [json.loads(line) for line in out.splitlines() if "TLS handshake failed" in line]
    assert [(e["action"], e["outcome"], e["address"]) for e in refused] == [("login", "8", HOST)] * 2
    # The server goes on serving.
    rc, out = run_dcmtk("echoscu", "-v", *_tls(pki), "-aec", tls_server.aet, HOST, port, timeout=30)
    assert rc == 0, out


def test_plain_dimse_port_still_serves(tls_server: DicomhubServer) -> None:
    rc, out = echo(tls_server)
    assert rc == 0, out


def test_https_with_client_certificate(tls_server: DicomhubServer, pki: Pki) -> None:
    response = httpx.get(f"{tls_server.base_url}/healthz", verify=_client_context(pki), timeout=10)
    assert response.status_code == 200
    assert response.url.scheme == "https"
    with pytest.raises(httpx.HTTPError):
        # No client certificate: the handshake is refused.
        httpx.get(f"{tls_server.base_url}/healthz", verify=_client_context(pki, cert=False), timeout=10)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{HOST}:{tls_server.http_port}/healthz", timeout=10)
