"""The network side of verifying a peer (:class:`dicomhub.services.verification.PeerProbe`):
a C-ECHO on an association of our own, a one-study QIDO-RS over HTTP."""

from __future__ import annotations

import base64

import httpx

from dicomhub.config import Settings
from dicomhub.config.checks import tls_client_context
from dicomhub.dimse.requestor import Association, AssociationError
from dicomhub.model.peer import Peer
from dicomhub.services.verification import PeerUnreachable

__all__ = ["NetworkPeerProbe"]

_VERIFICATION = "1.2.840.10008.1.1"
_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


class NetworkPeerProbe:
    def __init__(self, settings: Settings, timeout: float = 10.0) -> None:
        self.settings = settings
        # Someone waits on a page for the answer: a dead peer must not hold it for minutes.
        self.timeout = min(timeout, settings.dimse_timeout)

    def echo(self, peer: Peer) -> int:
        where = f"{peer.ae_title}@{peer.host}:{peer.port}"
        try:
            assoc = Association.open(
                peer.host,
                int(peer.port or 0),
                peer.ae_title,
                self.settings.aet,
                [(_VERIFICATION, _SYNTAXES)],
                connect_timeout=self.timeout,
                acse_timeout=self.timeout,
                dimse_timeout=self.timeout,
                tls=tls_client_context(self.settings) if peer.tls else None,
            )
        except (AssociationError, OSError) as exc:
            raise PeerUnreachable(f"{where} refused or did not answer the association: {exc}") from exc
        try:
            status = assoc.send_c_echo()
        except (AssociationError, OSError) as exc:
            assoc.abort()
            raise PeerUnreachable(f"{where} accepted the association but not the C-ECHO: {exc}") from exc
        assoc.release(self.timeout)
        return status

    def query(self, peer: Peer, credentials: str) -> int:
        headers = {"Accept": "application/dicom+json"}
        if credentials.startswith("bearer:"):
            headers["Authorization"] = f"Bearer {credentials[7:]}"
        elif credentials.startswith("basic:"):
            headers["Authorization"] = "Basic " + base64.b64encode(credentials[6:].encode()).decode()
        url = peer.dicomweb_url.rstrip("/") + "/studies"
        try:
            r = httpx.get(url, params={"limit": "1"}, headers=headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise PeerUnreachable(f"QIDO-RS at {peer.dicomweb_url}: {exc}") from exc
        return r.status_code
