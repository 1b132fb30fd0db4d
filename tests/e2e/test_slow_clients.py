"""Slow and stuck clients: slow loris on HTTP and DIMSE, idle associations, a flood
of association requests beyond the limit.

The server runs with short timeouts so that the tests are quick. Each test
checks three things: the stuck connections are closed after their timeout
(and what they held, a spool file, a thread, is released), other clients are
served meanwhile within a bound of their usual latency, and the server's
memory stays bounded. The figures are printed (``pytest -s``) for
docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import datagen
import httpx
import pytest

from .helpers import (
    HOST,
    DicomhubServer,
    ServerPool,
    descendant_pids,
    echo,
    run_cli_split,
    store_ok,
    wait_until,
)

pytestmark = pytest.mark.e2e

ACSE_TIMEOUT = 2.0
DIMSE_TIMEOUT = 3.0
NETWORK_TIMEOUT = 4.0
MAX_ASSOCIATIONS = 8
HTTP_HEADER_TIMEOUT = 2.0
HTTP_BODY_TIMEOUT = 2.0
# Generous: the machine running the tests may be loaded.
SLACK = 8.0

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"


def figure(name: str, value: object) -> None:
    """One measured figure, printed for docs/reliability.md."""
    print(f"FIGURE {name}: {value}")


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool) -> DicomhubServer:
    return module_servers.start(
        args=[
            "--acse-timeout",
            str(ACSE_TIMEOUT),
            "--dimse-timeout",
            str(DIMSE_TIMEOUT),
            "--network-timeout",
            str(NETWORK_TIMEOUT),
            "--max-associations",
            str(MAX_ASSOCIATIONS),
            "--workers",
            "2",
        ],
        env={
            "DICOMHUB_HTTP_HEADER_TIMEOUT": str(HTTP_HEADER_TIMEOUT),
            "DICOMHUB_HTTP_BODY_TIMEOUT": str(HTTP_BODY_TIMEOUT),
        },
    )


# --------------------------------------------------------------------------- wire


def _ae(title: str) -> bytes:
    return title.encode().ljust(16)


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def associate_rq(called: str, calling: str = "SLOWSCU", abstract: str = VERIFICATION) -> bytes:
    """A valid A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing one presentation context."""
    context = _item(
        0x20,
        bytes((1, 0, 0, 0)) + _item(0x30, abstract.encode()) + _item(0x40, IMPLICIT_VR_LE.encode()),
    )
    user = _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.3.4"))
    body = (
        struct.pack(">HH", 1, 0)
        + _ae(called)
        + _ae(calling)
        + bytes(32)
        + _item(0x10, b"1.2.840.10008.3.1.1.1")
        + context
        + user
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def p_data(pdvs: list[tuple[int, int, bytes]]) -> bytes:
    """A P-DATA-TF PDU of (context id, message control header, fragment) PDVs."""
    body = b"".join(struct.pack(">IBB", len(f) + 2, cx, mch) + f for cx, mch, f in pdvs)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, tag, len(value)) + value


def store_rq_command(sop_instance_uid: str) -> bytes:
    """A C-STORE-RQ command set (implicit VR little endian, PS3.7 9.3.1.1)."""

    def uid(text: str) -> bytes:
        raw = text.encode()
        return raw + b"\x00" * (len(raw) % 2)

    rest = b"".join(
        [
            _element(0x0002, uid(CT_IMAGE_STORAGE)),
            _element(0x0100, struct.pack("<H", 0x0001)),
            _element(0x0110, struct.pack("<H", 1)),
            _element(0x0700, struct.pack("<H", 0)),
            _element(0x0800, struct.pack("<H", 0x0000)),
            _element(0x1000, uid(sop_instance_uid)),
        ]
    )
    return _element(0x0000, struct.pack("<I", len(rest))) + rest


def read_pdu(sock: socket.socket, timeout: float = 10.0) -> tuple[int, bytes]:
    sock.settimeout(timeout)
    head = _recv_exact(sock, 6)
    pdu_type, _, length = struct.unpack(">BBI", head)
    return pdu_type, _recv_exact(sock, length)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def open_association(srv: DicomhubServer, abstract: str = VERIFICATION) -> socket.socket:
    """A raw socket with an established association (A-ASSOCIATE-AC received)."""
    sock = socket.create_connection((HOST, srv.dimse_port), timeout=10)
    sock.sendall(associate_rq(srv.aet, abstract=abstract))
    pdu_type, _ = read_pdu(sock)
    assert pdu_type == 0x02, f"expected A-ASSOCIATE-AC, got PDU type 0x{pdu_type:02X}"
    return sock


def closed_by_peer(sock: socket.socket, wait: float = 0.0) -> bool:
    """True once the peer closed (EOF, reset) or aborted the connection."""
    readable, _, _ = select.select([sock], [], [], wait)
    if not readable:
        return False
    try:
        data = sock.recv(65536)
    except OSError:
        return True
    # EOF, or an A-ABORT (0x07) / A-ASSOCIATE-RJ (0x03) PDU: the server ended it.
    return not data or data[0] in (0x03, 0x07)


class Trickler(threading.Thread):
    """Sends ``prefix`` at once, then ``payload`` one byte every ``interval`` seconds,
    until the server closes the connection; notes when that happened."""

    def __init__(self, port: int, prefix: bytes, payload: bytes, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.port, self.prefix, self.payload, self.interval = port, prefix, payload, interval
        self.started_at = 0.0
        self.closed_after: float | None = None
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        self.started_at = time.monotonic()
        with socket.create_connection((HOST, self.port), timeout=10) as sock:
            try:
                if self.prefix:
                    sock.sendall(self.prefix)
                for byte in self.payload:
                    if closed_by_peer(sock, self.interval) or self.stop.is_set():
                        break
                    sock.sendall(bytes((byte,)))
                    self.sent += 1
                else:
                    while not self.stop.is_set() and not closed_by_peer(sock, self.interval):
                        pass
            except OSError:
                pass
            if not self.stop.is_set():
                self.closed_after = time.monotonic() - self.started_at


@contextlib.contextmanager
def trickling(n: int, factory: Callable[[], Trickler]) -> Iterator[list[Trickler]]:
    threads = [factory() for _ in range(n)]
    for t in threads:
        t.start()
    try:
        yield threads
    finally:
        for t in threads:
            t.stop.set()
        for t in threads:
            t.join(15)


# --------------------------------------------------------------------------- measures


def assert_storage_consistent(srv: DicomhubServer) -> None:
    """``dicomhub check``: no row without its blob, no orphan blob, no damaged blob."""
    rc, out, err = run_cli_split("check", "--data-dir", str(srv.data_dir), "--json")
    assert rc == 0, f"dicomhub check failed ({rc}):\n{out}\n{err}"
    problems = json.loads(out)["storage"]["problems"]
    assert not problems, problems


def rss_kib(srv: DicomhubServer) -> int:
    """Resident memory of the server and all its processes, KiB."""
    assert srv.proc is not None
    total = 0
    for pid in [srv.proc.pid, *descendant_pids(srv.proc.pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def timed(action: Callable[[], object]) -> float:
    t0 = time.monotonic()
    action()
    return time.monotonic() - t0


def median_latency(action: Callable[[], object], n: int = 5) -> float:
    return statistics.median(timed(action) for _ in range(n))


def echo_ok(srv: DicomhubServer) -> None:
    rc, out = echo(srv)
    assert rc == 0, out


def qido_ok(srv: DicomhubServer) -> None:
    r = httpx.get(f"{srv.base_url}/dicomweb/studies", params={"limit": "10"}, timeout=30)
    assert r.status_code in (200, 204), r.text


def assert_within(name: str, baseline: float, under_attack: float) -> None:
    bound = max(1.0, 5 * baseline)
    figure(f"{name} latency baseline / under attack (s)", f"{baseline:.3f} / {under_attack:.3f}")
    assert under_attack <= bound, (
        f"{name}: {under_attack:.3f} s under attack, baseline {baseline:.3f} s (bound {bound:.3f} s)"
    )


def assert_all_closed(threads: list[Trickler], within: float, what: str) -> None:
    wait_until(
        lambda: all(t.closed_after is not None for t in threads),
        timeout=within + 10,
        what=f"server closed every {what}",
    )
    worst = max(t.closed_after or 0.0 for t in threads)
    figure(f"{what}: {len(threads)} connections, last closed after (s)", f"{worst:.1f}")
    assert worst <= within, f"a {what} stayed open {worst:.1f} s (allowed {within:.1f} s)"
    # The payload was far from sent: the server ended them, not the end of data.
    assert all(t.sent < len(t.payload) for t in threads)


# --------------------------------------------------------------------------- DIMSE


def test_trickled_associate_rq_is_closed_and_others_are_served(hub: DicomhubServer, tmp_path: Path) -> None:
    baseline = median_latency(lambda: echo_ok(hub))
    rss_before = rss_kib(hub)
    rq = associate_rq(hub.aet)
    # Fewer than max_associations: each one counts while it lasts.
    with trickling(MAX_ASSOCIATIONS - 3, lambda: Trickler(hub.dimse_port, b"", rq)) as threads:
        wait_until(lambda: all(t.sent >= 2 for t in threads), timeout=20, what="trickling started")
        under_attack = median_latency(lambda: echo_ok(hub))
        assert_within("C-ECHO (echoscu) during A-ASSOCIATE-RQ slow loris", baseline, under_attack)
        # ACSE timeout for the whole request (not per byte), then the PDU the server
        # waits for at most one more socket timeout.
        assert_all_closed(threads, 2 * ACSE_TIMEOUT + SLACK, "trickled A-ASSOCIATE-RQ")
    echo_ok(hub)
    figure("RSS growth, A-ASSOCIATE-RQ slow loris (KiB)", rss_kib(hub) - rss_before)


def test_trickled_p_data_pdu_is_aborted(hub: DicomhubServer) -> None:
    baseline = median_latency(lambda: echo_ok(hub))
    command = p_data([(1, 0x03, store_rq_command(datagen.uid()))])

    class AssociatedTrickler(Trickler):
        def run(self) -> None:
            self.started_at = time.monotonic()
            try:
                sock = open_association(hub, CT_IMAGE_STORAGE)
            except (OSError, AssertionError):
                return
            with sock:
                try:
                    # The PDU header at once, its body a byte a second.
                    sock.sendall(self.prefix)
                    for byte in self.payload:
                        if closed_by_peer(sock, self.interval) or self.stop.is_set():
                            break
                        sock.sendall(bytes((byte,)))
                        self.sent += 1
                except OSError:
                    pass
                if not self.stop.is_set():
                    self.closed_after = time.monotonic() - self.started_at

    with trickling(MAX_ASSOCIATIONS - 3, lambda: AssociatedTrickler(0, command[:6], command[6:])) as threads:
        wait_until(lambda: all(t.sent >= 2 for t in threads), timeout=20, what="trickling started")
        under_attack = median_latency(lambda: echo_ok(hub))
        assert_within("C-ECHO (echoscu) during P-DATA-TF slow loris", baseline, under_attack)
        # The DIMSE timeout (+ the length at 64 KiB/s) for the whole body, not per byte.
        assert_all_closed(threads, 2 * DIMSE_TIMEOUT + 1 + SLACK, "trickled P-DATA-TF")


def test_stalled_c_store_releases_its_spool_file(hub: DicomhubServer) -> None:
    spool = hub.data_dir / "tmp"

    def spool_files() -> list[Path]:
        return sorted(spool.glob("dicomhub-spool-*")) if spool.is_dir() else []

    assert not spool_files()
    sock = open_association(hub, CT_IMAGE_STORAGE)
    with sock:
        sock.sendall(p_data([(1, 0x03, store_rq_command(datagen.uid()))]))
        # 17 MiB of the data set (more than the 16 MiB kept in memory), not the last fragment.
        fragment = bytes(16000)
        for _ in range(17 * 1024 * 1024 // len(fragment)):
            sock.sendall(p_data([(1, 0x00, fragment)]))
        wait_until(spool_files, timeout=20, what="a spool file for the data set")
        t0 = time.monotonic()
        # The client stalls: the server aborts after the DIMSE timeout and removes the spool.
        wait_until(lambda: closed_by_peer(sock, 0.5), timeout=DIMSE_TIMEOUT + SLACK, what="A-ABORT")
        closed_after = time.monotonic() - t0
    wait_until(lambda: not spool_files(), timeout=10, what="the spool file removed")
    figure("stalled C-STORE (17 MiB spooled): aborted after (s)", f"{closed_after:.1f}")
    echo_ok(hub)


def test_idle_associations_are_closed_after_the_network_timeout(hub: DicomhubServer) -> None:
    socks = [open_association(hub) for _ in range(MAX_ASSOCIATIONS - 3)]
    t0 = time.monotonic()
    try:
        wait_until(
            lambda: all(closed_by_peer(s) for s in socks) or None,
            timeout=NETWORK_TIMEOUT + SLACK,
            what="idle associations closed",
        )
    finally:
        for s in socks:
            s.close()
    took = time.monotonic() - t0
    figure("idle associations closed after (s)", f"{took:.1f} (network_timeout {NETWORK_TIMEOUT:g})")
    assert took >= NETWORK_TIMEOUT - 1.0, f"closed after {took:.1f} s, before the network timeout"
    echo_ok(hub)


def test_association_flood_beyond_the_limit_is_rejected_not_queued(
    hub: DicomhubServer, tmp_path: Path
) -> None:
    # Wait for earlier tests' connections to be gone (each counts against the limit).
    wait_until(lambda: echo(hub)[0] == 0, timeout=30, what="server idle")
    held = [open_association(hub) for _ in range(MAX_ASSOCIATIONS)]
    try:
        flood = 3 * MAX_ASSOCIATIONS
        rejections: list[tuple[bytes, float]] = []
        lock = threading.Lock()

        def knock() -> None:
            t0 = time.monotonic()
            with socket.create_connection((HOST, hub.dimse_port), timeout=10) as s:
                s.sendall(associate_rq(hub.aet))
                pdu_type, body = read_pdu(s)
                with lock:
                    rejections.append((bytes((pdu_type,)) + body, time.monotonic() - t0))

        knockers = [threading.Thread(target=knock) for _ in range(flood)]
        for k in knockers:
            k.start()
        for k in knockers:
            k.join(30)
        assert len(rejections) == flood
        for pdu, _ in rejections:
            # A-ASSOCIATE-RJ: result 2 (rejected-transient), source 3 (service provider,
            # presentation related), reason 2 (local-limit-exceeded), PS3.8 9.3.4.
            assert pdu[0] == 0x03, f"expected A-ASSOCIATE-RJ, got PDU type 0x{pdu[0]:02X}"
            assert tuple(pdu[2:5]) == (2, 3, 2), tuple(pdu[2:5])
        worst = max(t for _, t in rejections)
        what = f"association flood: {flood} requests over a limit of {MAX_ASSOCIATIONS}"
        figure(f"{what}, slowest rejection (s)", f"{worst:.2f}")
        assert worst < ACSE_TIMEOUT + SLACK
    finally:
        for s in held:
            s.close()
    # Once the held associations are gone, new ones are accepted again.
    wait_until(lambda: echo(hub)[0] == 0, timeout=30, what="associations accepted again")
    src = datagen.write_ct_series(tmp_path / "after", 2, rows=16, cols=16)
    store_ok(hub, tmp_path / "after", expect=len(src))


# --------------------------------------------------------------------------- HTTP


def test_http_slow_loris_headers_are_closed_and_qido_is_served(hub: DicomhubServer) -> None:
    baseline = median_latency(lambda: qido_ok(hub))
    rss_before = rss_kib(hub)
    head = b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    trickle = b"".join(b"X-Slow-%d: loris\r\n" % i for i in range(100))
    with (
        trickling(50, lambda: Trickler(hub.http_port, head, trickle)) as threads,
        trickling(50, lambda: Trickler(hub.http_port, b"", b"")) as silent,
    ):
        wait_until(lambda: all(t.sent >= 1 for t in threads), timeout=20, what="trickling started")
        under_attack = median_latency(lambda: qido_ok(hub))
        assert_within("QIDO-RS during HTTP header slow loris (100 connections)", baseline, under_attack)
        assert_all_closed(threads, HTTP_HEADER_TIMEOUT + SLACK, "trickled HTTP request head")
        wait_until(
            lambda: all(t.closed_after is not None for t in silent),
            timeout=HTTP_HEADER_TIMEOUT + SLACK,
            what="silent HTTP connections closed",
        )
    figure("RSS growth, HTTP header slow loris (KiB)", rss_kib(hub) - rss_before)
    qido_ok(hub)


def _stow_head(port: int, body_length: int, boundary: str) -> bytes:
    return (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f'Content-Type: multipart/related; type="application/dicom"; boundary={boundary}\r\n'
        f"Content-Length: {body_length}\r\nAccept: application/dicom+json\r\n\r\n"
    ).encode()


def test_http_slow_stow_bodies_are_closed_and_others_are_served(hub: DicomhubServer, tmp_path: Path) -> None:
    ds = datagen.write_instance(tmp_path / "one.dcm", rows=256, cols=256)
    instance = Path(ds.filename).read_bytes()
    boundary = "slowlorisboundary"
    part = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + instance
    body = part + f"\r\n--{boundary}--\r\n".encode()
    assert len(instance) > 100_000
    qido_baseline = median_latency(lambda: qido_ok(hub))
    store_baseline = median_latency(lambda: store_ok(hub, Path(ds.filename)), n=3)
    rss_before = rss_kib(hub)

    def byte_a_second() -> Trickler:
        return Trickler(hub.http_port, _stow_head(hub.http_port, len(body), boundary), body)

    def stall_after_100k() -> Trickler:
        # 100 kB arrive at once (the upload gets its ingest thread), then a byte a second.
        return Trickler(
            hub.http_port, _stow_head(hub.http_port, len(body), boundary) + body[:100_000], body[100_000:]
        )

    with trickling(30, byte_a_second) as slow, trickling(30, stall_after_100k) as stalled:
        wait_until(lambda: all(t.sent >= 1 for t in slow + stalled), timeout=20, what="trickling started")
        assert_within(
            "QIDO-RS during STOW-RS slow loris (60 uploads)",
            qido_baseline,
            median_latency(lambda: qido_ok(hub)),
        )
        assert_within(
            "C-STORE (storescu) during STOW-RS slow loris",
            store_baseline,
            median_latency(lambda: store_ok(hub, Path(ds.filename)), n=3),
        )
        # Judged every body_timeout: closed at the end of the first window, or the second.
        assert_all_closed(slow + stalled, 2 * HTTP_BODY_TIMEOUT + SLACK, "trickled STOW-RS body")
    figure("RSS growth, STOW-RS slow loris (KiB)", rss_kib(hub) - rss_before)
    # Nothing of the cut uploads stays behind: no spool, no new blob.
    tmp = hub.data_dir / "tmp"
    wait_until(lambda: not tmp.is_dir() or not list(tmp.glob("*")), timeout=10, what="spool empty")
    assert_storage_consistent(hub)
    # And a normal upload still works.
    r = httpx.post(
        f"{hub.base_url}/dicomweb/studies",
        content=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=30,
    )
    assert r.status_code == 200, r.text
