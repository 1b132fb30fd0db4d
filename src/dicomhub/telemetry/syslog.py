"""Audit messages to a syslog collector: RFC 5424 messages over TLS (RFC 5425), TCP or UDP (RFC 5426).

IHE ATNA (ITI-20 Record Audit Event) sends each DICOM audit message (PS3.15
A.5) as the MSG of an RFC 5424 syslog message, over TLS with RFC 5425
octet-counting framing (``LEN SP MESSAGE``), or over UDP with one message per
datagram. Python's ``logging.handlers.SysLogHandler`` writes RFC 3164 lines
without octet counting and blocks the caller; the syslog libraries on PyPI do
not frame RFC 5425 over TLS or are not maintained, so this is written on the
standard library: ``socket`` and ``ssl``.

Sending must never hold up the request being audited: :meth:`SyslogSender.submit`
puts the message in a bounded queue and returns; one thread per process
connects, frames and writes, and reconnects with exponential backoff when the
collector goes away, keeping the message in hand. When the queue is full the
newest message is dropped and counted (``dicomhub_audit_syslog_messages_total
{result="dropped-full"}``): the audit log in the index still holds every
event, and ``GET /audit/export`` can replay them.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from dicomhub.errors import ConfigurationError
from dicomhub.telemetry.metrics import metrics

__all__ = [
    "MSGID_AUDIT",
    "SyslogSender",
    "SyslogTarget",
    "format_rfc5424",
    "frame_octet_counting",
    "parse_target",
    "client_context",
]

LOGGER = logging.getLogger("dicomhub.audit.syslog")

#: IHE ITI-20: the MSGID of a DICOM audit message (the RFC 3881 schema it derives from).
MSGID_AUDIT = "IHE+RFC-3881"
# RFC 5424 facility 10: security/authorization messages (IHE's choice for audit).
_FACILITY_AUTHPRIV = 10
# The largest UDP payload over IPv4 (RFC 5426 lets a sender send up to it).
_MAX_DATAGRAM = 65507
_DEFAULT_PORTS = {"tls": 6514, "tcp": 601, "udp": 514}
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class SyslogTarget:
    """Where audit messages go: ``transport`` is ``tls``, ``tcp`` or ``udp``."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.transport}://{self.host}:{self.port}"


def parse_target(url: str) -> SyslogTarget:
    """Parse ``tls://host[:6514]``, ``tcp://host[:601]`` or ``udp://host[:514]``.

    Parameters
    ----------
    url : str
        The ``audit_syslog`` setting.

    Returns
    -------
    SyslogTarget

    Raises
    ------
    ConfigurationError
        For another scheme, no host, or a bad port.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unbalanced "[" (urlsplit reads it as an IPv6 host)
        raise ConfigurationError(f"audit_syslog {url!r}: not a URL ({exc})") from exc
    transport = parts.scheme.lower()
    if transport not in _DEFAULT_PORTS or not parts.hostname:
        raise ConfigurationError(f"audit_syslog {url!r}: tls://HOST[:PORT], tcp://HOST[:PORT] or udp://HOST[:PORT]")
    try:
        port = parts.port or _DEFAULT_PORTS[transport]
    except ValueError as exc:
        raise ConfigurationError(f"audit_syslog {url!r}: invalid port") from exc
    return SyslogTarget(transport, parts.hostname, port)


def _header_field(value: str, limit: int) -> str:
    # RFC 5424 6.2: PRINTUSASCII (33-126), a length limit, "-" for none.
    text = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return text or "-"


def format_rfc5424(
    message: str,
    *,
    severity: int,
    app_name: str,
    msgid: str,
    hostname: str,
    procid: str | int | None = None,
    facility: int = _FACILITY_AUTHPRIV,
    timestamp: dt.datetime | None = None,
) -> bytes:
    """One RFC 5424 syslog message: header, no structured data, ``message`` as UTF-8 MSG.

    Parameters
    ----------
    message : str
        The MSG part (the audit message XML).
    severity : int
        0-7 (5 notice for an audit event, 4 warning for a failed operation).
    app_name, msgid, hostname : str
        The header fields (non-printable characters removed, length limited).
    procid : str or int, optional
        The process id (default: this process).
    facility : int
        Default 10 (security/authorization).
    timestamp : datetime, optional
        Default now; written in UTC with microseconds.

    Returns
    -------
    bytes
        ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM MSG``.
    """
    when = (timestamp or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    header = " ".join(
        (
            f"<{facility * 8 + severity}>1",
            stamp,
            _header_field(hostname, 255),
            _header_field(app_name, 48),
            _header_field(str(os.getpid() if procid is None else procid), 128),
            _header_field(msgid, 32),
            "-",  # no STRUCTURED-DATA
        )
    )
    # RFC 5424 6.4: a UTF-8 MSG starts with the byte order mark.
    return header.encode("ascii") + b" " + _BOM + message.encode("utf-8")


def frame_octet_counting(message: bytes) -> bytes:
    """RFC 5425 4.3 (and RFC 6587 3.4.1) framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


