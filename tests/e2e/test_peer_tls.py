"""Outgoing DICOM TLS per peer: C-MOVE sub-operations to a move destination whose
peer has ``tls = true`` go over TLS (PS3.15 B.1), verified against ``--tls-ca``,
with dicomhub's own certificate presented (DCMTK ``storescp +tls`` requires one).

- a TLS ``storescp`` registered with ``dicomhub peer add --tls`` receives the study;
- the same kind of peer in front of a plain ``storescp``, or of a TLS ``storescp``
  whose certificate another CA signed, gets nothing: the C-MOVE fails with the
  status of an unreachable destination, the log names the TLS error, and the
  server keeps serving.
"""

from __future__ import annotations

from collections.abc import Callable

import datagen
import pytest

from .helpers import HOST, DicomhubServer, ServerPool, StoreSCP, echo, move, read_dir, run_cli, store_ok
from .tlscerts import Pair, Pki, make_pki

# The subject is the transport to a peer; the index and blob store are those of every other test.
pytestmark = [pytest.mark.e2e, pytest.mark.backend_neutral]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool, pki: Pki) -> DicomhubServer:
    # No TLS port of its own: the certificate (a client one) and the CA are only
    # for the associations it opens. pki.server is the storescp's certificate.
    return module_servers.start(
        "peertls",
        args=["--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key), "--tls-ca", str(pki.ca)],
    )


@pytest.fixture(scope="module")
def study(hub: DicomhubServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, set[str]]:
    """A study of two instances stored into the hub: its UID and the SOP Instance UIDs."""
    folder = tmp_path_factory.mktemp("in")
    written = datagen.write_ct_series(folder, 2, rows=8, cols=8)
    store_ok(hub, folder, expect=2)
    return str(written[0].StudyInstanceUID), {str(d.SOPInstanceUID) for d in written}


def _tls_scp(factory: Callable[..., StoreSCP], aet: str, pair: Pair, pki: Pki) -> StoreSCP:
    """A DCMTK storescp on DICOM TLS with ``pair``, requiring a client certificate from the test CA."""
    return factory(aet=aet, extra=["+tls", str(pair.key), str(pair.cert), "+cf", str(pki.ca)])


def _add_tls_peer(hub: DicomhubServer, scp: StoreSCP) -> None:
    rc, out = run_cli(
        "peer", "add", scp.aet, "--host", HOST, "--port", str(scp.port), "--tls",
        "--roles", "move-destination", "--data-dir", str(hub.data_dir),
    )  # fmt: skip
    assert rc == 0 and "tls" in out, out


def test_c_move_to_a_tls_peer_goes_over_tls(
    hub: DicomhubServer, pki: Pki, study: tuple[str, set[str]], storescp_factory: Callable[..., StoreSCP]
) -> None:
    scp = _tls_scp(storescp_factory, "TLSSCP", pki.server, pki)
    _add_tls_peer(hub, scp)
    result = move(hub, scp.aet, "STUDY", {"StudyInstanceUID": study[0]})
    assert result.returncode == 0 and result.final_counts()["completed"] == 2, result.output[-2000:]
    # This storescp speaks nothing but TLS: the files prove the sub-operations went over it.
    assert set(read_dir(scp.out_dir)) == study[1]


@pytest.mark.parametrize(
    ("aet", "plain", "error"),
    [
        ("PLAINSCP", True, "TLS handshake with"),
        ("OTHERCASCP", False, "certificate not trusted"),
    ],
)
def test_c_move_to_a_tls_peer_fails_without_a_trusted_tls_partner(
    hub: DicomhubServer,
    pki: Pki,
    study: tuple[str, set[str]],
    storescp_factory: Callable[..., StoreSCP],
    aet: str,
    plain: bool,
    error: str,
) -> None:
    scp = storescp_factory(aet=aet) if plain else _tls_scp(storescp_factory, aet, pki.untrusted_server, pki)
    _add_tls_peer(hub, scp)
    result = move(hub, aet, "STUDY", {"StudyInstanceUID": study[0]})
    statuses = result.statuses()
    # The status of a destination that cannot be associated, as for one that is down.
    assert statuses and statuses[-1] == 0xA801, result.output[-2000:]
    assert not list(scp.out_dir.iterdir())
    log = hub.log_text()
    assert f"cannot associate with {aet}" in log and error in log, log[-3000:]
    assert echo(hub)[0] == 0  # still serving
