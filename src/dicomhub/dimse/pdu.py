"""PDU framing (PS3.8 9.3) and P-DATA-TF PDVs with their message control header (E.2).

The hot path of both sides of an association: a message (an encoded command
set and, optionally, a data set) becomes a list of buffers, one 12-byte
PDU + PDV header per fragment followed by a memoryview slice of the data set
(:func:`message_buffers`), which :mod:`dicomhub.dimse.transport` writes with
one ``sendmsg``; nothing is copied.  The A-ASSOCIATE PDUs themselves are
encoded and decoded with pynetdicom's PDU classes (:mod:`dicomhub.dimse.acse`),
since they are sent once per association.

References
----------
PS3.8 Sections 9.3 (PDU structure), 9.3.5 (P-DATA-TF), E.2 (message control
header); Table 9-26 (A-ABORT reasons).
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "PDU_HEADER",
    "PDV_HEADER",
    "ProtocolError",
    "abort_pdu",
    "message_buffers",
]

# PDU types (PS3.8 Table 9-1).
A_ASSOCIATE_RQ: Final = 0x01
A_ASSOCIATE_AC: Final = 0x02
A_ASSOCIATE_RJ: Final = 0x03
P_DATA_TF: Final = 0x04
A_RELEASE_RQ: Final = 0x05
A_RELEASE_RP: Final = 0x06
A_ABORT: Final = 0x07

# A-ABORT provider reasons (PS3.8 Table 9-26, source 2 = service provider).
REASON_NOT_SPECIFIED: Final = 0x00
REASON_UNRECOGNISED_PDU: Final = 0x01
REASON_UNEXPECTED_PDU: Final = 0x02
REASON_INVALID_PARAMETER: Final = 0x06


PDU_HEADER: Final = struct.Struct(">BBI")
PDV_HEADER: Final = struct.Struct(">IBB")
# PDU header + the single PDV header that follows it.
P_DATA_HEADERS: Final = struct.Struct(">BBIIBB")
UINT4_BE: Final = struct.Struct(">I")
UINT2_BE: Final = struct.Struct(">H")

RELEASE_RQ_PDU: Final = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
RELEASE_RP_PDU: Final = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"

# With a peer maximum of 0 ("unlimited") still cut data sets into PDUs of
# this size, so that no single PDV needs a huge receive buffer.
UNLIMITED_FRAGMENT: Final = 4 << 20


class ProtocolError(Exception):
    """The peer broke the protocol; the association is aborted."""

    def __init__(self, message: str, reason: int = REASON_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


def abort_pdu(reason: int, source: int = 2) -> bytes:
    """An A-ABORT PDU (PS3.8 9.3.8); source 2 = service provider, 0 = service user."""
    return PDU_HEADER.pack(A_ABORT, 0, 4) + bytes((0, 0, source, reason))


def message_buffers(
    context_id: int,
    command: bytes,
    dataset: bytes | memoryview | None,
    peer_max_pdu: int,
) -> list[bytes | memoryview]:
    """Frame a command (and data set) as P-DATA-TF PDUs, without copying the data set.

    One PDV per PDU; the peer's *Maximum Length Received* bounds the PDU's
    variable field, i.e. the 6-byte PDV header plus the fragment.

    Returns
    -------
    list of bytes or memoryview
        Alternating 12-byte headers and fragments, for :func:`send_buffers`.
    """
    limit = peer_max_pdu - 6 if peer_max_pdu > 6 else UNLIMITED_FRAGMENT
    pack = P_DATA_HEADERS.pack
    out: list[bytes | memoryview] = []
    size = len(command)
    if size <= limit:
        out.append(pack(P_DATA_TF, 0, size + 6, size + 2, context_id, 0x03) + command)
    else:
        for start in range(0, size, limit):
            fragment = command[start : start + limit]
            control = 0x03 if start + limit >= size else 0x01
            out.append(pack(P_DATA_TF, 0, len(fragment) + 6, len(fragment) + 2, context_id, control))
            out.append(fragment)
    if dataset is not None:
        view = memoryview(dataset)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        size = len(view)
        if size == 0:
            out.append(pack(P_DATA_TF, 0, 6, 2, context_id, 0x02))
        for start in range(0, size, limit):
            piece = view[start : start + limit]
            control = 0x02 if start + limit >= size else 0x00
            n = len(piece)
            out.append(pack(P_DATA_TF, 0, n + 6, n + 2, context_id, control))
            out.append(piece)
    return out
