"""An event-free, low-latency DIMSE receive path for Storage and Verification.

pynetdicom's DUL reactor polls its socket with 1 ms sleeps and never sets
``TCP_NODELAY``; every C-STORE therefore costs a few milliseconds of pure
waiting and one association tops out at a few hundred small instances per
second.  Associations that propose *only* Storage SOP classes and/or
Verification do not need the rest of pynetdicom's machinery, so this module
serves them itself: one blocking socket, one thread, exact-length reads.

What is reused from pynetdicom (cold path, once per association):

* :class:`pynetdicom.pdu.A_ASSOCIATE_RQ` to decode the request,
* :func:`pynetdicom.presentation.negotiate_as_acceptor` to negotiate the
  presentation contexts (and SCP/SCU role selection) exactly as pynetdicom
  would,
* :class:`pynetdicom.pdu.A_ASSOCIATE_AC` / :class:`~pynetdicom.pdu.A_ASSOCIATE_RJ`
  to encode the answer.

What is hand-rolled (hot path, once per message): PDU framing, P-DATA-TF
PDV parsing, the group 0000 command set (always implicit VR little endian,
PS3.7 6.3.1) and the C-STORE-RSP / C-ECHO-RSP encoding.

The routing decision (fast path or pynetdicom) is made by the listener with
:func:`peek_associate_request` and :func:`is_fast_path_request`; the fast path
itself is :func:`serve_association`.

References
----------
PS3.7 Sections 9.1.1 (C-STORE), 9.1.5 (C-ECHO), E (command dictionary);
PS3.8 Sections 9.3 (PDU structure) and 9.3.5.1 / E.2 (PDV message control
header).
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

__all__ = [
    "AssociationInfo",
    "FastPathConfig",
    "StoreOutcome",
    "StoreRequest",
    "VERIFICATION_SOP_CLASS",
    "is_fast_path_request",
    "peek_associate_request",
    "serve_association",
]

LOGGER = logging.getLogger("dicomhub.dimse.fastpath")

VERIFICATION_SOP_CLASS: Final = "1.2.840.10008.1.1"
_APPLICATION_CONTEXT_NAME: Final = "1.2.840.10008.3.1.1.1"
_IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
_EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1"

# A-ASSOCIATE-RQs are a few kB even with 128 contexts; anything bigger than
# this is garbage or an attack, and must not make us allocate or wait for it.
_MAX_ASSOCIATE_RQ: Final = 1 << 20
# Peers occasionally round their PDU size up (or count the PDU header in it);
# tolerate that instead of aborting a transfer that would otherwise succeed.
_PDU_SLACK: Final = 64 << 10
# With maximum_pdu_size == 0 ("unlimited") a garbage length must still not
# make us allocate gigabytes.
_UNLIMITED_PDU_CAP: Final = 64 << 20
# After sending A-RELEASE-RP / A-ABORT / A-ASSOCIATE-RJ the requestor is the one
# that closes (PS3.8 ARTIM); closing first while its bytes are unread would
# turn our FIN into an RST that can destroy the PDU we just sent.
_LINGER_SECONDS: Final = 2.0
_LINGER_MAX_BYTES: Final = 1 << 20
_ABORT_SEND_TIMEOUT: Final = 5.0

# PDU types (PS3.8 Table 9-1).
_A_ASSOCIATE_RQ: Final = 0x01
_A_ASSOCIATE_AC: Final = 0x02
_A_ASSOCIATE_RJ: Final = 0x03
_P_DATA_TF: Final = 0x04
_A_RELEASE_RQ: Final = 0x05
_A_RELEASE_RP: Final = 0x06
_A_ABORT: Final = 0x07

# A-ABORT provider reasons (PS3.8 Table 9-26, source 2 = service provider).
_REASON_NOT_SPECIFIED: Final = 0x00
_REASON_UNRECOGNISED_PDU: Final = 0x01
_REASON_UNEXPECTED_PDU: Final = 0x02
_REASON_INVALID_PARAMETER: Final = 0x06

# DIMSE command fields and statuses used here (PS3.7 Annex E / C).
_C_STORE_RQ: Final = 0x0001
_C_STORE_RSP: Final = 0x8001
_C_ECHO_RQ: Final = 0x0030
_C_ECHO_RSP: Final = 0x8030
_NO_DATA_SET: Final = 0x0101
_STATUS_SUCCESS: Final = 0x0000
_STATUS_SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
_STATUS_PROCESSING_FAILURE: Final = 0xC210

# Command set element numbers (group 0000).
_E_GROUP_LENGTH: Final = 0x0000
_E_AFFECTED_SOP_CLASS: Final = 0x0002
_E_COMMAND_FIELD: Final = 0x0100
_E_MESSAGE_ID: Final = 0x0110
_E_MESSAGE_ID_RSP: Final = 0x0120
_E_DATA_SET_TYPE: Final = 0x0800
_E_STATUS: Final = 0x0900
_E_ERROR_COMMENT: Final = 0x0902
_E_AFFECTED_SOP_INSTANCE: Final = 0x1000
_E_MOVE_ORIGINATOR_AE: Final = 0x1030
_E_MOVE_ORIGINATOR_ID: Final = 0x1031

_PDU_HEADER = struct.Struct(">BBI")
_PDV_HEADER = struct.Struct(">IBB")
_UINT4_BE = struct.Struct(">I")
_UINT2_BE = struct.Struct(">H")
_ELEMENT_HEADER = struct.Struct("<HHI")
_UINT2_LE = struct.Struct("<H")
_US_ELEMENT = struct.Struct("<HHIH")
_UL_ELEMENT = struct.Struct("<HHII")

_RELEASE_RP_PDU: Final = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"


# --------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """One received C-STORE-RQ with its data set.

    Attributes
    ----------
    calling_ae_title, called_ae_title : str
        AE titles from the A-ASSOCIATE-RQ (stripped).
    peer_host : str
        IP address of the requestor.
    message_id : int
        *Message ID* (0000,0110) of the request.
    sop_class_uid, sop_instance_uid : str
        *Affected SOP Class/Instance UID* from the command set.
    transfer_syntax_uid : str
        Transfer syntax of the accepted presentation context the data set
        was sent on.
    dataset : bytes
        The data set exactly as received (no File Meta), all fragments joined.
    move_originator_ae_title, move_originator_message_id : str or None, int or None
        Set when the store is a C-MOVE sub-operation.
    """

    calling_ae_title: str
    called_ae_title: str
    peer_host: str
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset: bytes
    move_originator_ae_title: str | None
    move_originator_message_id: int | None


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """What to answer a C-STORE-RQ with.

    Attributes
    ----------
    status : int
        DIMSE status of the C-STORE-RSP.
    error_comment : str or None
        *Error Comment* (0000,0902); sent only for a non-success status and
        truncated to the 64 characters LO allows.
    """

    status: int
    error_comment: str | None = None


@dataclass(frozen=True, slots=True)
class AssociationInfo:
    """Who is asking for an association (passed to the policy and logged)."""

    calling_ae_title: str
    called_ae_title: str
    peer_host: str
    peer_port: int


@dataclass(frozen=True)
class FastPathConfig:
    """Static configuration of the fast path.

    Attributes
    ----------
    ae_title : str
        Our AE title (checked only with `require_called_ae_title`).
    storage_contexts : Mapping[str, Sequence[str]]
        Storage abstract syntax UID -> accepted transfer syntax UIDs, in our
        order of preference.
    verification : bool
        Accept Verification with implicit/explicit VR little endian.
    maximum_pdu_size : int
        Our *Maximum Length Received*, sent in the A-ASSOCIATE-AC
        (0 = unlimited).
    implementation_class_uid, implementation_version_name : str
        Sent in the A-ASSOCIATE-AC.
    acse_timeout : float
        Seconds to wait for the A-ASSOCIATE-RQ.
    dimse_timeout : float
        Seconds to wait between PDUs of one message once it started.
    network_timeout : float
        Seconds of idleness (no message in progress) before we abort.
    require_called_ae_title : bool
        Reject an A-ASSOCIATE-RQ whose called AE title is not `ae_title`.
    """

    ae_title: str
    storage_contexts: Mapping[str, Sequence[str]]
    verification: bool = True
    maximum_pdu_size: int = 262144
    implementation_class_uid: str = "1.2.826.0.1.3680043.10.1419.1"
    implementation_version_name: str = "DICOMHUB_010"
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    network_timeout: float = 60.0
    require_called_ae_title: bool = False


# --------------------------------------------------------------------------
# Routing helpers
# --------------------------------------------------------------------------


def is_fast_path_request(rq: A_ASSOCIATE, config: FastPathConfig) -> bool:
    """Return whether the fast path can serve this association request.

    Parameters
    ----------
    rq : pynetdicom.pdu_primitives.A_ASSOCIATE
        The decoded A-ASSOCIATE-RQ (see :func:`peek_associate_request`).
    config : FastPathConfig
        The fast path configuration.

    Returns
    -------
    bool
        ``True`` when at least one presentation context is proposed and every
        proposed abstract syntax is Verification (if ``config.verification``)
        or a storage SOP class in ``config.storage_contexts``.
    """
    contexts = rq.presentation_context_definition_list
    if not contexts:
        return False
    for context in contexts:
        uid = context.abstract_syntax
        if uid is None:
            return False
        if uid == VERIFICATION_SOP_CLASS:
            if not config.verification:
                return False
        elif str(uid) not in config.storage_contexts:
            return False
    return True


def peek_associate_request(sock: socket.socket, timeout: float) -> A_ASSOCIATE | None:
    """Decode the first PDU on `sock` as an A-ASSOCIATE-RQ without consuming it.

    The bytes are read with ``MSG_PEEK`` so they stay in the socket's receive
    queue: whichever stack the connection is routed to afterwards (this
    module or pynetdicom) reads the request itself.

    Parameters
    ----------
    sock : socket.socket
        A freshly accepted connection.
    timeout : float
        Seconds to wait for the complete PDU.

    Returns
    -------
    pynetdicom.pdu_primitives.A_ASSOCIATE or None
        The request primitive, or ``None`` when the peer sent something else,
        garbage, a PDU larger than 1 MiB, closed the connection, or did not
        send a complete PDU within `timeout`.
    """
    previous_timeout = sock.gettimeout()
    deadline = time.monotonic() + timeout
    try:
        header = _peek_exact(sock, 6, deadline)
        if header is None or header[0] != _A_ASSOCIATE_RQ:
            return None
        length = _UINT4_BE.unpack_from(header, 2)[0]
        if length < 68 or length > _MAX_ASSOCIATE_RQ:
            return None
        pdu = _peek_exact(sock, 6 + length, deadline)
        if pdu is None:
            return None
        return _decode_associate_rq(memoryview(pdu)[6:])[0]
    except Exception:  # noqa: BLE001 - garbage must never escape the listener
        LOGGER.debug("peek of A-ASSOCIATE-RQ failed", exc_info=True)
        return None
    finally:
        try:
            sock.settimeout(previous_timeout)
        except OSError:
            pass


def _peek_exact(sock: socket.socket, size: int, deadline: float) -> bytes | None:
    """Wait until `size` bytes are queued on `sock` and return them, unconsumed.

    ``MSG_PEEK | MSG_WAITALL`` does not wait on a socket with a timeout (it is
    non-blocking underneath), so a short PDU tail is waited for with a small
    back-off; the common case (whole PDU in one segment) never sleeps.
    """
    delay = 0.0005
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            data = sock.recv(size, socket.MSG_PEEK)
        except (TimeoutError, BlockingIOError):
            return None
        if not data:
            return None  # closed before sending anything
        if len(data) >= size:
            return data
        if _peer_hung_up(sock):
            return None
        time.sleep(min(delay, max(remaining, 0.0)))
        delay = min(delay * 2, 0.05)


def _peer_hung_up(sock: socket.socket) -> bool:
    """Return whether the peer closed its side (only detectable with poll)."""
    rdhup = getattr(select, "POLLRDHUP", 0)
    if not rdhup or not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN | rdhup)
    for _, mask in poller.poll(0):
        if mask & (rdhup | select.POLLHUP | select.POLLERR):
            return True
    return False


_KNOWN_USER_SUB_ITEMS: Final = frozenset(range(0x51, 0x5A))


def _sanitise_associate_rq(body: memoryview) -> bytes:
    """Drop unknown variable items and user information sub-items.

    PS3.8 9.3.1 tells the acceptor to ignore items it does not know, but
    pynetdicom's decoder raises ``KeyError`` on them; rebuild the PDU without
    them before handing it over.

    Parameters
    ----------
    body : memoryview
        The A-ASSOCIATE-RQ after its 6-byte PDU header.

    Returns
    -------
    bytes
        A complete A-ASSOCIATE-RQ PDU (header included).

    Raises
    ------
    ValueError
        If an item overruns the PDU.
    """
    if len(body) < 68:
        raise ValueError("A-ASSOCIATE-RQ too short")
    items: list[bytes] = []
    pos, end = 68, len(body)
    while pos < end:
        if end - pos < 4:
            raise ValueError("truncated variable item")
        item_type = body[pos]
        item_end = pos + 4 + _UINT2_BE.unpack_from(body, pos + 2)[0]
        if item_end > end:
            raise ValueError("variable item overruns the PDU")
        if item_type in (0x10, 0x20):
            items.append(bytes(body[pos:item_end]))
        elif item_type == 0x50:
            subs: list[bytes] = []
            sub = pos + 4
            while sub < item_end:
                if item_end - sub < 4:
                    raise ValueError("truncated user information sub-item")
                sub_end = sub + 4 + _UINT2_BE.unpack_from(body, sub + 2)[0]
                if sub_end > item_end:
                    raise ValueError("user information sub-item overruns its item")
                if body[sub] in _KNOWN_USER_SUB_ITEMS:
                    subs.append(bytes(body[sub:sub_end]))
                sub = sub_end
            content = b"".join(subs)
            items.append(b"\x50\x00" + _UINT2_BE.pack(len(content)) + content)
        pos = item_end
    variable = b"".join(items)
    return _PDU_HEADER.pack(_A_ASSOCIATE_RQ, 0, 68 + len(variable)) + bytes(body[:68]) + variable


def _decode_associate_rq(body: memoryview) -> tuple[A_ASSOCIATE, int]:
    """Decode an A-ASSOCIATE-RQ body (after the PDU header) with pynetdicom.

    Returns
    -------
    tuple of (A_ASSOCIATE, int)
        The request primitive and the PDU's protocol version (the primitive
        has no field for the latter).
    """
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(_sanitise_associate_rq(body))
    return pdu.to_primitive(), int(pdu.protocol_version)


# --------------------------------------------------------------------------
# Acceptor contexts (built once per configuration)
# --------------------------------------------------------------------------

_CONTEXT_CACHE: dict[int, tuple[FastPathConfig, list[PresentationContext]]] = {}
_CONTEXT_CACHE_LOCK = threading.Lock()


def _acceptor_contexts(config: FastPathConfig) -> list[PresentationContext]:
    """Return the supported presentation contexts for `config`.

    Building ~150 :class:`PresentationContext` objects validates every UID and
    costs milliseconds, so it is cached per configuration object (keyed by
    ``id`` and checked by identity; the config is not hashable because of its
    mapping field).
    """
    key = id(config)
    cached = _CONTEXT_CACHE.get(key)
    if cached is not None and cached[0] is config:
        return cached[1]
    contexts: dict[str, PresentationContext] = {}
    if config.verification:
        contexts[VERIFICATION_SOP_CLASS] = _context(
            VERIFICATION_SOP_CLASS, [_IMPLICIT_VR_LE, _EXPLICIT_VR_LE]
        )
    for abstract_syntax, transfer_syntaxes in config.storage_contexts.items():
        if transfer_syntaxes:
            contexts[abstract_syntax] = _context(abstract_syntax, transfer_syntaxes)
    result = list(contexts.values())
    with _CONTEXT_CACHE_LOCK:
        if len(_CONTEXT_CACHE) >= 16:
            _CONTEXT_CACHE.clear()
        _CONTEXT_CACHE[key] = (config, result)
    return result


def _context(abstract_syntax: str, transfer_syntaxes: Sequence[str]) -> PresentationContext:
    context = PresentationContext()
    context.abstract_syntax = UID(abstract_syntax)
    context.transfer_syntax = [UID(uid) for uid in transfer_syntaxes]
    return context


# --------------------------------------------------------------------------
# Command set codec (group 0000, implicit VR little endian)
# --------------------------------------------------------------------------


class _ProtocolError(Exception):
    """The peer broke the protocol; the association is aborted."""

    def __init__(self, message: str, reason: int = _REASON_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


class _PeerGone(Exception):
    """The transport closed or failed; nothing more can be sent."""


@dataclass(slots=True)
class _Command:
    """The fields of a request command set this module acts on."""

    command_field: int
    message_id: int | None
    sop_class_uid: str | None
    sop_instance_uid: str | None
    has_data_set: bool
    move_originator_ae_title: str | None
    move_originator_message_id: int | None


def _parse_command(data: bytes) -> _Command:
    """Parse a command set.

    Raises
    ------
    _ProtocolError
        If it is not a well-formed group 0000 element list or lacks the
        Command Field.
    """
    values: dict[int, bytes] = {}
    unpack = _ELEMENT_HEADER.unpack_from
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 8:
            raise _ProtocolError("truncated command element")
        group, element, length = unpack(data, pos)
        pos += 8
        if group != 0 or pos + length > end:
            raise _ProtocolError(f"invalid command element ({group:04X},{element:04X})")
        values[element] = data[pos : pos + length]
        pos += length

    def us(element: int) -> int | None:
        raw = values.get(element)
        if raw is None:
            return None
        if len(raw) != 2:
            raise _ProtocolError(f"(0000,{element:04X}) is not a US value")
        return int(_UINT2_LE.unpack(raw)[0])

    def text(element: int) -> str | None:
        raw = values.get(element)
        if raw is None:
            return None
        # UI is padded with NUL, AE with spaces; both are ASCII-only.
        return raw.decode("ascii", "replace").rstrip("\x00 ").lstrip(" ") or None

    command_field = us(_E_COMMAND_FIELD)
    if command_field is None:
        raise _ProtocolError("command set without Command Field")
    data_set_type = us(_E_DATA_SET_TYPE)
    return _Command(
        command_field=command_field,
        message_id=us(_E_MESSAGE_ID),
        sop_class_uid=text(_E_AFFECTED_SOP_CLASS),
        sop_instance_uid=text(_E_AFFECTED_SOP_INSTANCE),
        # PS3.7 E.1: 0x0101 means "no data set", any other value means one follows.
        has_data_set=data_set_type is not None and data_set_type != _NO_DATA_SET,
        move_originator_ae_title=text(_E_MOVE_ORIGINATOR_AE),
        move_originator_message_id=us(_E_MOVE_ORIGINATOR_ID),
    )


def _text_element(element: int, value: bytes, pad: bytes) -> bytes:
    if len(value) & 1:
        value += pad
    return _ELEMENT_HEADER.pack(0, element, len(value)) + value


def _encode_response(
    command_field: int,
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str | None,
    status: int,
    error_comment: str | None = None,
) -> bytes:
    """Encode a response command set (elements in ascending tag order)."""
    parts = [
        _text_element(_E_AFFECTED_SOP_CLASS, sop_class_uid.encode("ascii", "replace"), b"\x00"),
        _US_ELEMENT.pack(0, _E_COMMAND_FIELD, 2, command_field),
        _US_ELEMENT.pack(0, _E_MESSAGE_ID_RSP, 2, message_id),
        _US_ELEMENT.pack(0, _E_DATA_SET_TYPE, 2, _NO_DATA_SET),
        _US_ELEMENT.pack(0, _E_STATUS, 2, status),
    ]
    if error_comment and status != _STATUS_SUCCESS:
        comment = error_comment[:64].encode("ascii", "replace")
        parts.append(_text_element(_E_ERROR_COMMENT, comment, b" "))
    if sop_instance_uid:
        parts.append(
            _text_element(
                _E_AFFECTED_SOP_INSTANCE, sop_instance_uid.encode("ascii", "replace"), b"\x00"
            )
        )
    rest = b"".join(parts)
    return _UL_ELEMENT.pack(0, _E_GROUP_LENGTH, 4, len(rest)) + rest


# --------------------------------------------------------------------------
# The association
# --------------------------------------------------------------------------

_IDLE, _COMMAND, _DATA = 0, 1, 2


class _Association:
    """State of one association served on the calling thread."""

    __slots__ = (
        "sock",
        "host",
        "port",
        "config",
        "on_store",
        "accept_association",
        "on_event",
        "calling_ae",
        "called_ae",
        "contexts",
        "peer_max_pdu",
        "pdu_limit",
        "current_timeout",
        "state",
        "message_context",
        "command_fragments",
        "command",
        "data_fragments",
        "stores",
        "echoes",
        "bytes_received",
        "started",
    )

    def __init__(
        self,
        sock: socket.socket,
        address: tuple[str, int],
        config: FastPathConfig,
        on_store: Callable[[StoreRequest], StoreOutcome],
        accept_association: Callable[[AssociationInfo], str | None],
        on_event: Callable[[str, dict[str, object]], None] | None,
    ) -> None:
        self.sock = sock
        self.host = str(address[0]) if address else ""
        self.port = int(address[1]) if address and len(address) > 1 else 0
        self.config = config
        self.on_store = on_store
        self.accept_association = accept_association
        self.on_event = on_event
        self.calling_ae = ""
        self.called_ae = ""
        # context ID -> (abstract syntax, transfer syntax) of accepted contexts
        self.contexts: dict[int, tuple[str, str]] = {}
        self.peer_max_pdu = 0
        if config.maximum_pdu_size > 0:
            self.pdu_limit = config.maximum_pdu_size + _PDU_SLACK
        else:
            self.pdu_limit = _UNLIMITED_PDU_CAP
        self.current_timeout: float | None = -1.0
        self.state = _IDLE
        self.message_context = 0
        self.command_fragments: list[memoryview] = []
        self.command: _Command | None = None
        self.data_fragments: list[memoryview] = []
        self.stores = 0
        self.echoes = 0
        self.bytes_received = 0
        self.started = time.monotonic()

    # -- plumbing ----------------------------------------------------------

    def emit(self, name: str, payload: dict[str, object]) -> None:
        """Call the statistics hook; its failures must not hurt the transfer."""
        if self.on_event is None:
            return
        try:
            self.on_event(name, payload)
        except Exception:  # noqa: BLE001
            LOGGER.exception("on_event hook failed for %r", name)

    def set_timeout(self, timeout: float | None) -> None:
        # settimeout() is a syscall; skip it when nothing changes (hot path).
        if timeout != self.current_timeout:
            self.sock.settimeout(timeout)
            self.current_timeout = timeout

    def recv_exact(self, view: memoryview) -> None:
        """Fill `view` from the socket.

        Raises
        ------
        _PeerGone
            On EOF or a socket error.
        TimeoutError
            When the current timeout expires.
        """
        recv_into = self.sock.recv_into
        size = len(view)
        pos = 0
        try:
            while pos < size:
                got = recv_into(view[pos:], size - pos)
                if not got:
                    raise _PeerGone("connection closed by peer")
                pos += got
        except TimeoutError:
            raise
        except OSError as exc:
            raise _PeerGone(str(exc)) from exc

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError as exc:
            raise _PeerGone("timed out sending") from exc
        except OSError as exc:
            raise _PeerGone(str(exc)) from exc

    def send_abort(self, reason: int) -> None:
        """Send A-ABORT (source 2 = service provider); best effort."""
        pdu = _PDU_HEADER.pack(_A_ABORT, 0, 4) + bytes((0, 0, 2, reason))
        try:
            self.set_timeout(_ABORT_SEND_TIMEOUT)
            self.sock.sendall(pdu)
        except OSError:
            pass

    def linger_close(self) -> None:
        """Half-close and wait (briefly) for the peer to close, then close."""
        sock = self.sock
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(_LINGER_SECONDS)
            deadline = time.monotonic() + _LINGER_SECONDS
            drained = 0
            while drained < _LINGER_MAX_BYTES and time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass

    # -- association establishment -----------------------------------------

    def establish(self) -> bool:
        """Read the A-ASSOCIATE-RQ and accept or reject it.

        Returns
        -------
        bool
            ``True`` when the association is established.
        """
        config = self.config
        self.set_timeout(config.acse_timeout)
        header = bytearray(6)
        try:
            self.recv_exact(memoryview(header))
        except (TimeoutError, _PeerGone):
            LOGGER.info(
                "connection from %s:%s closed before an A-ASSOCIATE-RQ", self.host, self.port
            )
            return False
        pdu_type = header[0]
        length = _UINT4_BE.unpack_from(header, 2)[0]
        if pdu_type != _A_ASSOCIATE_RQ:
            reason = _REASON_UNEXPECTED_PDU if pdu_type <= _A_ABORT else _REASON_UNRECOGNISED_PDU
            self.refuse_garbage(f"PDU type 0x{pdu_type:02X} instead of A-ASSOCIATE-RQ", reason)
            return False
        if length > _MAX_ASSOCIATE_RQ or length < 68:
            self.refuse_garbage(f"A-ASSOCIATE-RQ with length {length}", _REASON_INVALID_PARAMETER)
            return False
        body = bytearray(length)
        try:
            self.recv_exact(memoryview(body))
        except (TimeoutError, _PeerGone):
            LOGGER.info("truncated A-ASSOCIATE-RQ from %s:%s", self.host, self.port)
            return False
        try:
            rq, protocol_version = _decode_associate_rq(memoryview(body))
        except Exception as exc:  # noqa: BLE001 - pynetdicom raises anything on garbage
            self.refuse_garbage(f"undecodable A-ASSOCIATE-RQ ({exc!r})", _REASON_INVALID_PARAMETER)
            return False

        self.calling_ae = rq.calling_ae_title.strip()
        self.called_ae = rq.called_ae_title.strip()
        info = AssociationInfo(self.calling_ae, self.called_ae, self.host, self.port)

        # (result, source, diagnostic) per PS3.8 Table 9-21
        rejection: tuple[int, int, int] | None = None
        reason_text = ""
        if not protocol_version & 1:
            rejection, reason_text = (1, 2, 2), "protocol version not supported"
        elif str(rq.application_context_name) != _APPLICATION_CONTEXT_NAME:
            rejection = (1, 1, 2)
            reason_text = f"application context {rq.application_context_name} not supported"
        elif config.require_called_ae_title and self.called_ae != config.ae_title.strip():
            rejection, reason_text = (1, 1, 7), "called AE title not recognised"
        else:
            try:
                refusal = self.accept_association(info)
            except Exception:  # noqa: BLE001 - a broken policy refuses, it does not crash
                LOGGER.exception("accept_association failed; rejecting")
                refusal = "association policy failed"
            if refusal is not None:
                rejection, reason_text = (1, 1, 3), refusal
        if rejection is not None:
            self.reject(rejection, reason_text)
            return False

        self.peer_max_pdu = rq.maximum_length_received or 0
        try:
            ac_pdu, results = self.negotiate(rq)
        except Exception as exc:  # noqa: BLE001 - e.g. a context without transfer syntax
            self.refuse_garbage(f"negotiation failed ({exc!r})", _REASON_INVALID_PARAMETER)
            return False
        try:
            self.send(ac_pdu)
        except _PeerGone:
            LOGGER.info("peer %s:%s went away before the A-ASSOCIATE-AC", self.host, self.port)
            return False

        LOGGER.info(
            "association accepted: %s -> %s from %s:%s, %d of %d contexts accepted, "
            "peer max PDU %d",
            self.calling_ae,
            self.called_ae,
            self.host,
            self.port,
            len(self.contexts),
            len(results),
            self.peer_max_pdu,
        )
        self.emit(
            "associated",
            {
                "calling_ae_title": self.calling_ae,
                "called_ae_title": self.called_ae,
                "peer_host": self.host,
                "peer_port": self.port,
                "accepted_contexts": len(self.contexts),
                "rejected_contexts": len(results) - len(self.contexts),
            },
        )
        return True

    def negotiate(self, rq: A_ASSOCIATE) -> tuple[bytes, list[PresentationContext]]:
        """Negotiate the presentation contexts; return the encoded A-ASSOCIATE-AC.

        Also records the accepted contexts in ``self.contexts``.
        """
        config = self.config
        # SCP/SCU role selection: pynetdicom's acceptor defaults (no roles
        # configured) accept the context with us as SCP and send no reply item.
        roles = {
            item.sop_class_uid: (item.scu_role, item.scp_role)
            for item in rq.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid
        }
        results, role_items = negotiate_as_acceptor(
            rq.presentation_context_definition_list, _acceptor_contexts(config), roles
        )
        for context in results:
            if context.result == 0x00 and context.context_id is not None:
                self.contexts[context.context_id] = (
                    str(context.abstract_syntax),
                    str(context.transfer_syntax[0]),
                )

        ac = A_ASSOCIATE()
        ac.application_context_name = UID(_APPLICATION_CONTEXT_NAME)
        ac.calling_ae_title = rq.calling_ae_title
        ac.called_ae_title = rq.called_ae_title
        ac.result = 0x00
        ac.result_source = 0x01
        # Every proposed context is answered, rejected ones included (with no
        # acceptable context at all the AC still goes out, as DCMTK does).
        ac.presentation_context_definition_results_list = results
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = config.maximum_pdu_size
        class_uid = ImplementationClassUIDNotification()
        class_uid.implementation_class_uid = UID(config.implementation_class_uid)
        user_info: list[object] = [max_length, class_uid]
        if config.implementation_version_name:
            version = ImplementationVersionNameNotification()
            version.implementation_version_name = config.implementation_version_name
            user_info.append(version)
        user_info.extend(role_items)
        ac.user_information = user_info  # type: ignore[assignment]
        return A_ASSOCIATE_AC(ac).encode(), results

    def refuse_garbage(self, what: str, reason: int) -> None:
        LOGGER.warning("aborting connection from %s:%s: %s", self.host, self.port, what)
        self.send_abort(reason)
        self.linger_close()
        self.emit("aborted", {"peer_host": self.host, "reason": what, "by": "local"})

    def reject(self, rejection: tuple[int, int, int], reason_text: str) -> None:
        result, source, diagnostic = rejection
        rj = A_ASSOCIATE()
        rj.result = result
        rj.result_source = source
        rj.diagnostic = diagnostic
        LOGGER.info(
            "association rejected: %s -> %s from %s:%s: %s",
            self.calling_ae,
            self.called_ae,
            self.host,
            self.port,
            reason_text,
        )
        try:
            self.send(A_ASSOCIATE_RJ(rj).encode())
        except _PeerGone:
            pass
        self.linger_close()
        self.emit(
            "rejected",
            {
                "calling_ae_title": self.calling_ae,
                "called_ae_title": self.called_ae,
                "peer_host": self.host,
                "reason": reason_text,
            },
        )

    # -- data transfer -----------------------------------------------------

    def run(self) -> None:
        """Serve the established association until release, abort or error."""
        config = self.config
        header = bytearray(6)
        header_view = memoryview(header)
        unpack_header = _PDU_HEADER.unpack_from
        try:
            while True:
                self.set_timeout(
                    config.network_timeout if self.state == _IDLE else config.dimse_timeout
                )
                self.recv_exact(header_view)
                pdu_type, _, length = unpack_header(header)
                if pdu_type == _P_DATA_TF:
                    if length > self.pdu_limit:
                        raise _ProtocolError(
                            f"P-DATA-TF of {length} bytes exceeds our maximum "
                            f"{config.maximum_pdu_size}"
                        )
                    body = bytearray(length)
                    self.set_timeout(config.dimse_timeout)
                    self.recv_exact(memoryview(body))
                    self.bytes_received += length
                    self.handle_p_data(body)
                elif pdu_type == _A_RELEASE_RQ:
                    if length > 1024:
                        raise _ProtocolError("oversized A-RELEASE-RQ")
                    self.set_timeout(config.dimse_timeout)
                    self.recv_exact(memoryview(bytearray(length)))
                    self.release()
                    return
                elif pdu_type == _A_ABORT:
                    self.finish_aborted("A-ABORT from peer", by="peer")
                    return
                elif pdu_type in (_A_ASSOCIATE_RQ, _A_ASSOCIATE_AC, _A_ASSOCIATE_RJ, _A_RELEASE_RP):
                    raise _ProtocolError(
                        f"unexpected PDU type 0x{pdu_type:02X}", _REASON_UNEXPECTED_PDU
                    )
                else:
                    raise _ProtocolError(
                        f"unknown PDU type 0x{pdu_type:02X}", _REASON_UNRECOGNISED_PDU
                    )
        except _ProtocolError as exc:
            self.send_abort(exc.reason)
            self.linger_close()
            self.finish_aborted(f"protocol error: {exc}", by="local")
        except TimeoutError:
            self.send_abort(_REASON_NOT_SPECIFIED)
            self.linger_close()
            what = "DIMSE timeout" if self.state != _IDLE else "network (idle) timeout"
            self.finish_aborted(what, by="local")
        except _PeerGone as exc:
            self.finish_aborted(f"transport closed ({exc})", by="peer")

    def handle_p_data(self, body: bytearray) -> None:
        """Split a P-DATA-TF body into PDVs and feed them to the message state."""
        view = memoryview(body)
        unpack_pdv = _PDV_HEADER.unpack_from
        pos, end = 0, len(body)
        if not end:
            raise _ProtocolError("empty P-DATA-TF")
        while pos < end:
            if end - pos < 6:
                raise _ProtocolError("truncated PDV item")
            item_length, context_id, control = unpack_pdv(body, pos)
            item_end = pos + 4 + item_length
            if item_length < 2 or item_end > end:
                raise _ProtocolError(f"PDV item length {item_length} invalid")
            fragment = view[pos + 6 : item_end]
            pos = item_end

            # Message control header (PS3.8 E.2): bit 0 command/data, bit 1 last.
            if control & 0x01:
                if self.state == _IDLE:
                    self.state = _COMMAND
                    self.message_context = context_id
                    self.command_fragments = []
                elif self.state != _COMMAND or context_id != self.message_context:
                    raise _ProtocolError("command fragment interleaved with another message")
                self.command_fragments.append(fragment)
                if control & 0x02:
                    self.command_complete()
            else:
                if self.state != _DATA or context_id != self.message_context:
                    raise _ProtocolError(
                        f"data set fragment on context {context_id} without a command"
                    )
                self.data_fragments.append(fragment)
                if control & 0x02:
                    self.dispatch()

    def command_complete(self) -> None:
        fragments = self.command_fragments
        raw = bytes(fragments[0]) if len(fragments) == 1 else b"".join(fragments)
        self.command_fragments = []
        command = _parse_command(raw)
        self.command = command
        if command.command_field not in (_C_STORE_RQ, _C_ECHO_RQ):
            raise _ProtocolError(
                f"command 0x{command.command_field:04X} is not served on the storage fast path",
                _REASON_UNEXPECTED_PDU,
            )
        if command.message_id is None:
            raise _ProtocolError("command without Message ID")
        if command.has_data_set:
            self.state = _DATA
            self.data_fragments = []
        else:
            self.dispatch()

    def dispatch(self) -> None:
        """Act on the complete message and send its response."""
        command = self.command
        assert command is not None
        context_id = self.message_context
        self.state = _IDLE
        self.command = None
        fragments = self.data_fragments
        self.data_fragments = []
        if command.command_field == _C_ECHO_RQ:
            self.handle_echo(command, context_id)
        else:
            self.handle_store(command, context_id, fragments)

    def handle_echo(self, command: _Command, context_id: int) -> None:
        if command.has_data_set:
            raise _ProtocolError("C-ECHO-RQ with a data set")
        context = self.contexts.get(context_id)
        sop_class = command.sop_class_uid or VERIFICATION_SOP_CLASS
        status = _STATUS_SUCCESS
        if context is None or context[0] != VERIFICATION_SOP_CLASS or sop_class != context[0]:
            status = _STATUS_SOP_CLASS_NOT_SUPPORTED
        assert command.message_id is not None
        self.send_response(
            context_id, _encode_response(_C_ECHO_RSP, command.message_id, sop_class, None, status)
        )
        self.echoes += 1
        LOGGER.debug("C-ECHO from %s: status 0x%04X", self.calling_ae, status)
        self.emit("echo", {"calling_ae_title": self.calling_ae, "status": status})

    def handle_store(self, command: _Command, context_id: int, fragments: list[memoryview]) -> None:
        if not command.has_data_set:
            raise _ProtocolError("C-STORE-RQ without a data set")
        sop_class = command.sop_class_uid
        sop_instance = command.sop_instance_uid
        message_id = command.message_id
        if sop_class is None or sop_instance is None or message_id is None:
            raise _ProtocolError("C-STORE-RQ without Affected SOP Class/Instance UID")
        started = time.perf_counter()
        context = self.contexts.get(context_id)
        error_comment: str | None = None
        size = 0
        if context is None or context[0] != sop_class:
            status = _STATUS_SOP_CLASS_NOT_SUPPORTED
            error_comment = "SOP class not accepted on this presentation context"
        else:
            dataset = bytes(fragments[0]) if len(fragments) == 1 else b"".join(fragments)
            # Release the PDU buffers now rather than when this frame ends.
            fragments.clear()
            size = len(dataset)
            request = StoreRequest(
                calling_ae_title=self.calling_ae,
                called_ae_title=self.called_ae,
                peer_host=self.host,
                message_id=message_id,
                sop_class_uid=sop_class,
                sop_instance_uid=sop_instance,
                transfer_syntax_uid=context[1],
                dataset=dataset,
                move_originator_ae_title=command.move_originator_ae_title,
                move_originator_message_id=command.move_originator_message_id,
            )
            del dataset
            try:
                outcome = self.on_store(request)
                status = int(outcome.status)
                if not 0 <= status <= 0xFFFF:
                    raise ValueError(f"status {status} out of range")
                error_comment = outcome.error_comment
            except Exception:  # noqa: BLE001 - a failing store must not kill the server
                LOGGER.exception(
                    "on_store failed for %s from %s; answering 0x%04X",
                    sop_instance,
                    self.calling_ae,
                    _STATUS_PROCESSING_FAILURE,
                )
                status = _STATUS_PROCESSING_FAILURE
                error_comment = "processing failure"
        self.send_response(
            context_id,
            _encode_response(
                _C_STORE_RSP, message_id, sop_class, sop_instance, status, error_comment
            ),
        )
        self.stores += 1
        elapsed = time.perf_counter() - started
        LOGGER.debug(
            "C-STORE %s (%s, %d bytes) from %s: status 0x%04X in %.1f ms",
            sop_instance,
            sop_class,
            size,
            self.calling_ae,
            status,
            elapsed * 1000,
        )
        if self.on_event is not None:
            self.emit(
                "store",
                {
                    "calling_ae_title": self.calling_ae,
                    "sop_class_uid": sop_class,
                    "sop_instance_uid": sop_instance,
                    "status": status,
                    "bytes": size,
                    "seconds": elapsed,
                },
            )

    def send_response(self, context_id: int, command: bytes) -> None:
        """Send a command set as P-DATA-TF PDU(s) within the peer's maximum."""
        # The peer's Maximum Length Received bounds the PDU's variable field,
        # i.e. PDV item headers (6 bytes) plus fragment.
        limit = self.peer_max_pdu - 6 if self.peer_max_pdu else 0
        if limit <= 0 or len(command) <= limit:
            self.send(
                _PDU_HEADER.pack(_P_DATA_TF, 0, len(command) + 6)
                + _PDV_HEADER.pack(len(command) + 2, context_id, 0x03)
                + command
            )
            return
        pdus = []
        for start in range(0, len(command), limit):
            fragment = command[start : start + limit]
            control = 0x03 if start + limit >= len(command) else 0x01
            pdus.append(
                _PDU_HEADER.pack(_P_DATA_TF, 0, len(fragment) + 6)
                + _PDV_HEADER.pack(len(fragment) + 2, context_id, control)
                + fragment
            )
        self.send(b"".join(pdus))

    # -- the end -----------------------------------------------------------

    def counts(self) -> dict[str, object]:
        return {
            "calling_ae_title": self.calling_ae,
            "peer_host": self.host,
            "stores": self.stores,
            "echoes": self.echoes,
            "bytes": self.bytes_received,
            "seconds": time.monotonic() - self.started,
        }

    def release(self) -> None:
        if self.state != _IDLE:
            LOGGER.warning(
                "A-RELEASE-RQ from %s in the middle of a message; the message is dropped",
                self.calling_ae,
            )
        try:
            self.send(_RELEASE_RP_PDU)
        except _PeerGone:
            pass
        self.linger_close()
        counts = self.counts()
        LOGGER.info(
            "association released: %s from %s:%s, %d stores, %d echoes, %d bytes in %.2f s",
            self.calling_ae,
            self.host,
            self.port,
            self.stores,
            self.echoes,
            self.bytes_received,
            counts["seconds"],
        )
        self.emit("released", counts)

    def finish_aborted(self, why: str, by: str) -> None:
        counts = self.counts()
        LOGGER.info(
            "association aborted (%s): %s from %s:%s after %d stores, %d echoes, %d bytes",
            why,
            self.calling_ae,
            self.host,
            self.port,
            self.stores,
            self.echoes,
            self.bytes_received,
        )
        counts["reason"] = why
        counts["by"] = by
        self.emit("aborted", counts)


