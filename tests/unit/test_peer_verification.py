"""Verifying a peer (services/verification.py) with a probe that records its calls,
and ``GET /api/me`` without access control (every caller unrestricted)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dicomhub.bootstrap import open_archive
from dicomhub.config import Settings
from dicomhub.errors import InvalidRequest, NotFound
from dicomhub.model.caller import Caller
from dicomhub.model.peer import Peer
from dicomhub.services.archive import Archive
from dicomhub.services.verification import PeerUnreachable, PeerVerificationService
from dicomhub.web.app import create_app

CLI = Caller.cli()


class RecordingProbe:
    def __init__(self, echo: int | Exception = 0, query: int | Exception = 200) -> None:
        self.answers = {"echo": echo, "query": query}
        self.calls: list[tuple[str, str, str]] = []

    def _answer(self, what: str) -> int:
        answer = self.answers[what]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def echo(self, peer: Peer) -> int:
        self.calls.append(("echo", peer.name, ""))
        return self._answer("echo")

    def query(self, peer: Peer, credentials: str) -> int:
        self.calls.append(("query", peer.name, credentials))
        return self._answer("query")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    opened = open_archive(Settings(data_dir=tmp_path_factory.mktemp("verify") / "data"))
    peers = opened.peers
    both = {"ae_title": "PACS", "host": "10.0.0.9", "port": 104, "auth": "env:PACS_TOKEN"}
    peers.put("both", {**both, "dicomweb_url": "https://pacs.example.org/dicomweb"}, CLI)
    peers.environ = {"PACS_TOKEN": "bearer:t0ken"}
    peers.put("dimse-only", {"ae_title": "MODALITY", "host": "10.0.0.7", "port": 11112}, CLI)
    peers.put("folder", {"folder": "/srv/backup"}, CLI)
    yield opened
    opened.close()


def service(archive: Archive, probe: RecordingProbe) -> PeerVerificationService:
    return PeerVerificationService(archive.peers, probe)


def test_both_probes_run_and_the_credentials_are_read_when_used(archive: Archive) -> None:
    probe = RecordingProbe()
    found = service(archive, probe).verify("both")
    assert found["ok"] is True
    assert (found["dimse"]["status"], found["dicomweb"]["status"]) == ("0x0000", "200")
    assert probe.calls == [("echo", "both", ""), ("query", "both", "bearer:t0ken")]
    assert found["dimse"]["seconds"] >= 0


def test_a_failure_of_either_probe_fails_the_verification_with_its_reason(archive: Archive) -> None:
    found = service(archive, RecordingProbe(echo=0x0110)).verify("both")
    assert (found["ok"], found["dimse"]["ok"], found["dimse"]["status"]) == (False, False, "0x0110")
    assert found["dicomweb"]["ok"] is True
    found = service(archive, RecordingProbe(query=401)).verify("both")
    assert (found["ok"], found["dicomweb"]["status"]) == (False, "401")
    found = service(archive, RecordingProbe(echo=PeerUnreachable("connection refused"))).verify("dimse-only")
    assert found["ok"] is False and "dicomweb" not in found
    assert (found["dimse"]["status"], found["dimse"]["detail"]) == ("", "connection refused")


def test_unknown_peers_and_peers_with_nothing_to_call_are_refused(archive: Archive) -> None:
    probe = RecordingProbe()
    with pytest.raises(NotFound):
        service(archive, probe).verify("nobody")
    with pytest.raises(InvalidRequest, match="neither"):
        service(archive, probe).verify("folder")
    assert probe.calls == []


def test_me_without_access_control_is_an_unrestricted_administrator(archive: Archive, tmp_path: Path) -> None:
    app = create_app(archive, Settings(data_dir=tmp_path))

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/api/me")

    r = asyncio.run(get())
    assert r.status_code == 200
    assert r.json() == {"name": None, "unrestricted": True, "administer": True, "grants": []}
