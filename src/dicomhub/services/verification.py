"""Verifying a peer: can this archive reach it the way it is registered?

Over DIMSE a C-ECHO (the Verification Service Class, PS3.4 A); over DICOMweb the
cheapest QIDO-RS there is (``/studies?limit=1``). The probes themselves are
protocol code the composition root injects (:class:`PeerProbe`); this service
picks the peer, runs what applies and reports each outcome with its time, so an
operator sees at once whether a new or edited peer answers.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from dicomhub.errors import DicomhubError, InvalidRequest
from dicomhub.model.peer import Peer
from dicomhub.services.peers import PeerService

__all__ = ["PeerProbe", "PeerUnreachable", "PeerVerificationService"]

_SUCCESS = 0x0000


class PeerUnreachable(DicomhubError):
    """The peer did not answer the probe (refused, timed out, aborted); the message says how."""


class PeerProbe(Protocol):
    def echo(self, peer: Peer) -> int:
        """Send C-ECHO to ``peer``; the response's Status. PeerUnreachable when no association."""
        ...

    def query(self, peer: Peer, credentials: str) -> int:
        """QIDO-RS ``/studies?limit=1`` at ``peer``'s URL; the HTTP status. PeerUnreachable
        when no answer."""
        ...


class PeerVerificationService:
    def __init__(self, peers: PeerService, probe: PeerProbe) -> None:
        self.peers = peers
        self.probe = probe

    def verify(self, name: str) -> dict[str, Any]:
        """``{peer, ok, dimse?: {...}, dicomweb?: {...}}``; NotFound for an unknown peer,
        InvalidRequest for one with neither a DIMSE address nor a DICOMweb URL."""
        peer = self.peers.require(name)
        if not peer.dimse and not peer.dicomweb_url:
            raise InvalidRequest(
                f"peer {peer.name} has neither an AE title, host and port nor a DICOMweb URL to verify"
            )
        found: dict[str, Any] = {"peer": peer.name}
        if peer.dimse:
            found["dimse"] = self._timed(lambda: self._echo(peer))
        if peer.dicomweb_url:
            found["dicomweb"] = self._timed(lambda: self._query(peer))
        found["ok"] = all(found[k]["ok"] for k in ("dimse", "dicomweb") if k in found)
        return found

    def _echo(self, peer: Peer) -> dict[str, Any]:
        status = self.probe.echo(peer)
        where = f"{peer.ae_title}@{peer.host}:{peer.port}"
        return {"ok": status == _SUCCESS, "status": f"0x{status:04X}", "detail": f"C-ECHO to {where}"}

    def _query(self, peer: Peer) -> dict[str, Any]:
        status = self.probe.query(peer, self.peers.credentials(peer))
        return {
            "ok": status in (200, 204),
            "status": str(status),
            "detail": f"QIDO-RS at {peer.dicomweb_url}",
        }

    @staticmethod
    def _timed(run: Any) -> dict[str, Any]:
        began = time.monotonic()
        try:
            outcome: dict[str, Any] = run()
        except PeerUnreachable as exc:
            outcome = {"ok": False, "status": "", "detail": str(exc)}
        outcome["seconds"] = round(time.monotonic() - began, 3)
        return outcome
