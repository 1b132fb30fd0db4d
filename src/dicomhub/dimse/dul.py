"""The DICOM upper layer (PS3.8 9): receiving PDUs and reassembling P-DATA into DIMSE messages.

:class:`UpperLayer` is the per-message state machine of an established
association (idle, command, data set) on one blocking socket: it reads each
PDU with exact-length reads into one buffer, splits a P-DATA-TF into PDVs
(memoryview slices, never copied), joins the command fragments into a
:class:`~dicomhub.dimse.messages.Command` and collects the data set
fragments; a data set that grows past ``AssociationConfig.spool_threshold`` (a
C-STORE's) goes to a spool file as its PDUs arrive, so that large objects
never sit in memory whole.  A complete message is handed to
:meth:`UpperLayer.dispatch`, which the association (:mod:`dicomhub.dimse.association`)
implements; A-RELEASE-RQ goes to :meth:`UpperLayer.release`.

Anything the peer does wrong raises :class:`~dicomhub.dimse.pdu.ProtocolError`
(the association answers with A-ABORT); a closed transport raises
:class:`~dicomhub.dimse.transport.PeerGone`, an A-ABORT from the peer
:class:`PeerAborted`.

References
----------
PS3.8 Sections 9.2 (DUL state machine: Sta6 data transfer, Sta13 awaiting
close), 9.3.5 (P-DATA-TF), E.2 (message control header).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import time
from typing import Final

from dicomhub.dimse import messages as M
from dicomhub.dimse import transport as T
from dicomhub.dimse.acse import MAX_ASSOCIATE_RQ
from dicomhub.dimse.pdu import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
    PDU_HEADER,
    PDV_HEADER,
    REASON_UNEXPECTED_PDU,
    REASON_UNRECOGNISED_PDU,
    ProtocolError,
    abort_pdu,
    message_buffers,
)
from dicomhub.dimse.requests import AssociationConfig

__all__ = ["IDLE", "COMMAND", "DATA", "PeerAborted", "UpperLayer"]

LOGGER = logging.getLogger("dicomhub.dimse")

#: Message states: between messages, inside a command set, inside a data set.
IDLE, COMMAND, DATA = 0, 1, 2

# Peers occasionally round their PDU size up (or count the PDU header in it);
# tolerate that instead of aborting a transfer that would otherwise succeed.
_PDU_SLACK: Final = 64 << 10
# With maximum_pdu_size == 0 ("unlimited") a garbage length must still not
# make us allocate gigabytes.
_UNLIMITED_PDU_CAP: Final = 64 << 20
_ABORT_SEND_TIMEOUT: Final = 5.0
# The slowest transfer rate a P-DATA-TF body may have beyond the DIMSE timeout
# (bytes per second): a 256 KiB PDU gets 4 s more, a 64 MiB one about 17 min.
_MIN_PDU_RATE: Final = 64 << 10
# data_limit for messages whose data set is never spooled (not a C-STORE-RQ).
_NO_SPOOL: Final = sys.maxsize


class PeerAborted(Exception):
    """The peer sent A-ABORT."""


class UpperLayer:
    """PDU reception and message reassembly of one association, on the calling thread.

    Subclasses implement :meth:`dispatch` (a complete message is in
    ``command``/``data_fragments``) and :meth:`release`; they set
    ``allowed_commands`` (any other command aborts the association) and
    ``in_operation`` (an A-RELEASE-RQ during an operation is a protocol error).
    """

    __slots__ = (
        "sock",
        "config",
        "calling_ae",
        "allowed_commands",
        "in_operation",
        "peer_max_pdu",
        "pdu_limit",
        "current_timeout",
        "state",
        "message_context",
        "command_fragments",
        "command",
        "data_fragments",
        "data_size",
        "data_limit",
        "spool_threshold",
        "spooling",
        "spool_fd",
        "spool_path",
        "spool_failed",
        "bytes_received",
    )

    def __init__(self, sock: socket.socket, config: AssociationConfig) -> None:
        self.sock = sock
        self.config = config
        self.calling_ae = ""
        self.allowed_commands: frozenset[int] = frozenset()
        self.in_operation = False
        self.peer_max_pdu = 0
        if config.maximum_pdu_size > 0:
            self.pdu_limit = config.maximum_pdu_size + _PDU_SLACK
        else:
            self.pdu_limit = _UNLIMITED_PDU_CAP
        self.current_timeout: float | None = -1.0
        self.state = IDLE
        self.message_context = 0
        self.command_fragments: list[memoryview] = []
        self.command: M.Command | None = None
        self.data_fragments: list[memoryview] = []
        # Bytes of the current data set so far, and past how many it goes to
        # a spool file instead of data_fragments.
        self.data_size = 0
        self.data_limit = _NO_SPOOL
        self.spool_threshold = max(0, config.spool_threshold)
        # True from the spool's creation (or failure) to the message's end.
        self.spooling = False
        self.spool_fd = -1
        self.spool_path: str | None = None
        self.spool_failed = False
        self.bytes_received = 0

    # -- hooks -------------------------------------------------------------

    def dispatch(self) -> None:
        """Act on the complete message in ``command`` / ``data_fragments``."""
        raise NotImplementedError

    def release(self) -> None:
        """Answer an A-RELEASE-RQ (its body is read)."""
        raise NotImplementedError

    # -- transport ---------------------------------------------------------

    def set_timeout(self, timeout: float | None) -> None:
        # settimeout() is a syscall; skip it when nothing changes (hot path).
        if timeout != self.current_timeout:
            self.sock.settimeout(timeout)
            self.current_timeout = timeout

    def recv_exact(self, view: memoryview, deadline: float | None = None) -> None:
        """Fill `view` from the socket (by ``deadline``, a :func:`time.monotonic` value).

        Raises
        ------
        PeerGone
            On EOF or a socket error.
        TimeoutError
            When the current timeout expires or ``deadline`` passes.
        """
        T.recv_exact(self.sock, view, deadline)

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError as exc:
            raise T.PeerGone("timed out sending") from exc
        except OSError as exc:
            raise T.PeerGone(str(exc)) from exc

    def send_message(
        self, context_id: int, command: bytes, dataset: bytes | memoryview | None = None
    ) -> None:
        """Send a command (and data set) within the peer's maximum PDU length."""
        T.send_buffers(self.sock, message_buffers(context_id, command, dataset, self.peer_max_pdu))

    def frame_message(
        self, context_id: int, command: bytes, dataset: bytes | memoryview | None = None
    ) -> list[bytes | memoryview]:
        """A message framed as :meth:`send_message` sends it, for :meth:`send_framed`."""
        return message_buffers(context_id, command, dataset, self.peer_max_pdu)

    def send_framed(self, buffers: list[bytes | memoryview]) -> None:
        """Send framed messages (:meth:`frame_message`, concatenated) with one ``sendmsg``."""
        T.send_buffers(self.sock, buffers)

    def send_abort(self, reason: int) -> None:
        """Send A-ABORT (source 2 = service provider); best effort."""
        try:
            self.set_timeout(_ABORT_SEND_TIMEOUT)
            self.sock.sendall(abort_pdu(reason))
        except OSError:
            pass

    def read_associate_rq(self) -> tuple[int, int, bytearray | None]:
        """Read the first PDU's header and, if it is an A-ASSOCIATE-RQ of a sane size, its body.

        Returns
        -------
        tuple of (int, int, bytearray or None)
            PDU type, length, and the body (``None`` when not read: another
            PDU type or an implausible length; the caller refuses).

        Raises
        ------
        PeerGone, TimeoutError
        """
        # The whole A-ASSOCIATE-RQ within the ACSE timeout (the ARTIM timer of
        # PS3.8 9.1.5), not each byte of it: a peer trickling it a byte a
        # second would otherwise hold this thread for hours.
        deadline = time.monotonic() + self.config.acse_timeout
        header = bytearray(6)
        self.recv_exact(memoryview(header), deadline)
        pdu_type, _, length = PDU_HEADER.unpack_from(header)
        if pdu_type != A_ASSOCIATE_RQ or length > MAX_ASSOCIATE_RQ or length < 68:
            return pdu_type, length, None
        body = bytearray(length)
        self.recv_exact(memoryview(body), deadline)
        return pdu_type, length, body

    # -- data transfer -----------------------------------------------------

    def receive_pdu(self) -> bool:
        """Read one PDU and act on it (with the socket's current timeout).

        Returns
        -------
        bool
            ``False`` when the association was released.

        Raises
        ------
        ProtocolError, PeerAborted, PeerGone, TimeoutError
        """
        config = self.config
        header = bytearray(6)
        # Deadlines for whole PDUs, not only for each wait (see recv_exact): a
        # trickled header gets the timeout in effect, a trickled body the DIMSE
        # timeout plus the time its length takes at _MIN_PDU_RATE.
        timeout = self.current_timeout
        deadline = None if not timeout or timeout < 0 else time.monotonic() + timeout
        self.recv_exact(memoryview(header), deadline)
        pdu_type, _, length = PDU_HEADER.unpack_from(header)
        if pdu_type == P_DATA_TF:
            if length > self.pdu_limit:
                raise ProtocolError(
                    f"P-DATA-TF of {length} bytes exceeds our maximum {config.maximum_pdu_size}"
                )
            body = bytearray(length)
            self.set_timeout(config.dimse_timeout)
            deadline = time.monotonic() + config.dimse_timeout + length / _MIN_PDU_RATE
            self.recv_exact(memoryview(body), deadline)
            self.bytes_received += length
            self.handle_p_data(body)
            return True
        if pdu_type == A_RELEASE_RQ:
            if self.in_operation:
                raise ProtocolError("A-RELEASE-RQ in the middle of a Q/R operation", REASON_UNEXPECTED_PDU)
            if length > 1024:
                raise ProtocolError("oversized A-RELEASE-RQ")
            self.set_timeout(config.dimse_timeout)
            self.recv_exact(memoryview(bytearray(length)))
            self.release()
            return False
        if pdu_type == A_ABORT:
            raise PeerAborted()
        if pdu_type in (A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_RELEASE_RP):
            raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}", REASON_UNEXPECTED_PDU)
        raise ProtocolError(f"unknown PDU type 0x{pdu_type:02X}", REASON_UNRECOGNISED_PDU)

    def handle_p_data(self, body: bytearray) -> None:
        """Split a P-DATA-TF body into PDVs and feed them to the message state."""
        view = memoryview(body)
        unpack_pdv = PDV_HEADER.unpack_from
        pos, end = 0, len(body)
        if not end:
            raise ProtocolError("empty P-DATA-TF")
        while pos < end:
            if end - pos < 6:
                raise ProtocolError("truncated PDV item")
            item_length, context_id, control = unpack_pdv(body, pos)
            item_end = pos + 4 + item_length
            if item_length < 2 or item_end > end:
                raise ProtocolError(f"PDV item length {item_length} invalid")
            fragment = view[pos + 6 : item_end]
            pos = item_end

            # Message control header (PS3.8 E.2): bit 0 command/data, bit 1 last.
            if control & 0x01:
                if self.state == IDLE:
                    self.state = COMMAND
                    self.message_context = context_id
                    self.command_fragments = []
                elif self.state != COMMAND or context_id != self.message_context:
                    raise ProtocolError("command fragment interleaved with another message")
                self.command_fragments.append(fragment)
                if control & 0x02:
                    self.command_complete()
            else:
                if self.state != DATA or context_id != self.message_context:
                    raise ProtocolError(f"data set fragment on context {context_id} without a command")
                if self.spooling:
                    self.spool_write(fragment)
                else:
                    self.data_fragments.append(fragment)
                    self.data_size += len(fragment)
                    if self.data_size > self.data_limit:
                        self.start_spool()
                if control & 0x02:
                    self.dispatch()

    def command_complete(self) -> None:
        fragments = self.command_fragments
        raw = bytes(fragments[0]) if len(fragments) == 1 else b"".join(fragments)
        self.command_fragments = []
        command = M.parse_command(raw)
        self.command = command
        if command.command_field not in self.allowed_commands:
            raise ProtocolError(
                f"command 0x{command.command_field:04X} is not served on this association",
                REASON_UNEXPECTED_PDU,
            )
        if command.command_field & 0x8000 or command.command_field == M.C_CANCEL_RQ:
            if command.message_id_responded_to is None:
                raise ProtocolError("response/cancel without Message ID Being Responded To")
        elif command.message_id is None:
            raise ProtocolError("command without Message ID")
        if command.has_data_set:
            self.state = DATA
            self.data_fragments = []
            self.data_size = 0
            # Only C-STORE data sets can be large; identifiers and response
            # data sets stay in memory.
            self.data_limit = self.spool_threshold if command.command_field == M.C_STORE_RQ else _NO_SPOOL
        else:
            self.dispatch()

    # -- spooling large data sets -----------------------------------------------

    def start_spool(self) -> None:
        """Move the data set received so far to a new spool file; the rest follows it."""
        self.spooling = True
        fragments = self.data_fragments
        self.data_fragments = []
        try:
            fd, path = tempfile.mkstemp(prefix="dicomhub-spool-", suffix=".part", dir=self.config.spool_dir)
        except OSError as exc:
            self.spool_failure(exc)
            return
        self.spool_fd, self.spool_path = fd, path
        LOGGER.debug("spooling a data set from %s to %s", self.calling_ae, path)
        for fragment in fragments:
            if self.spool_failed:
                break
            self.write_spool(fragment)
        fragments.clear()

    def spool_write(self, fragment: memoryview) -> None:
        """Append one data set fragment to the spool file (or drop it after a failure)."""
        self.data_size += len(fragment)
        if not self.spool_failed:
            self.write_spool(fragment)

    def write_spool(self, fragment: memoryview) -> None:
        fd = self.spool_fd
        try:
            while fragment:
                fragment = fragment[os.write(fd, fragment) :]
        except OSError as exc:
            self.spool_failure(exc)

    def spool_failure(self, exc: OSError) -> None:
        """Keep reading the message (the peer is mid-PDU), answer Out of Resources at its end."""
        LOGGER.error(
            "cannot spool a data set from %s in %s: %s",
            self.calling_ae,
            self.config.spool_dir or tempfile.gettempdir(),
            exc,
        )
        self.discard_spool()
        self.spooling = True
        self.spool_failed = True

    def close_spool(self) -> None:
        fd = self.spool_fd
        if fd >= 0:
            self.spool_fd = -1
            try:
                os.close(fd)
            except OSError:
                pass

    def discard_spool(self) -> None:
        """Close and delete the spool file, if any; reset the spool state."""
        self.close_spool()
        path = self.spool_path
        self.spooling = self.spool_failed = False
        if path is not None:
            self.spool_path = None
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:
                LOGGER.warning("cannot delete spool file %s", path, exc_info=True)
