"""Hand-rolled DIMSE plumbing shared by the fast path acceptor and the SCU.

PDU framing (PS3.8 9.3), P-DATA-TF PDVs and their message control header
(PS3.8 E.2), and the group 0000 command set (always implicit VR little
endian, PS3.7 6.3.1 / Annex E).  Only what :mod:`dicomhub.dimse.fastpath`
and :mod:`dicomhub.dimse.requestor` need; association negotiation itself is left to
pynetdicom's PDU classes.

Sending is zero-copy for data sets: a message is a list of buffers (one
12-byte PDU + PDV header per fragment followed by a memoryview slice of the
data set) written with :meth:`socket.socket.sendmsg`.  A data set that lies
in a file (:class:`~dicomhub.dimse.requests.FileRegion`) goes out with
:func:`send_file_message`: each PDU's header, then its fragment straight from
the page cache with ``os.sendfile``; the object is never in memory as a whole.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import ssl
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from dicomhub.dimse.requests import FileRegion

__all__ = [
    "Command",
    "PeerGone",
    "ProtocolError",
    "encode_command",
    "encode_request",
    "encode_response",
    "encode_store_rq",
    "message_buffers",
    "open_region",
    "parse_command",
    "recv_exact",
    "release_region",
    "send_buffers",
    "send_file_message",
]

LOGGER = logging.getLogger("dicomhub.dimse")

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
N_EVENT_REPORT_RQ: Final = 0x0100
N_EVENT_REPORT_RSP: Final = 0x8100
N_GET_RQ: Final = 0x0110
N_GET_RSP: Final = 0x8110
N_SET_RQ: Final = 0x0120
N_SET_RSP: Final = 0x8120
N_ACTION_RQ: Final = 0x0130
N_ACTION_RSP: Final = 0x8130
N_CREATE_RQ: Final = 0x0140
N_CREATE_RSP: Final = 0x8140
N_DELETE_RQ: Final = 0x0150
N_DELETE_RSP: Final = 0x8150
NO_DATA_SET: Final = 0x0101
DATA_SET_PRESENT: Final = 0x0001

# Command set element numbers (group 0000).
E_GROUP_LENGTH: Final = 0x0000
E_AFFECTED_SOP_CLASS: Final = 0x0002
E_REQUESTED_SOP_CLASS: Final = 0x0003
E_COMMAND_FIELD: Final = 0x0100
E_MESSAGE_ID: Final = 0x0110
E_MESSAGE_ID_RSP: Final = 0x0120
E_MOVE_DESTINATION: Final = 0x0600
E_PRIORITY: Final = 0x0700
E_DATA_SET_TYPE: Final = 0x0800
E_STATUS: Final = 0x0900
E_ERROR_COMMENT: Final = 0x0902
E_AFFECTED_SOP_INSTANCE: Final = 0x1000
E_REQUESTED_SOP_INSTANCE: Final = 0x1001
E_EVENT_TYPE_ID: Final = 0x1002
E_ATTRIBUTE_IDENTIFIER_LIST: Final = 0x1005
E_ACTION_TYPE_ID: Final = 0x1008
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
# Holds a PDU header back until its fragment follows (one segment, not two,
# despite TCP_NODELAY).  Linux only; elsewhere 0 (no flag).
_MSG_MORE: Final = getattr(socket, "MSG_MORE", 0)
# os.sendfile() errors that mean "not on this kind of file/socket": fall back
# to pread + send for the rest of the region.
_NO_SENDFILE: Final = frozenset(
    {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOTSOCK}
)


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
    # N-ACTION-RQ: Requested SOP Class/Instance UID and Action Type ID;
    # N-EVENT-REPORT: Event Type ID.
    requested_sop_class_uid: str | None = None
    requested_sop_instance_uid: str | None = None
    action_type_id: int | None = None
    event_type_id: int | None = None
    # C-GET/C-MOVE-RSP: Number of Remaining/Completed/Failed/Warning Sub-operations.
    remaining: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None


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
        if command_field in (C_GET_RSP, C_MOVE_RSP):
            command.remaining = us(E_REMAINING)
            command.completed = us(E_COMPLETED)
            command.failed = us(E_FAILED)
            command.warning = us(E_WARNING)
        elif command_field == N_ACTION_RSP:
            command.action_type_id = us(E_ACTION_TYPE_ID)
    elif command_field == C_MOVE_RQ:
        command.move_destination = text(E_MOVE_DESTINATION)
    elif command_field == N_ACTION_RQ:
        command.requested_sop_class_uid = text(E_REQUESTED_SOP_CLASS)
        command.requested_sop_instance_uid = text(E_REQUESTED_SOP_INSTANCE)
        command.action_type_id = us(E_ACTION_TYPE_ID)
    if command_field in (N_EVENT_REPORT_RQ, N_EVENT_REPORT_RSP):
        command.event_type_id = us(E_EVENT_TYPE_ID)
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


def encode_n_action_rsp(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, status: int, action_type_id: int
) -> bytes:
    """Encode an N-ACTION-RSP command set without a data set (PS3.7 10.3.4)."""
    return encode_command(
        [
            _uid(E_AFFECTED_SOP_CLASS, sop_class_uid),
            US_ELEMENT.pack(0, E_COMMAND_FIELD, 2, N_ACTION_RSP),
            US_ELEMENT.pack(0, E_MESSAGE_ID_RSP, 2, message_id),
            US_ELEMENT.pack(0, E_DATA_SET_TYPE, 2, NO_DATA_SET),
            US_ELEMENT.pack(0, E_STATUS, 2, status),
            _uid(E_AFFECTED_SOP_INSTANCE, sop_instance_uid),
            US_ELEMENT.pack(0, E_ACTION_TYPE_ID, 2, action_type_id),
        ]
    )


def encode_n_event_report_rq(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, event_type_id: int
) -> bytes:
    """Encode an N-EVENT-REPORT-RQ command set; a data set follows (PS3.7 10.3.1)."""
    return encode_command(
        [
            _uid(E_AFFECTED_SOP_CLASS, sop_class_uid),
            US_ELEMENT.pack(0, E_COMMAND_FIELD, 2, N_EVENT_REPORT_RQ),
            US_ELEMENT.pack(0, E_MESSAGE_ID, 2, message_id & 0xFFFF),
            US_ELEMENT.pack(0, E_DATA_SET_TYPE, 2, DATA_SET_PRESENT),
            _uid(E_AFFECTED_SOP_INSTANCE, sop_instance_uid),
            US_ELEMENT.pack(0, E_EVENT_TYPE_ID, 2, event_type_id),
        ]
    )


def encode_request(
    command_field: int,
    message_id: int,
    *,
    affected_sop_class_uid: str | None = None,
    requested_sop_class_uid: str | None = None,
    affected_sop_instance_uid: str | None = None,
    requested_sop_instance_uid: str | None = None,
    has_data_set: bool = False,
    priority: int | None = None,
    move_destination: str | None = None,
    event_type_id: int | None = None,
    action_type_id: int | None = None,
    attribute_identifier_list: Sequence[int] | None = None,
) -> bytes:
    """Encode any request command set of PS3.7 9.3 / 10.3 (elements in ascending tag order).

    C-CANCEL-RQ takes `message_id` as its *Message ID Being Responded To*.
    `attribute_identifier_list` (N-GET-RQ) holds tags as ``0xGGGGEEEE``.
    """
    parts = []
    if affected_sop_class_uid:
        parts.append(_uid(E_AFFECTED_SOP_CLASS, affected_sop_class_uid))
    if requested_sop_class_uid:
        parts.append(_uid(E_REQUESTED_SOP_CLASS, requested_sop_class_uid))
    parts.append(US_ELEMENT.pack(0, E_COMMAND_FIELD, 2, command_field))
    id_element = E_MESSAGE_ID_RSP if command_field == C_CANCEL_RQ else E_MESSAGE_ID
    parts.append(US_ELEMENT.pack(0, id_element, 2, message_id & 0xFFFF))
    if move_destination:
        ae = move_destination.strip()[:16].encode("ascii", "replace")
        parts.append(text_element(E_MOVE_DESTINATION, ae, b" "))
    if priority is not None:
        parts.append(US_ELEMENT.pack(0, E_PRIORITY, 2, priority))
    parts.append(US_ELEMENT.pack(0, E_DATA_SET_TYPE, 2, DATA_SET_PRESENT if has_data_set else NO_DATA_SET))
    if affected_sop_instance_uid:
        parts.append(_uid(E_AFFECTED_SOP_INSTANCE, affected_sop_instance_uid))
    if requested_sop_instance_uid:
        parts.append(_uid(E_REQUESTED_SOP_INSTANCE, requested_sop_instance_uid))
    if event_type_id is not None:
        parts.append(US_ELEMENT.pack(0, E_EVENT_TYPE_ID, 2, event_type_id))
    if attribute_identifier_list:
        # AT values: group then element, each a little endian US (PS3.5 6.2).
        tags = b"".join(struct.pack("<HH", tag >> 16, tag & 0xFFFF) for tag in attribute_identifier_list)
        parts.append(ELEMENT_HEADER.pack(0, E_ATTRIBUTE_IDENTIFIER_LIST, len(tags)) + tags)
    if action_type_id is not None:
        parts.append(US_ELEMENT.pack(0, E_ACTION_TYPE_ID, 2, action_type_id))
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
        if isinstance(sock, ssl.SSLSocket):
            # No sendmsg under TLS; joined, so that a PDU is not split into a
            # TLS record per header (encryption copies the bytes anyway).
            sock.sendall(b"".join(pending))
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


def recv_exact(sock: socket.socket, view: memoryview, deadline: float | None = None) -> None:
    """Fill `view` from the socket.

    The socket's timeout bounds each wait for data, so a peer that trickles
    a byte now and then would never time out; ``deadline`` (a
    :func:`time.monotonic` value) bounds the whole read. It is checked after
    each partial read, so a stuck read ends at most one socket timeout late.

    Raises
    ------
    PeerGone
        On EOF or a socket error.
    TimeoutError
        When the socket's timeout expires, or ``deadline`` passed before `view` was full.
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
            if deadline is not None and pos < size and time.monotonic() > deadline:
                raise TimeoutError(f"{pos} of {size} bytes received before the deadline")
    except TimeoutError:
        raise
    except OSError as exc:
        raise PeerGone(str(exc)) from exc


