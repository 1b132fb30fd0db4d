"""The MLLP listener: HL7 v2 messages framed ``0x0B message 0x1C 0x0D`` over TCP.

One thread per connection (the order service is blocking, like the rest of
the services), at most ``max_connections`` at once. Each frame is answered
with an ACK before the next is read, so a sender that waits for the ACK
(as MLLP requires) never has more than one message in flight.

Limits, so that no client can hold the listener: a frame larger than
``max_message_bytes`` is answered with an AR and the connection closed (its
end cannot be found safely); a connection silent for ``idle_timeout``
seconds, in a frame or between frames, is closed; bytes outside a frame
(not MLLP at all) get an AR and the connection is closed.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable

from dicomhub.hl7.messages import SEGMENT_SEQUENCE_ERROR, Hl7Reject, nak

__all__ = ["END_BLOCK", "MAX_MESSAGE_BYTES", "START_BLOCK", "MllpListener"]

LOGGER = logging.getLogger("dicomhub.hl7")

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
#: The largest message accepted: an order or ADT message is a few kilobytes.
MAX_MESSAGE_BYTES = 1024 * 1024


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    listener: MllpListener


class _Connection(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        listener = self.server.listener
        if not listener._slots.acquire(blocking=False):
            LOGGER.warning(
                "HL7: refusing %s: %d connections open", self.client_address[0], listener.max_connections
            )
            return
        try:
            self._serve(listener)
        except OSError as exc:
            LOGGER.info("HL7 connection from %s ended: %s", self.client_address[0], exc)
        finally:
            listener._slots.release()

    def _serve(self, listener: MllpListener) -> None:
        sock: socket.socket = self.request
        sock.settimeout(listener.idle_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        address = str(self.client_address[0])
        buffer = b""
        while True:
            start = buffer.find(START_BLOCK)
            outside = buffer if start < 0 else buffer[:start]
            if outside.strip(b"\r\n\t "):
                self._reject(sock, buffer, "not MLLP: bytes outside a 0x0B ... 0x1C 0x0D frame")
                return
            end = buffer.find(END_BLOCK, max(start, 0))
            if start >= 0 and end > start:
                frame, buffer = buffer[start + 1 : end], buffer[end + len(END_BLOCK) :]
                if len(frame) > listener.max_message_bytes:
                    self._reject(
                        sock, frame, f"the message is larger than {listener.max_message_bytes} bytes"
                    )
                    return
                sock.sendall(START_BLOCK + listener.respond(frame, address) + END_BLOCK)
                continue
            if len(buffer) > listener.max_message_bytes + 3:
                self._reject(
                    sock,
                    buffer[max(start, 0) + 1 :],
                    f"the message is larger than {listener.max_message_bytes} bytes",
                )
                return
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if buffer.strip():
                    LOGGER.warning("HL7: %s sent part of a frame and went silent: closed", address)
                return
            if not chunk:
                return
            buffer += chunk

    @staticmethod
    def _reject(sock: socket.socket, partial: bytes, text: str) -> None:
        LOGGER.warning("HL7: %s", text)
        sock.sendall(
            START_BLOCK + nak(partial[:4096], Hl7Reject("AR", SEGMENT_SEQUENCE_ERROR, text)) + END_BLOCK
        )


class MllpListener:
    """An MLLP server on ``(host, port)``; ``respond(frame, peer_address) -> ack`` answers each message."""

    def __init__(
        self,
        host: str,
        port: int,
        respond: Callable[[bytes, str], bytes],
        *,
        idle_timeout: float = 120.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_connections: int = 64,
    ) -> None:
        self.respond = respond
        self.idle_timeout = idle_timeout
        self.max_message_bytes = max_message_bytes
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._server = _Server((host, port), _Connection)
        self._server.listener = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MllpListener:
        self._thread = threading.Thread(target=self._server.serve_forever, name="hl7-mllp", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
