"""Webhooks on a real server: a receiver in the test (an HTTP server on 127.0.0.1)
gets stored, stable-study and deleted events, each signed with HMAC-SHA256 of its body,
in the order of the change log; while the receiver is down the events wait and are
retried, then all arrive once it is back, none twice; the delivery log says what
happened. Objects are sent with DCMTK storescu and deleted over DICOMweb."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import datagen
from tests.e2e.helpers import HOST, DicomhubServer, ServerPool, free_port, store_ok

pytestmark = pytest.mark.e2e

KEY = "webhook-test-key"


class Receiver:
    """A webhook receiver that checks each signature and keeps what it got."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.got: list[dict[str, Any]] = []
        self.bad: list[str] = []
        self.arrived = threading.Condition()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(KEY.encode(), body, hashlib.sha256).hexdigest()
                event = json.loads(body)
                with receiver.arrived:
                    if self.headers["X-Dicomhub-Signature"] != expected:
                        receiver.bad.append(self.headers["X-Dicomhub-Signature"])
                    elif self.headers["X-Dicomhub-Event"] != event["event"]:
                        receiver.bad.append(f"header {self.headers['X-Dicomhub-Event']} for {event['event']}")
                    else:
                        receiver.got.append(event)
                    receiver.arrived.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer((HOST, self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, event: str, uid: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                for got in self.got:
                    if (got["event"], got["uid"]) == (event, uid):
                        return got
                left = deadline - time.monotonic()
                assert left > 0, f"no {event} of {uid} within {timeout} s; got {self.got}"
                self.arrived.wait(left)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    r.start()
    yield r
    if r._server is not None:
        r._server.server_close()


def start_server(servers: ServerPool, tmp_path: Path, receiver: Receiver) -> DicomhubServer:
    config = tmp_path / "dicomhub.toml"
    config.write_text(
        "[dicomhub]\nstable_age = 2\n\n"
        "[[webhook]]\n"
        'name = "receiver"\n'
        f'url = "http://{HOST}:{receiver.port}/hook"\n'
        'secret = "env:TEST_WEBHOOK_KEY"\n'
        'events = ["stored", "stable_study", "deleted"]\n'
    )
    return servers.start(args=["--config", str(config)], env={"TEST_WEBHOOK_KEY": KEY})


def deliveries(server: DicomhubServer) -> list[dict[str, Any]]:
    r = httpx.get(f"{server.base_url}/admin/webhooks/receiver/deliveries", params={"limit": 1000})
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()
    return found


def test_events_arrive_signed_in_order_and_survive_a_receiver_outage(
    servers: ServerPool, tmp_path: Path, receiver: Receiver
) -> None:
    server = start_server(servers, tmp_path, receiver)
    first = datagen.write_ct_series(tmp_path / "a", 2)
    store_ok(server, tmp_path / "a", expect=2)
    study = str(first[0].StudyInstanceUID)
    for ds in first:
        receiver.wait_for("stored", str(ds.SOPInstanceUID))
    stable = receiver.wait_for("stable_study", study)
    assert not receiver.bad
    seqs = [e["seq"] for e in receiver.got]
    assert seqs == sorted(seqs) and stable["seq"] == max(seqs)

    # The receiver goes away; what happens meanwhile waits and is retried.
    receiver.stop()
    late = datagen.write_ct_series(tmp_path / "b", 1)
    store_ok(server, tmp_path / "b", expect=1)
    deadline = time.monotonic() + 20
    while not [d for d in deliveries(server) if d["outcome"] == "failed"]:
        assert time.monotonic() < deadline, "no failed attempt logged while the receiver was down"
        time.sleep(0.3)
    receiver.start()
    receiver.wait_for("stored", str(late[0].SOPInstanceUID))
    receiver.wait_for("stable_study", str(late[0].StudyInstanceUID))

    r = httpx.delete(f"{server.base_url}/dicomweb/studies/{study}")
    assert r.status_code in (200, 204), r.text
    receiver.wait_for("deleted", study)
    assert not receiver.bad
    seqs = [e["seq"] for e in receiver.got]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, none twice
    log = deliveries(server)
    failed = [d for d in log if d["outcome"] == "failed"]
    late_uid = str(late[0].SOPInstanceUID)
    assert failed and all(d["uid"] == late_uid and d["status_code"] is None for d in failed)
    assert {d["seq"] for d in log if d["outcome"] == "delivered"} == set(seqs)
    status = httpx.get(f"{server.base_url}/admin/webhooks").json()
    assert status[0]["name"] == "receiver" and status[0]["position"] >= max(seqs)
    assert httpx.get(f"{server.base_url}/admin/webhooks/nobody/deliveries").status_code == 404