# --------------------------------------------------------------------------
# Data sets that lie in files
# --------------------------------------------------------------------------


def open_region(region: FileRegion) -> int:
    """Open the file of `region` for :func:`send_file_message`; the caller closes the fd.

    Raises
    ------
    OSError
        The file cannot be opened or is shorter than the region (checked
        here so that a bad region fails before anything is sent, leaving
        the association usable).
    """
    if region.offset < 0 or region.length < 0:
        raise OSError(errno.EINVAL, f"invalid region {region.offset}+{region.length}", region.path)
    fd = os.open(region.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if region.offset + region.length > size:
            raise OSError(
                errno.EINVAL,
                f"file of {size} bytes has no region {region.offset}+{region.length}",
                region.path,
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def send_file_message(
    sock: socket.socket,
    context_id: int,
    command: bytes,
    fd: int,
    region: FileRegion,
    peer_max_pdu: int,
) -> None:
    """Send a command and a data set that lies in a file, never holding the data set.

    The command goes out as :func:`message_buffers` frames it; then each
    P-DATA-TF PDU of at most `peer_max_pdu` bytes is its 12-byte header
    followed by its fragment sent with ``os.sendfile`` (zero copy), or read
    with ``os.preadv`` into one reusable buffer where ``sendfile`` cannot be
    used (TLS sockets, exotic file systems).  Neither closes `fd` nor
    deletes the file (see :func:`release_region`).

    Parameters
    ----------
    sock : socket.socket
        Blocking, optionally with a timeout (which then bounds every wait
        for the peer to drain its window).
    context_id : int
        Presentation context of the message.
    command : bytes
        The encoded command set (a data set follows).
    fd : int
        The region's file, from :func:`open_region`.
    region : FileRegion
        Where the data set lies.
    peer_max_pdu : int
        The peer's *Maximum Length Received* (0 = unlimited).

    Raises
    ------
    PeerGone
        On a socket error or send timeout.
    ProtocolError
        The file could not be read to the end of the region after sending
        began: PDU lengths were announced that cannot be honoured, so the
        association must be aborted.
    """
    send_buffers(sock, message_buffers(context_id, command, None, peer_max_pdu))
    _send_region(sock, fd, region.offset, region.length, context_id, peer_max_pdu)


def release_region(data: object) -> None:
    """Unlink the file of a :class:`FileRegion` marked ``delete_after``; else nothing.

    Never raises: a file already gone is what we wanted, and failing to
    delete a temporary file must not fail the transfer.
    """
    if isinstance(data, FileRegion) and data.delete_after:
        try:
            os.unlink(data.path)
        except FileNotFoundError:
            pass
        except OSError:
            LOGGER.warning("cannot delete %s", data.path, exc_info=True)


def _send_region(
    sock: socket.socket, fd: int, offset: int, length: int, context_id: int, peer_max_pdu: int
) -> None:
    limit = peer_max_pdu - 6 if peer_max_pdu > 6 else UNLIMITED_FRAGMENT
    pack = P_DATA_HEADERS.pack
    # A TLS socket's fd carries records, not plain bytes: sendfile would
    # bypass the encryption.
    use_sendfile = not isinstance(sock, ssl.SSLSocket)
    buffer: memoryview | None = None
    poller: select.poll | None = None
    timeout = sock.gettimeout()
    try:
        if length == 0:
            sock.sendall(pack(P_DATA_TF, 0, 6, 2, context_id, 0x02))
            return
        pos, end = offset, offset + length
        while pos < end:
            n = min(limit, end - pos)
            control = 0x02 if pos + n >= end else 0x00
            header = pack(P_DATA_TF, 0, n + 6, n + 2, context_id, control)
            done = 0
            if use_sendfile:
                sock.sendall(header, _MSG_MORE)
                if poller is None:
                    poller = select.poll()
                    poller.register(sock, select.POLLOUT)
                done = _sendfile(sock, fd, pos, n, poller, timeout)
                use_sendfile = done == n
                header = b""
            if done < n:
                if buffer is None:
                    buffer = memoryview(bytearray(12 + min(limit, length)))
                # Header and fragment in one buffer: one send per PDU.
                start = 12 - len(header)
                buffer[start:12] = header
                rest = n - done
                _pread_exact(fd, buffer[12 : 12 + rest], pos + done)
                sock.sendall(buffer[start : 12 + rest])
            pos += n
    except (ProtocolError, PeerGone):
        raise
    except TimeoutError as exc:
        raise PeerGone("timed out sending") from exc
    except OSError as exc:
        raise PeerGone(str(exc)) from exc


def _sendfile(
    sock: socket.socket, fd: int, offset: int, count: int, poller: select.poll, timeout: float | None
) -> int:
    """Send `count` bytes of `fd` from `offset` with ``os.sendfile``; return how many went.

    Less than `count` only when ``sendfile`` is not supported for this file
    or socket: the caller sends the rest another way.  A socket with a
    timeout is non-blocking underneath: wait for room with ``poll`` (at most
    `timeout` each time) when the send buffer is full.
    """
    out = sock.fileno()
    sent_total = 0
    wait_ms = -1 if timeout is None else max(0, int(timeout * 1000))
    while sent_total < count:
        try:
            sent = os.sendfile(out, fd, offset + sent_total, count - sent_total)
        except BlockingIOError:
            if not poller.poll(wait_ms):
                raise TimeoutError("timed out sending") from None
            continue
        except OSError as exc:
            if exc.errno in _NO_SENDFILE:
                return sent_total
            raise
        if sent == 0:
            raise ProtocolError("data set file ended before its announced length", REASON_NOT_SPECIFIED)
        sent_total += sent
    return sent_total


def _pread_exact(fd: int, view: memoryview, offset: int) -> None:
    pos, size = 0, len(view)
    try:
        while pos < size:
            got = os.preadv(fd, [view[pos:]], offset + pos)
            if not got:
                raise ProtocolError("data set file ended before its announced length", REASON_NOT_SPECIFIED)
            pos += got
    except OSError as exc:
        raise ProtocolError(f"cannot read the data set file: {exc}", REASON_NOT_SPECIFIED) from exc
