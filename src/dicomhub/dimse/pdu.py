"""Hand-rolled DIMSE plumbing shared by the fast path acceptor and the SCU.

PDU framing (PS3.8 9.3), P-DATA-TF PDVs and their message control header
(PS3.8 E.2), and the group 0000 command set (always implicit VR little
endian, PS3.7 6.3.1 / Annex E).  Only what :mod:`dicomhub.dimse.fastpath`
and :mod:`dicomhub.dimse.scu` need; association negotiation itself is left to
pynetdicom's PDU classes.

Sending is zero-copy for data sets: a message is a list of buffers (one
12-byte PDU + PDV header per fragment followed by a memoryview slice of the
data set) written with :meth:`socket.socket.sendmsg`.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "Command",
    "PeerGone",
    "ProtocolError",
    "encode_command",
    "encode_response",
    "encode_store_rq",
    "message_buffers",
    "parse_command",
    "recv_exact",
    "send_buffers",
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

# DIMSE command fields (PS3.7 Annex E).
C_STORE_RQ: Final = 0x0001
C_STORE_RSP: Final = 0x8001
C_GET_RQ: Final = 0x0010
C_GET_RSP: Final = 0x8010
C_FIND_RQ: Final = 0x0020
C_FIND_RSP: Final = 0x8020
C_MOVE_RQ: Final = 0x0021
C_MOVE_RSP: Final = 0x8021
C_ECHO_RQ: Final = 0x0030
C_ECHO_RSP: Final = 0x8030
C_CANCEL_RQ: Final = 0x0FFF
NO_DATA_SET: Final = 0x0101
DATA_SET_PRESENT: Final = 0x0001

# Command set element numbers (group 0000).
E_GROUP_LENGTH: Final = 0x0000
E_AFFECTED_SOP_CLASS: Final = 0x0002
E_COMMAND_FIELD: Final = 0x0100
E_MESSAGE_ID: Final = 0x0110
E_MESSAGE_ID_RSP: Final = 0x0120
E_MOVE_DESTINATION: Final = 0x0600
E_PRIORITY: Final = 0x0700
E_DATA_SET_TYPE: Final = 0x0800
E_STATUS: Final = 0x0900
E_ERROR_COMMENT: Final = 0x0902
E_AFFECTED_SOP_INSTANCE: Final = 0x1000
E_REMAINING: Final = 0x1020
E_COMPLETED: Final = 0x1021
E_FAILED: Final = 0x1022
E_WARNING: Final = 0x1023
E_MOVE_ORIGINATOR_AE: Final = 0x1030
E_MOVE_ORIGINATOR_ID: Final = 0x1031

PDU_HEADER: Final = struct.Struct(">BBI")
PDV_HEADER: Final = struct.Struct(">IBB")
# PDU header + the single PDV header that follows it.
P_DATA_HEADERS: Final = struct.Struct(">BBIIBB")
UINT4_BE: Final = struct.Struct(">I")
UINT2_BE: Final = struct.Struct(">H")
ELEMENT_HEADER: Final = struct.Struct("<HHI")
UINT2_LE: Final = struct.Struct("<H")
US_ELEMENT: Final = struct.Struct("<HHIH")
UL_ELEMENT: Final = struct.Struct("<HHII")

RELEASE_RQ_PDU: Final = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
RELEASE_RP_PDU: Final = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"

# With a peer maximum of 0 ("unlimited") still cut data sets into PDUs of
# this size, so that no single PDV needs a huge receive buffer.
UNLIMITED_FRAGMENT: Final = 4 << 20
# sendmsg() takes at most IOV_MAX (1024 on Linux) buffers per call.
_IOV_BATCH: Final = 512


class ProtocolError(Exception):
    """The peer broke the protocol; the association is aborted."""

    def __init__(self, message: str, reason: int = REASON_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


class PeerGone(Exception):
    """The transport closed or failed; nothing more can be sent."""


# --------------------------------------------------------------------------
# Command set codec
# --------------------------------------------------------------------------


@dataclass(slots=True)
class Command:
    """The fields of a command set (request or response) this package acts on."""

    command_field: int
    message_id: int | None
    sop_class_uid: str | None
    sop_instance_uid: str | None
    has_data_set: bool
    move_originator_ae_title: str | None
    move_originator_message_id: int | None
    message_id_responded_to: int | None = None
    status: int | None = None
    error_comment: str | None = None
    move_destination: str | None = None


def parse_command(data: bytes) -> Command:
    """Parse a command set.

    Raises
    ------
    ProtocolError
        If it is not a well-formed group 0000 element list or lacks the
        Command Field.
    """
    values: dict[int, bytes] = {}
    unpack = ELEMENT_HEADER.unpack_from
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 8:
            raise ProtocolError("truncated command element")
        group, element, length = unpack(data, pos)
        pos += 8
        if group != 0 or pos + length > end:
            raise ProtocolError(f"invalid command element ({group:04X},{element:04X})")
        values[element] = data[pos : pos + length]
        pos += length

    def us(element: int) -> int | None:
        raw = values.get(element)
        if raw is None:
            return None
        if len(raw) != 2:
            raise ProtocolError(f"(0000,{element:04X}) is not a US value")
        return int(UINT2_LE.unpack(raw)[0])

    def text(element: int) -> str | None:
        raw = values.get(element)
        if raw is None:
            return None
        # UI is padded with NUL, AE/LO with spaces; all ASCII in practice.
        return raw.decode("ascii", "replace").rstrip("\x00 ").lstrip(" ") or None

    command_field = us(E_COMMAND_FIELD)
    if command_field is None:
        raise ProtocolError("command set without Command Field")
    data_set_type = us(E_DATA_SET_TYPE)
    command = Command(
        command_field=command_field,
        message_id=us(E_MESSAGE_ID),
        sop_class_uid=text(E_AFFECTED_SOP_CLASS),
        sop_instance_uid=text(E_AFFECTED_SOP_INSTANCE),
        # PS3.7 E.1: 0x0101 means "no data set", any other value means one follows.
        has_data_set=data_set_type is not None and data_set_type != NO_DATA_SET,
        move_originator_ae_title=text(E_MOVE_ORIGINATOR_AE),
        move_originator_message_id=us(E_MOVE_ORIGINATOR_ID),
    )
    if command_field & 0x8000 or command_field == C_CANCEL_RQ:
        command.message_id_responded_to = us(E_MESSAGE_ID_RSP)
        command.status = us(E_STATUS)
        command.error_comment = text(E_ERROR_COMMENT)
    elif command_field == C_MOVE_RQ:
        command.move_destination = text(E_MOVE_DESTINATION)
    return command


def text_element(element: int, value: bytes, pad: bytes) -> bytes:
    """Encode one even-length text element (UI padded with NUL, others with space)."""
    if len(value) & 1:
        value += pad
    return ELEMENT_HEADER.pack(0, element, len(value)) + value


def encode_command(parts: Iterable[bytes]) -> bytes:
    """Prefix already encoded elements (ascending tag order) with the group length."""
    rest = b"".join(parts)
    return UL_ELEMENT.pack(0, E_GROUP_LENGTH, 4, len(rest)) + rest


def _uid(element: int, uid: str) -> bytes:
    return text_element(element, uid.encode("ascii", "replace"), b"\x00")


def encode_response(
    command_field: int,
    message_id: int,
    sop_class_uid: str | None,
    sop_instance_uid: str | None,
    status: int,
    error_comment: str | None = None,
    *,
    has_data_set: bool = False,
    suboperations: tuple[int | None, int, int, int] | None = None,
) -> bytes:
    """Encode a response command set (elements in ascending tag order).

    Parameters
    ----------
    suboperations : tuple, optional
        *Number of Remaining/Completed/Failed/Warning Sub-operations*
        (C-GET/C-MOVE); a remaining count of ``None`` is left out.
    """
    parts = []
    if sop_class_uid:
        parts.append(_uid(E_AFFECTED_SOP_CLASS, sop_class_uid))
    parts += [
        US_ELEMENT.pack(0, E_COMMAND_FIELD, 2, command_field),
        US_ELEMENT.pack(0, E_MESSAGE_ID_RSP, 2, message_id),
        US_ELEMENT.pack(0, E_DATA_SET_TYPE, 2, DATA_SET_PRESENT if has_data_set else NO_DATA_SET),
        US_ELEMENT.pack(0, E_STATUS, 2, status),
    ]
    if error_comment and status != 0x0000:
        comment = error_comment[:64].encode("ascii", "replace")
        parts.append(text_element(E_ERROR_COMMENT, comment, b" "))
    if sop_instance_uid:
        parts.append(_uid(E_AFFECTED_SOP_INSTANCE, sop_instance_uid))
    if suboperations is not None:
        remaining, completed, failed, warning = suboperations
        if remaining is not None:
            parts.append(US_ELEMENT.pack(0, E_REMAINING, 2, min(remaining, 0xFFFF)))
        parts += [
            US_ELEMENT.pack(0, E_COMPLETED, 2, min(completed, 0xFFFF)),
            US_ELEMENT.pack(0, E_FAILED, 2, min(failed, 0xFFFF)),
            US_ELEMENT.pack(0, E_WARNING, 2, min(warning, 0xFFFF)),
        ]
    return encode_command(parts)


def encode_store_rq(
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    move_originator_ae_title: str | None = None,
    move_originator_message_id: int | None = None,
    priority: int = 0,
) -> bytes:
    """Encode a C-STORE-RQ command set (a data set follows)."""
    parts = [
        _uid(E_AFFECTED_SOP_CLASS, sop_class_uid),
        US_ELEMENT.pack(0, E_COMMAND_FIELD, 2, C_STORE_RQ),
        US_ELEMENT.pack(0, E_MESSAGE_ID, 2, message_id & 0xFFFF),
        US_ELEMENT.pack(0, E_PRIORITY, 2, priority),
        US_ELEMENT.pack(0, E_DATA_SET_TYPE, 2, 0x0000),
        _uid(E_AFFECTED_SOP_INSTANCE, sop_instance_uid),
    ]
    if move_originator_ae_title:
        ae = move_originator_ae_title.strip()[:16].encode("ascii", "replace")
        parts.append(text_element(E_MOVE_ORIGINATOR_AE, ae, b" "))
    if move_originator_message_id is not None:
        parts.append(US_ELEMENT.pack(0, E_MOVE_ORIGINATOR_ID, 2, move_originator_message_id))
    return encode_command(parts)


# --------------------------------------------------------------------------
# PDU framing and I/O
# --------------------------------------------------------------------------


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


def send_buffers(sock: socket.socket, buffers: Sequence[bytes | memoryview]) -> None:
    """Write every buffer, in order, with as few ``sendmsg`` calls as possible.

    Raises
    ------
    PeerGone
        On a socket error or send timeout.
    """
    pending = list(buffers)
    index, count = 0, len(pending)
    try:
        if count == 1:
            sock.sendall(pending[0])
            return
        while index < count:
            sent = sock.sendmsg(pending[index : index + _IOV_BATCH])
            while sent and index < count:
                length = len(pending[index])
                if sent >= length:
                    sent -= length
                    index += 1
                else:
                    pending[index] = memoryview(pending[index])[sent:]
                    sent = 0
            while index < count and not len(pending[index]):
                index += 1
    except TimeoutError as exc:
        raise PeerGone("timed out sending") from exc
    except OSError as exc:
        raise PeerGone(str(exc)) from exc


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    """Fill `view` from the socket.

    Raises
    ------
    PeerGone
        On EOF or a socket error.
    TimeoutError
        When the socket's timeout expires.
    """
    recv_into = sock.recv_into
    size = len(view)
    pos = 0
    try:
        while pos < size:
            got = recv_into(view[pos:], size - pos)
            if not got:
                raise PeerGone("connection closed by peer")
            pos += got
    except TimeoutError:
        raise
    except OSError as exc:
        raise PeerGone(str(exc)) from exc