def client_context(ca_file: str = "", cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """The TLS client context for the collector: verify it (``ca_file`` or the system
    CAs, and its host name), TLS 1.2 or later, and present ``cert_file`` when given
    (ATNA nodes authenticate both ways).

    Parameters
    ----------
    ca_file : str
        PEM CA bundle the collector's certificate must chain to ("" = system CAs).
    cert_file, key_file : str
        This node's certificate and key (optional).

    Returns
    -------
    ssl.SSLContext
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(cert_file, key_file or None)
    return context


class SyslogSender:
    """A bounded queue of syslog messages and the thread that sends them.

    Parameters
    ----------
    target : SyslogTarget
        The collector.
    app_name : str
        APP-NAME of the messages (the archive's AE title, say).
    context : ssl.SSLContext, optional
        For ``tls``; default :func:`client_context` with the system CAs.
    capacity : int
        Messages held while the collector is slow or away; more are dropped.
    hostname : str, optional
        HOSTNAME of the messages (default this host's name).
    timeout : float
        Seconds for a connect or a write before the connection counts as lost.
    """

    def __init__(
        self,
        target: SyslogTarget,
        app_name: str,
        context: ssl.SSLContext | None = None,
        capacity: int = 1000,
        hostname: str | None = None,
        timeout: float = 10.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.target = target
        self.app_name = app_name
        self.hostname = hostname or socket.gethostname()
        self.timeout = timeout
        self.max_backoff = max_backoff
        self._context = context if context is not None or target.transport != "tls" else client_context()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=capacity)
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._started = False
        self._start_lock = threading.Lock()

    # -- the caller's side: never blocks

    def submit(self, message: str, severity: int = 5, msgid: str = MSGID_AUDIT) -> bool:
        """Queue ``message`` (formatted now, sent later); False when it was dropped.

        Parameters
        ----------
        message : str
            The MSG (one audit message XML document).
        severity : int
            The syslog severity (5 notice, 4 warning).
        msgid : str
            The MSGID (default ``IHE+RFC-3881``).

        Returns
        -------
        bool
            True when queued, False when the queue was full or the message too
            large for a datagram (counted, logged at most as a warning).
        """
        self._ensure_started()
        data = format_rfc5424(
            message, severity=severity, app_name=self.app_name, msgid=msgid, hostname=self.hostname
        )
        counters = metrics()
        if self.target.transport == "udp" and len(data) > _MAX_DATAGRAM:
            counters.syslog_messages.labels(result="dropped-too-large").inc()
            LOGGER.warning("audit message of %d bytes does not fit a UDP datagram: dropped", len(data))
            return False
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            counters.syslog_messages.labels(result="dropped-full").inc()
            return False
        counters.queue_depth.labels(queue="audit-syslog").inc()
        return True

    def pending(self) -> int:
        """Messages queued and not yet sent."""
        return self._queue.qsize()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (for up to ``timeout`` seconds in all), then stop and disconnect.

        Parameters
        ----------
        timeout : float
            The most this waits for the collector (a shutdown must not hang on it).
        """
        if self._started:
            deadline = time.monotonic() + timeout
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                pass
            self._thread.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        self._disconnect()

    # -- the sender thread

    def _ensure_started(self) -> None:
        if self._started:
            return
        with self._start_lock:
            if not self._started:
                self._thread.start()
                self._started = True

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            data = self._queue.get()
            if data is None:
                return
            while not self._stop.is_set():
                try:
                    self._send(data)
                except (OSError, ssl.SSLError) as exc:
                    # Keep the message, wait, reconnect: the collector restarts, a network blips.
                    metrics().syslog_connect_failures.inc()
                    LOGGER.warning("audit syslog %s: %s; retrying in %.1f s", self.target, exc, backoff)
                    self._disconnect()
                    if self._stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                backoff = 0.5
                counters = metrics()
                counters.syslog_messages.labels(result="sent").inc()
                counters.queue_depth.labels(queue="audit-syslog").dec()
                break

    def _connect(self) -> socket.socket:
        if self.target.transport == "udp":
            family, kind, proto, _, address = socket.getaddrinfo(
                self.target.host, self.target.port, type=socket.SOCK_DGRAM
            )[0]
            udp = socket.socket(family, kind, proto)
            udp.connect(address)
            return udp
        sock = socket.create_connection((self.target.host, self.target.port), timeout=self.timeout)
        if self.target.transport == "tls":
            assert self._context is not None  # set for tls in __init__
            try:
                return self._context.wrap_socket(sock, server_hostname=self.target.host)
            except BaseException:
                sock.close()
                raise
        return sock

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            self._sock = self._connect()
        if self.target.transport == "udp":
            self._sock.send(data)  # one message per datagram (RFC 5426 3.1)
        else:
            self._sock.sendall(frame_octet_counting(data))

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
