"""The pieces operators watch, in process: log formatters and the context filter,
RFC 5424 messages and RFC 5425 framing, the bounded syslog sender, and the
HTTP middleware that gives requests their id, route label and access line."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from dicomhub.errors import ConfigurationError
from dicomhub.services.liveness import process_alive
from dicomhub.telemetry import context
from dicomhub.telemetry.logs import ContextFilter, JsonFormatter, TextFormatter
from dicomhub.telemetry.metrics import new_directory
from dicomhub.telemetry.syslog import (
    SyslogSender,
    SyslogTarget,
    format_rfc5424,
    frame_octet_counting,
    parse_target,
)
from dicomhub.web.observe import ObserveMiddleware, RouteTemplates

# <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD BOM MSG
RFC5424 = re.compile(
    rb"<(\d{1,3})>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (\S+) (\S+) (\S+) (\S+) - \xef\xbb\xbf(.*)", re.S
)


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.getLogger("dicomhub.test").makeRecord(
        "dicomhub.test", logging.INFO, __file__, 1, message, args, None, extra=extra or None
    )
    return record


def _in_context(var: contextvars.ContextVar[str | None], value: str, record: logging.LogRecord) -> None:
    def run() -> None:
        var.set(value)
        ContextFilter().filter(record)

    contextvars.copy_context().run(run)


# --------------------------------------------------------------------------- logs


def test_json_line_carries_the_request_id_and_fields() -> None:
    record = _record("GET %s", "/x", fields={"http": {"status": 200}})
    _in_context(context.request_id, "req-1", record)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "GET /x" and line["level"] == "INFO" and line["logger"] == "dicomhub.test"
    assert line["request_id"] == "req-1" and "association_id" not in line
    assert line["http"] == {"status": 200}
    assert line["time"].endswith("+00:00") and isinstance(line["process"], int)


def test_json_line_of_an_exception_is_one_line() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "oops", (), sys.exc_info()
        )
    ContextFilter().filter(record)
    text = JsonFormatter().format(record)
    assert "\n" not in text
    assert "ValueError: bad" in json.loads(text)["exception"]


def test_text_line_names_the_association() -> None:
    record = _record("hello")
    _in_context(context.association_id, "abc", record)
    text = TextFormatter().format(record)
    assert re.search(r" INFO dicomhub\.test \[\d+\] assoc=abc: hello$", text), text
    assert "req=" not in text
    # Outside any request or association, nothing is added.
    plain = _record("hello")
    ContextFilter().filter(plain)
    assert re.search(r"\[\d+\]: hello", TextFormatter().format(plain))


def test_request_ids_from_clients_are_tokens_only() -> None:
    assert context.valid_request_id("a1-B2.c3:d4_e5") == "a1-B2.c3:d4_e5"
    for bad in ("", None, "x" * 129, "two words", "line\nbreak", 'quote"'):
        assert context.valid_request_id(bad) is None
    assert re.fullmatch(r"[0-9a-f]{16}", context.new_id())


# --------------------------------------------------------------------------- RFC 5424 / 5425


def test_rfc5424_header_and_utf8_message() -> None:
    data = format_rfc5424(
        "<AuditMessage>é</AuditMessage>", severity=5, app_name="DICOMHUB", msgid="IHE+RFC-3881",
        hostname="node 1", procid=42,
    )  # fmt: skip
    m = RFC5424.fullmatch(data)
    assert m, data
    pri, _stamp, host, app, procid, msgid, msg = m.groups()
    assert int(pri) == 10 * 8 + 5  # authpriv.notice
    assert (host, app, procid, msgid) == (b"node1", b"DICOMHUB", b"42", b"IHE+RFC-3881")
    assert msg.decode("utf-8") == "<AuditMessage>é</AuditMessage>"


def test_rfc5424_empty_fields_are_nil() -> None:
    data = format_rfc5424("m", severity=4, app_name="", msgid=" ", hostname="h")
    assert data.startswith(b"<84>1 ") and b" h - " in data and b" - - " in data


def test_octet_counting_counts_bytes_not_characters() -> None:
    message = "é".encode()
    assert frame_octet_counting(message) == b"2 " + message


def test_parse_target() -> None:
    assert parse_target("tls://collector.example") == SyslogTarget("tls", "collector.example", 6514)
    assert parse_target("udp://127.0.0.1") == SyslogTarget("udp", "127.0.0.1", 514)
    assert parse_target("tcp://[::1]:1601") == SyslogTarget("tcp", "::1", 1601)
    for bad in ("http://x", "tls://", "udp://h:99999", "collector:514"):
        with pytest.raises(ConfigurationError):
            parse_target(bad)


# --------------------------------------------------------------------------- the sender


def _sample(result: str) -> float:
    return REGISTRY.get_sample_value("dicomhub_audit_syslog_messages_total", {"result": result}) or 0.0


def _read_frames(conn: socket.socket, n: int) -> list[bytes]:
    """``n`` octet-counted frames from ``conn``, strictly."""
    buffer, frames = b"", []
    while len(frames) < n:
        length, space, rest = buffer.partition(b" ")
        if space and length.isdigit() and len(rest) >= int(length):
            frames.append(rest[: int(length)])
            buffer = rest[int(length) :]
            continue
        chunk = conn.recv(65536)
        if not chunk:
            break
        buffer += chunk
    return frames


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(10)
    yield sock
    sock.close()


def test_queue_is_bounded_and_drops_are_counted() -> None:
    # Nothing listens: the thread holds one message and backs off; the queue fills.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sender = SyslogSender(SyslogTarget("tcp", "127.0.0.1", port), "T", capacity=3, max_backoff=60)
    before = _sample("dropped-full")
    started = time.perf_counter()
    results = [sender.submit(f"m{i}") for i in range(20)]
    assert time.perf_counter() - started < 0.5  # never waits for the collector
    assert results[:3] == [True, True, True]
    dropped = results.count(False)
    assert 20 - 4 <= dropped <= 20 - 3  # the thread may have taken one out
    assert _sample("dropped-full") - before == dropped
    sender.close(timeout=0.2)


def test_tcp_frames_and_reconnects(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    sender = SyslogSender(SyslogTarget("tcp", "127.0.0.1", port), "T", max_backoff=0.2, hostname="h")
    sent_before = _sample("sent")
    sender.submit("first")
    sender.submit("second")
    conn, _ = listener.accept()
    conn.settimeout(10)
    frames = _read_frames(conn, 2)
    assert [RFC5424.fullmatch(f).group(7) for f in frames] == [b"first", b"second"]  # type: ignore[union-attr]
    conn.close()  # the collector restarts: the sender notices, reconnects, keeps the message
    deadline = time.monotonic() + 10
    received: list[bytes] = []
    n = 0
    while not received and time.monotonic() < deadline:
        n += 1
        sender.submit(f"again-{n}")
        listener.settimeout(0.3)
        try:
            conn2, _ = listener.accept()
        except TimeoutError:
            continue
        conn2.settimeout(10)
        received = _read_frames(conn2, 1)
        conn2.close()
    assert received and RFC5424.fullmatch(received[0])
    sender.close(timeout=1)
    assert _sample("sent") - sent_before >= 3


def test_udp_one_message_per_datagram() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(10)
        sender = SyslogSender(SyslogTarget("udp", *udp.getsockname()), "T")
        sender.submit("one")
        sender.submit("two", severity=4)
        first, second = udp.recv(65536), udp.recv(65536)
        sender.close()
    assert RFC5424.fullmatch(first).group(7) == b"one"  # type: ignore[union-attr]
    assert second.startswith(b"<84>1 ")
    before = _sample("dropped-too-large")
    assert not SyslogSender(SyslogTarget("udp", "127.0.0.1", 9), "T").submit("x" * 70000)
    assert _sample("dropped-too-large") == before + 1


# --------------------------------------------------------------------------- HTTP middleware


def _app(records: list[logging.LogRecord]) -> Starlette:
    def study(request: Request) -> PlainTextResponse:
        logging.getLogger("dicomhub.test.endpoint").warning("in the endpoint")
        return PlainTextResponse(request.path_params.get("study", "all"))

    templates = RouteTemplates()
    app = Starlette(
        routes=[Mount("/dicomweb", routes=[Route("/studies", study), Route("/studies/{study}", study)])]
    )
    app.add_middleware(ObserveMiddleware, templates=templates)
    templates.add(app.routes)

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(ContextFilter())
    for name in ("dicomhub.access", "dicomhub.test.endpoint"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    return app


def test_request_id_route_label_and_access_line() -> None:
    records: list[logging.LogRecord] = []
    app = _app(records)

    async def go() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
            return (
                await client.get(
                    "/dicomweb/studies/1.2.3?PatientName=SECRET", headers={"X-Request-ID": "given-1"}
                ),
                await client.get("/dicomweb/studies", headers={"X-Request-ID": "bad id"}),
                await client.get("/nowhere"),
            )

    try:
        given, bad, nowhere = asyncio.run(go())
    finally:
        for name in ("dicomhub.access", "dicomhub.test.endpoint"):
            logging.getLogger(name).handlers.clear()
    assert given.status_code == 200 and given.headers["x-request-id"] == "given-1"
    generated = bad.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", generated)
    assert nowhere.status_code == 404
    endpoint = [r for r in records if r.name == "dicomhub.test.endpoint"]
    # The endpoint ran in Starlette's thread pool, and its line still has the id.
    assert [getattr(r, "request_id", None) for r in endpoint] == ["given-1", generated]
    access = [r for r in records if r.name == "dicomhub.access"]
    fields = [r.fields["http"] for r in access]  # type: ignore[attr-defined]
    assert [f["route"] for f in fields] == ["/dicomweb/studies/{study}", "/dicomweb/studies", "unmatched"]
    assert [f["status"] for f in fields] == [200, 200, 404]
    assert all("SECRET" not in r.getMessage() and "SECRET" not in json.dumps(r.fields) for r in access)  # type: ignore[attr-defined]
    assert access[0].request_id == "given-1"  # type: ignore[attr-defined]
    count = REGISTRY.get_sample_value(
        "dicomhub_http_request_duration_seconds_count",
        {"method": "GET", "route": "/dicomweb/studies/{study}"},
    )
    assert count is not None and count >= 1


def test_threads_start_without_an_association_id() -> None:
    seen: list[str | None] = []
    context.association_id.set("outer")
    thread = threading.Thread(target=lambda: seen.append(context.association_id.get()))
    thread.start()
    thread.join()
    assert seen == [None]
    context.association_id.set(None)


# --------------------------------------------------------------------------- docs


def test_dashboard_and_docs_use_the_metric_names_the_server_has() -> None:
    from pathlib import Path

    from prometheus_client import CollectorRegistry

    from dicomhub.telemetry.metrics import ProcessTable, metrics

    root = Path(__file__).resolve().parents[2]
    families = {m.name for m in REGISTRY.collect() if m.name.startswith("dicomhub_")}
    metrics()  # every family of the server is registered once created
    families |= {m.name for m in REGISTRY.collect() if m.name.startswith("dicomhub_")}
    registry = CollectorRegistry()
    registry.register(ProcessTable(lambda: {"test": os.getpid()}))
    families |= {m.name for m in registry.collect()}
    # The gauges read from the index at scrape time (dicomhub.web.metrics).
    source = (root / "src/dicomhub/web/metrics.py").read_text()
    scraped = set(re.findall(r'GaugeMetricFamily\(\s*"(dicomhub_[a-z_]+)"', source))
    assert {"dicomhub_info", "dicomhub_objects", "dicomhub_background_queue_depth"} <= scraped
    families |= scraped

    def family(name: str) -> str:
        return re.sub(r"_(bucket|count|sum|total)$", "", name)

    dashboard = (root / "docs/grafana-dashboard.json").read_text()
    json.loads(dashboard)
    used = {family(n) for n in re.findall(r"dicomhub_[a-z_]+", dashboard)}
    assert used and used <= families, used - families
    docs = (root / "docs/operations.md").read_text()
    documented = {family(n) for n in re.findall(r"`(dicomhub_[a-z_]+)`", docs)}
    assert documented == families, documented ^ families


def test_configure_logging_twice_installs_one_handler() -> None:
    from dicomhub.telemetry.logs import configure_logging

    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        configure_logging("INFO", "json")
        configure_logging("WARNING", "text")
        added = [h for h in root.handlers if h not in before]
        assert len(added) == 1 and isinstance(added[0].formatter, TextFormatter)
        assert all(h in root.handlers for h in before)  # pytest's own capture stays
        assert root.level == logging.WARNING
    finally:
        for handler in root.handlers:
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)
        logging.captureWarnings(False)
        logging.getLogger("pynetdicom").setLevel(logging.NOTSET)


# --------------------------------------------------------------------------- the audit feed


class _Repo:
    def __init__(self) -> None:
        self.rows: list[object] = []

    def append_many(self, events: list[object]) -> list[int]:
        self.rows += events
        return list(range(len(self.rows) - len(events) + 1, len(self.rows) + 1))


def test_audit_records_are_forwarded_after_the_commit_and_failures_stay_quiet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from dicomhub.model.audit import AuditAction, AuditedStudy, AuditEvent, AuditOutcome
    from dicomhub.model.caller import Caller, Channel
    from dicomhub.services.audit import AuditService

    forwarded: list[object] = []
    service = AuditService(_Repo(), forward=forwarded.extend)  # type: ignore[arg-type]
    caller = Caller(Channel.DIMSE, "MODALITY", "10.0.0.7")
    study = AuditedStudy("1.2.3", "P1", ("1.2.3.4",), 2)
    event = AuditEvent(AuditAction.STORE, AuditOutcome.SUCCESS, caller, (study,))
    service.record_many([event, event])
    assert [r.id for r in forwarded] == [1, 2]  # type: ignore[attr-defined]
    record = forwarded[0]
    assert record.action is AuditAction.STORE and record.ae_title == "MODALITY"  # type: ignore[attr-defined]
    assert record.studies == (study,)  # type: ignore[attr-defined]

    def broken(records: object) -> None:
        raise OSError("collector gone")

    quiet = AuditService(_Repo(), forward=broken)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="dicomhub.audit"):
        quiet.record(event)  # stored; the feed's failure is logged, not raised
    assert any("could not forward" in r.getMessage() for r in caplog.records)


def test_a_start_removes_the_metrics_directories_of_servers_that_are_gone(tmp_path: Path) -> None:
    # A server stopped by kill -9 never removes its directory: the next start does.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f"dicomhub-metrics-{gone.pid}-abc123"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"x")
    running = tmp_path / f"dicomhub-metrics-{os.getpid()}-def456"  # another server, still up
    running.mkdir()
    not_ours = tmp_path / "dicomhub-metrics-notes"
    not_ours.mkdir()

    made = new_directory(process_alive, tmp_path)

    assert made.is_dir() and not any(made.iterdir())
    assert made.name.startswith(f"dicomhub-metrics-{os.getpid()}-")
    assert not stale.exists()
    assert running.is_dir() and not_ours.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([made.name, running.name, not_ours.name])
