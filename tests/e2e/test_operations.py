"""Logs, metrics and the audit feed as an operator sees them, on a real ``dicomhub serve``.

One server sends its audit messages to a syslog collector over mutual TLS
(RFC 5425) and writes JSON log lines; another sends them over UDP (RFC 5426).
The collectors are listeners of this test. DCMTK's storescu stores, QIDO-RS
queries; then the test reads what arrived, scrapes ``/metrics``, prunes the
association log (rows aged past the retention, a DIMSE worker killed so that
its successor prunes on its first write) and checks that no counter went down.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import datagen
import httpx
import pytest

from tests.backends import backend_env

from .helpers import (
    HOST,
    DicomhubServer,
    ServerPool,
    descendant_pids,
    echo,
    listening_pids,
    metric_samples,
    store_ok,
    wait_until,
)
from .tlscerts import Pki, make_pki

pytestmark = [pytest.mark.e2e, pytest.mark.backend_neutral]

N_STORES = 4
RFC5424 = re.compile(
    rb"<(\d{1,3})>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (\S+) (\S+) (\d+) (\S+) - \xef\xbb\xbf(.*)", re.S
)
# PS3.16 CID 400 codes of the events the operations below cause.
LOGIN, STORED, QUERY = "110114", "110104", "110112"


class TlsCollector:
    """An RFC 5425 receiver: TLS with client certificates, octet-counted frames, strictly parsed."""

    def __init__(self, pki: Pki) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
        self.context.load_cert_chain(str(pki.server.cert), str(pki.server.key))
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.create_server((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.messages: list[bytes] = []
        self.errors: list[str] = []
        self.peers: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.errors.append(f"handshake: {exc}")
            return
        cert = conn.getpeercert() or {}
        self.peers.append(str(dict(x[0] for x in cert.get("subject", ())).get("commonName")))
        buffer = b""
        with conn:
            while True:
                length, space, rest = buffer.partition(b" ")
                if space:
                    if not length.isdigit() or length.startswith(b"0"):
                        self.errors.append(f"bad frame header {buffer[:40]!r}")
                        return
                    if len(rest) >= int(length):
                        with self._lock:
                            self.messages.append(rest[: int(length)])
                        buffer = rest[int(length) :]
                        continue
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    if buffer:
                        self.errors.append(f"connection closed inside a frame: {buffer[:40]!r}")
                    return
                buffer += chunk

    def snapshot(self) -> list[bytes]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.sock.close()


class UdpCollector:
    """An RFC 5426 receiver: one message per datagram."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.messages: list[bytes] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                self.messages.append(self.sock.recv(65536))
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


def audit_events(messages: list[bytes], aet: str) -> list[tuple[str, ET.Element]]:
    """(event ID code, AuditMessage) of each syslog message, checking its RFC 5424 header."""
    events = []
    for message in messages:
        m = RFC5424.fullmatch(message)
        assert m, f"not an RFC 5424 message: {message[:120]!r}"
        pri, _stamp, _host, app, _procid, msgid, body = m.groups()
        assert int(pri) in (84, 85)  # facility 10 (authpriv), notice or warning
        assert (app, msgid) == (aet.encode(), b"IHE+RFC-3881")
        root = ET.fromstring(body.decode("utf-8"))
        assert root.tag == "AuditMessage"
        event_id = root.find("EventIdentification/EventID")
        assert event_id is not None and event_id.get("codeSystemName") == "DCM"
        events.append((str(event_id.get("csd-code")), root))
    return events


def run_sql(data_dir: Path, sql: str, **params: object) -> None:
    """Execute a writing SQL statement on the archive's index (whichever back end)."""
    from sqlalchemy import text

    from dicomhub.index.engine import connect_engine

    url = backend_env(data_dir).get("DICOMHUB_DATABASE_URL") or f"sqlite:///{Path(data_dir) / 'index.sqlite'}"
    engine = connect_engine(url, pool_size=1, max_overflow=0)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), params)
    finally:
        engine.dispose()


def json_log_lines(server: DicomhubServer) -> list[str]:
    """The complete lines the running server has logged since its last start."""
    text = server.log_text()
    since_start = text.rsplit("===== start #", 1)[1].split("\n", 1)[1]
    return since_start.split("\n")[:-1]  # the last piece may be a line being written


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_collector(pki: Pki) -> Iterator[TlsCollector]:
    collector = TlsCollector(pki)
    yield collector
    collector.close()