def serve_association(
    sock: socket.socket,
    address: tuple[str, int],
    config: FastPathConfig,
    on_store: Callable[[StoreRequest], StoreOutcome],
    accept_association: Callable[[AssociationInfo], str | None] = lambda info: None,
    on_event: Callable[[str, dict[str, object]], None] | None = None,
) -> None:
    """Run one whole association on the calling thread and close the socket.

    Parameters
    ----------
    sock : socket.socket
        The accepted connection; its A-ASSOCIATE-RQ must still be unread
        (:func:`peek_associate_request` leaves it there).
    address : tuple of (str, int)
        The peer address as returned by ``accept()``.
    config : FastPathConfig
        What to accept and the timeouts.
    on_store : callable
        Called once per C-STORE-RQ with its :class:`StoreRequest`, on this
        thread; its :class:`StoreOutcome` is sent back.  An exception is
        logged and answered with status 0xC210.
    accept_association : callable, optional
        Policy hook: returns a rejection reason to refuse the association
        (A-ASSOCIATE-RJ, permanent, calling AE title not recognised) or
        ``None`` to accept it.
    on_event : callable, optional
        Statistics hook called with ``"associated"``, ``"rejected"``,
        ``"released"``, ``"aborted"``, ``"store"`` or ``"echo"`` and a dict
        of details; exceptions from it are logged and ignored.

    Notes
    -----
    Never raises because of anything the peer sends: malformed or
    unexpected PDUs, timeouts and oversized PDUs end in an A-ABORT (source 2)
    and a closed socket.
    """
    try:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not a TCP socket (e.g. a socketpair in tests)
        association = _Association(sock, address, config, on_store, accept_association, on_event)
        if association.establish():
            association.run()
    except Exception:  # noqa: BLE001 - last line of defence for the listener thread
        LOGGER.exception("fast path association with %s failed unexpectedly", address)
    finally:
        try:
            sock.close()
        except OSError:
            pass
