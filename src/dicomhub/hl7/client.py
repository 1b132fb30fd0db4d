"""The MLLP sender: one HL7 v2 message out, its ACK read back.

Used by the delivery of MPPS status messages (:meth:`MppsService.run_delivery`):
a message counts as delivered only when the receiver answers ``MSA|AA`` or
``MSA|CA``; anything else (a refusal, no answer within the timeout, a closed
connection) raises, and the message is tried again later.
"""

from __future__ import annotations

import socket

from dicomhub.hl7.mllp import END_BLOCK, MAX_MESSAGE_BYTES, START_BLOCK

__all__ = ["Hl7NotAccepted", "send_message"]


class Hl7NotAccepted(Exception):
    """The receiver answered, but not with an accept (MSA-1 AA or CA)."""


def _address(destination: str) -> tuple[str, int]:
    host, _, port = destination.rpartition(":")
    return host.strip("[]"), int(port)


def send_message(destination: str, message: str, timeout: float = 10.0) -> str:
    """Send ``message`` (segments separated by CR) to ``host:port`` over MLLP and
    return the ACK's MSA-1.

    Raises
    ------
    OSError
        The connection failed or timed out, or closed before a whole ACK.
    Hl7NotAccepted
        The ACK was not AA or CA (or carried no MSA).
    """
    data = START_BLOCK + message.encode("utf-8") + END_BLOCK
    with socket.create_connection(_address(destination), timeout=timeout) as sock:
        sock.sendall(data)
        reply = b""
        while END_BLOCK not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the receiver closed the connection before its ACK")
            reply += chunk
            if len(reply) > MAX_MESSAGE_BYTES:
                raise Hl7NotAccepted("the ACK is larger than any ACK should be")
    text = reply.split(END_BLOCK, 1)[0].lstrip(START_BLOCK).decode("utf-8", "replace")
    for segment in text.replace("\n", "\r").split("\r"):
        if segment.startswith("MSA"):
            fields = segment.split(segment[3:4] or "|")
            code = fields[1] if len(fields) > 1 else ""
            if code in ("AA", "CA"):
                return code
            raise Hl7NotAccepted(f"the receiver answered {segment[:200]!r}")
    raise Hl7NotAccepted("the ACK has no MSA segment")