@pytest.fixture(scope="module")
def hub(
    module_servers: ServerPool,
    tls_collector: TlsCollector,
    pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, object]:
    """A server with JSON logs and a TLS audit feed, after N stores and two QIDO-RS queries."""
    server = module_servers.start(
        "ops",
        args=[
            "--workers", "1",
            "--log-format", "json",
            "--audit-syslog", f"tls://{HOST}:{tls_collector.port}",
            "--audit-syslog-ca", str(pki.ca),
            "--audit-syslog-cert", str(pki.client.cert),
            "--audit-syslog-key", str(pki.client.key),
        ],
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("ops-in")
    studies = {
        str(datagen.write_instance(folder / f"{i}.dcm", rows=8, cols=8).StudyInstanceUID)
        for i in range(N_STORES)
    }
    store_ok(server, folder, calling="STORER", expect=N_STORES)
    given = httpx.get(server.base_url + "/dicomweb/studies", headers={"X-Request-ID": "e2e-given-1"})
    generated = httpx.get(server.base_url + "/dicomweb/studies", params={"PatientName": "SECRET^NAME"})
    # 200 with the stored studies; 204 (no match) for the patient name.
    assert (given.status_code, generated.status_code) == (200, 204)
    return {"server": server, "studies": studies, "given": given, "generated": generated}


def test_audit_messages_arrive_over_mutual_tls(hub: dict[str, object], tls_collector: TlsCollector) -> None:
    server = hub["server"]
    assert isinstance(server, DicomhubServer)

    def arrived() -> list[tuple[str, ET.Element]] | None:
        events = audit_events(tls_collector.snapshot(), server.aet)
        codes = [code for code, _ in events]
        return events if {LOGIN, STORED, QUERY} <= set(codes) else None

    events = wait_until(arrived, timeout=20, what="login, store and query audit messages")
    assert not tls_collector.errors, tls_collector.errors
    assert set(tls_collector.peers) == {"modality-1"}  # the node's certificate was presented
    stored = {
        obj.get("ParticipantObjectID")
        for code, root in events  # type: ignore[union-attr]
        if code == STORED
        for obj in root.iter("ParticipantObjectIdentification")
        if obj.get("ParticipantObjectTypeCodeRole") == "3"
    }
    assert stored == hub["studies"]
    logins = [root for code, root in events if code == LOGIN]  # type: ignore[union-attr]
    assert any(
        p.get("AlternativeUserID") == "AETITLES=STORER"
        for root in logins
        for p in root.iter("ActiveParticipant")
    )


def test_json_logs_and_request_ids(hub: dict[str, object]) -> None:
    server, given, generated = hub["server"], hub["given"], hub["generated"]
    assert isinstance(server, DicomhubServer)
    assert isinstance(given, httpx.Response) and isinstance(generated, httpx.Response)
    assert given.headers["x-request-id"] == "e2e-given-1"
    generated_id = generated.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", generated_id)

    def access_lines() -> list[dict[str, object]] | None:
        lines = [json.loads(line) for line in json_log_lines(server) if line]
        access = [line for line in lines if line["logger"] == "dicomhub.access"]
        ids = {line.get("request_id") for line in access}
        return access if {"e2e-given-1", generated_id} <= ids else None

    access = wait_until(access_lines, timeout=10, what="the access log lines")
    # Every line of the log parses as JSON (json.loads above would have raised).
    lines = [json.loads(line) for line in json_log_lines(server) if line]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    by_id = {line["request_id"]: line for line in access}  # type: ignore[union-attr]
    http = by_id[generated_id]["http"]
    assert isinstance(http, dict)
    assert http["method"] == "GET" and http["path"] == "/dicomweb/studies" and http["status"] == 204
    assert http["route"] == "/dicomweb/studies" and float(http["duration_ms"]) > 0
    assert "SECRET" not in json.dumps(access)  # the query string is not logged
    # The QIDO-RS endpoint's own line carries the request id too (it ran in the thread pool).
    assert any(
        line["logger"] == "dicomhub.web.qido" and line.get("request_id") == "e2e-given-1" for line in lines
    )
    # DIMSE lines carry the association id.
    accepted = [line for line in lines if "association accepted: STORER" in str(line["message"])]
    assert accepted and re.fullmatch(r"[0-9a-f]{16}", str(accepted[0].get("association_id")))


def test_counters_survive_pruning_and_a_worker_crash(hub: dict[str, object]) -> None:
    server = hub["server"]
    assert isinstance(server, DicomhubServer) and server.proc is not None
    store_key = 'dicomhub_dimse_operations_total{calling_ae="STORER",operation="store",status="success"}'

    def scrape() -> dict[str, float]:
        return metric_samples(httpx.get(server.base_url + "/metrics").text)

    def rows(calling: str) -> list[object]:
        found = httpx.get(server.base_url + "/admin/associations", params={"calling_ae": calling}).json()
        assert isinstance(found, list)
        return found

    wait_until(lambda: rows("STORER"), what="the STORER association in the log")
    before = scrape()
    assert before[store_key] == N_STORES
    assert before['dicomhub_stored_objects_total{outcome="stored"}'] == N_STORES
    assert before["dicomhub_stored_bytes_total"] > 0
    assert before['dicomhub_dimse_operation_duration_seconds_count{operation="store"}'] == N_STORES
    assert before['dicomhub_associations_total{calling_ae="STORER",outcome="released"}'] == 1
    route = '{method="GET",route="/dicomweb/studies"}'
    assert before[f"dicomhub_http_request_duration_seconds_count{route}"] >= 2
    assert (
        'dicomhub_http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/dicomweb/studies"}'
        in before
    )
    assert before['dicomhub_http_requests_total{method="GET",route="/dicomweb/studies",status="200"}'] >= 1
    assert before['dicomhub_http_requests_total{method="GET",route="/dicomweb/studies",status="204"}'] >= 1
    assert {"http", "background", "dimse-0"} <= {
        m.group(1)
        for k in before
        if (m := re.match(r'dicomhub_process_cpu_seconds_total\{process="(.*)"\}', k))
    }

    # Age every association row past the 30 days kept; a worker prunes on its first
    # write after it starts, so end the one running (kill -9: its counts stay counted).
    run_sql(
        server.data_dir,
        "UPDATE association_log SET started_at = :old",
        old=dt.datetime.now(dt.UTC) - dt.timedelta(days=40),
    )
    (worker,) = [
        p for p in listening_pids(server.dimse_port, descendant_pids(server.proc.pid)) if p != server.proc.pid
    ]
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while echo(server, "PRUNER")[0] != 0:
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.25)
    wait_until(lambda: rows("PRUNER") and not rows("STORER"), what="the aged rows pruned")

    after = scrape()
    assert after[store_key] == N_STORES
    assert after['dicomhub_stored_objects_total{outcome="stored"}'] == N_STORES
    assert after['dicomhub_associations_total{calling_ae="STORER",outcome="released"}'] == 1
    assert after['dicomhub_dimse_operation_duration_seconds_count{operation="store"}'] == N_STORES
    for key, value in before.items():
        if key.endswith(("_total", "_count")) or "_total{" in key or "_count{" in key:
            if "process_cpu" not in key:
                assert after.get(key, 0) >= value, key


def test_audit_messages_over_udp(module_servers: ServerPool) -> None:
    collector = UdpCollector()
    try:
        server = module_servers.start(
            "udp", args=["--workers", "1", "--audit-syslog", f"udp://{HOST}:{collector.port}"]
        )
        rc, out = echo(server, "UDPECHO")
        assert rc == 0, out
        assert httpx.get(server.base_url + "/dicomweb/studies").status_code in (200, 204)

        def arrived() -> set[str] | None:
            codes = {code for code, _ in audit_events(list(collector.messages), server.aet)}
            return codes if {LOGIN, QUERY} <= codes else None

        wait_until(arrived, timeout=20, what="login and query audit messages over UDP")
        # One RFC 5424 message per datagram: no framing, nothing after the XML.
        for message in collector.messages:
            assert message.endswith(b"</AuditMessage>") and not message[:1].isdigit()
    finally:
        collector.close()
