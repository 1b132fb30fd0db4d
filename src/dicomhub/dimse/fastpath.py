"""An event-free, low-latency DIMSE path for Storage, Verification and Query/Retrieve.

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

With ``FastPathConfig.query_retrieve`` the same loop also serves Patient and
Study Root C-FIND, C-GET and C-MOVE through two callbacks that know nothing of
pynetdicom (:class:`QueryRequest` in; match identifiers or a
:class:`RetrievePlan` of :class:`Sendable` out).  C-GET sub-operations go out
on the same association, C-MOVE ones on a :class:`~dicomhub.dimse.scu.StoreAssociation`;
data sets are sent as memoryview slices with ``sendmsg`` (no copy), or from
a file with ``sendfile`` when the callback hands a :class:`FileRegion`;
C-CANCEL is honoured between responses/sub-operations.  Only synchronous operations
(no asynchronous operations window): one Q/R operation at a time.

Large objects never sit in memory whole: a C-STORE data set that grows past
``FastPathConfig.spool_threshold`` is written to a spool file as its PDUs
arrive and handed to ``on_store`` as :attr:`StoreRequest.dataset_path`; the
file is deleted when ``on_store`` returns, and whenever the message or the
association ends early.

The routing decision (fast path or pynetdicom) is made by the listener with
:func:`peek_associate_request` and :func:`is_fast_path_request`; the fast path
itself is :func:`serve_association`.

References
----------
PS3.7 Sections 9.1.1 (C-STORE), 9.1.2-9.1.5 (C-FIND, C-GET, C-MOVE, C-ECHO),
9.3.2.3 (C-CANCEL), E (command dictionary); PS3.4 Annex C (Query/Retrieve);
PS3.8 Sections 9.3 (PDU structure) and 9.3.5.1 / E.2 (PDV message control
header).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from io import BytesIO
from typing import Final

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from dicomhub.dimse import pdu as P
from dicomhub.dimse.negotiation import (
    MAX_ASSOCIATE_RQ,
    acceptor_contexts_for,
    decode_associate_rq,
    is_fast_path_request,
    peek_associate_request,
    storage_syntaxes,
)
from dicomhub.dimse.requests import (
    FIND_MODELS,
    GET_MODELS,
    MOVE_MODELS,
    QUERY_RETRIEVE_SOP_CLASSES,
    VERIFICATION_SOP_CLASS,
    AssociationInfo,
    EncodedDataSet,
    FastPathConfig,
    FileRegion,
    FindCallback,
    Identifier,
    NActionOutcome,
    NActionRequest,
    QueryRequest,
    Rejection,
    RetrieveCallback,
    RetrievePlan,
    Sendable,
    StoreOutcome,
    StoreRequest,
)
from dicomhub.dimse.scu import StoreAssociation, StoreAssociationError
from dicomhub.model.commitment import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH_MODEL

__all__ = [
    "AssociationInfo",
    "FastPathConfig",
    "FileRegion",
    "Identifier",
    "NActionOutcome",
    "move_proposals",
    "NActionRequest",
    "QUERY_RETRIEVE_SOP_CLASSES",
    "QueryRequest",
    "Rejection",
    "RetrievePlan",
    "Sendable",
    "StoreOutcome",
    "StoreRequest",
    "VERIFICATION_SOP_CLASS",
    "is_fast_path_request",
    "peek_associate_request",
    "serve_association",
]

LOGGER = logging.getLogger("dicomhub.dimse.fastpath")

_APPLICATION_CONTEXT_NAME: Final = "1.2.840.10008.3.1.1.1"
_IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
_EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1"

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
# The slowest transfer rate a P-DATA-TF body may have beyond the DIMSE timeout
# (bytes per second): a 256 KiB PDU gets 4 s more, a 64 MiB one about 17 min.
_MIN_PDU_RATE: Final = 64 << 10

_EXPLICIT_VR_BE: Final = "1.2.840.10008.1.2.2"
_UNCOMPRESSED: Final = (_EXPLICIT_VR_LE, _IMPLICIT_VR_LE, _EXPLICIT_VR_BE)

# A C-MOVE's sub-association proposes one context per (SOP class, transfer syntax).
_MAX_MOVE_CONTEXTS: Final = 128

# PDU types, reasons, command fields, elements: see dicomhub.dimse.pdu.
_A_ASSOCIATE_RQ: Final = P.A_ASSOCIATE_RQ
_A_ASSOCIATE_AC: Final = P.A_ASSOCIATE_AC
_A_ASSOCIATE_RJ: Final = P.A_ASSOCIATE_RJ
_P_DATA_TF: Final = P.P_DATA_TF
_A_RELEASE_RQ: Final = P.A_RELEASE_RQ
_A_RELEASE_RP: Final = P.A_RELEASE_RP
_A_ABORT: Final = P.A_ABORT
_REASON_NOT_SPECIFIED: Final = P.REASON_NOT_SPECIFIED
_REASON_UNRECOGNISED_PDU: Final = P.REASON_UNRECOGNISED_PDU
_REASON_UNEXPECTED_PDU: Final = P.REASON_UNEXPECTED_PDU
_REASON_INVALID_PARAMETER: Final = P.REASON_INVALID_PARAMETER
_C_STORE_RQ: Final = P.C_STORE_RQ
_C_STORE_RSP: Final = P.C_STORE_RSP
_C_ECHO_RQ: Final = P.C_ECHO_RQ
_C_ECHO_RSP: Final = P.C_ECHO_RSP

_STATUS_SUCCESS: Final = 0x0000
_STATUS_SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
_STATUS_PROCESSING_FAILURE: Final = 0xC210
_STATUS_PENDING: Final = 0xFF00
_STATUS_PENDING_WARNING: Final = 0xFF01
_STATUS_CANCEL: Final = 0xFE00
_STATUS_UNABLE_TO_PROCESS: Final = 0xC000
_STATUS_BAD_IDENTIFIER: Final = 0xA900
_STATUS_UNKNOWN_DESTINATION: Final = 0xA801
_STATUS_SUBOPS_FAILED: Final = 0xA702
_STATUS_SUBOPS_WARNING: Final = 0xB000
_STATUS_OUT_OF_RESOURCES: Final = 0xA700
# DIMSE-N statuses (PS3.7 C.4.2 / Annex C).
_STATUS_NO_SUCH_OBJECT_INSTANCE: Final = 0x0112
_STATUS_NO_SUCH_ACTION: Final = 0x0123
_STATUS_MISSING_ATTRIBUTE: Final = 0x0120
_STATUS_PROCESSING_FAILURE_N: Final = 0x0110

# data_limit for messages whose data set is never spooled (not a C-STORE-RQ).
_NO_SPOOL: Final = sys.maxsize

_PDU_HEADER = P.PDU_HEADER
_PDV_HEADER = P.PDV_HEADER
_UINT4_BE = P.UINT4_BE
_UINT2_BE = P.UINT2_BE
_RELEASE_RP_PDU: Final = P.RELEASE_RP_PDU


# --------------------------------------------------------------------------
# Command set codec (group 0000, implicit VR little endian)
# --------------------------------------------------------------------------


_ProtocolError = P.ProtocolError
_PeerGone = P.PeerGone
_Command = P.Command
_parse_command = P.parse_command
_encode_response = P.encode_response


class _PeerAborted(Exception):
    """The peer sent A-ABORT."""


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
        "on_find",
        "on_retrieve",
        "on_n_action",
        "pending_reports",
        "allowed_commands",
        "scu_contexts",
        "deferred",
        "in_operation",
        "cancelled",
        "store_responses",
        "transport_error",
        "poller",
        "next_message_id",
        "operations",
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
        "data_size",
        "data_limit",
        "spool_threshold",
        "spooling",
        "spool_fd",
        "spool_path",
        "spool_failed",
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
        accept_association: Callable[[AssociationInfo], str | Rejection | None],
        on_event: Callable[[str, dict[str, object]], None] | None,
        on_find: FindCallback | None = None,
        on_retrieve: RetrieveCallback | None = None,
        on_n_action: Callable[[NActionRequest], NActionOutcome] | None = None,
    ) -> None:
        self.sock = sock
        self.host = str(address[0]) if address else ""
        self.port = int(address[1]) if address and len(address) > 1 else 0
        self.config = config
        self.on_store = on_store
        self.accept_association = accept_association
        self.on_event = on_event
        self.on_find = on_find
        self.on_retrieve = on_retrieve
        allowed = {_C_STORE_RQ, _C_ECHO_RQ}
        if config.query_retrieve:
            allowed |= {P.C_FIND_RQ, P.C_GET_RQ, P.C_MOVE_RQ, P.C_CANCEL_RQ, P.C_STORE_RSP}
        if config.storage_commitment:
            allowed |= {P.N_ACTION_RQ, P.N_EVENT_REPORT_RSP}
        self.allowed_commands = frozenset(allowed)
        self.on_n_action = on_n_action
        # Message ID of an N-EVENT-REPORT-RQ we sent -> what to call on success.
        self.pending_reports: dict[int, Callable[[], None] | None] = {}
        # (SOP class, transfer syntax) -> context ID where we may act as SCU
        self.scu_contexts: dict[tuple[str, str], int] = {}
        # A complete Q/R request waiting to be served by run().
        self.deferred: tuple[_Command, int, list[memoryview]] | None = None
        self.in_operation = False
        self.cancelled: set[int] = set()
        self.store_responses: dict[int, tuple[int, str | None]] = {}
        self.transport_error: BaseException | None = None
        self.poller: select.poll | None = None
        self.next_message_id = 0
        self.operations = 0
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

    def recv_exact(self, view: memoryview, deadline: float | None = None) -> None:
        """Fill `view` from the socket (by ``deadline``, a :func:`time.monotonic` value).

        Raises
        ------
        _PeerGone
            On EOF or a socket error.
        TimeoutError
            When the current timeout expires or ``deadline`` passes.
        """
        P.recv_exact(self.sock, view, deadline)

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError as exc:
            raise _PeerGone("timed out sending") from exc
        except OSError as exc:
            raise _PeerGone(str(exc)) from exc

    def send_message(
        self, context_id: int, command: bytes, dataset: bytes | memoryview | None = None
    ) -> None:
        """Send a command (and data set) within the peer's maximum PDU length."""
        P.send_buffers(self.sock, P.message_buffers(context_id, command, dataset, self.peer_max_pdu))

    def send_abort(self, reason: int) -> None:
        """Send A-ABORT (source 2 = service provider); best effort."""
        pdu = _PDU_HEADER.pack(_A_ABORT, 0, 4) + bytes((0, 0, 2, reason))
        try:
            self.set_timeout(_ABORT_SEND_TIMEOUT)
            self.sock.sendall(pdu)
        except OSError:
            pass

    def linger_close(self) -> None:
        """Wait (briefly, the ARTIM timer) for the peer to close, then close.

        PS3.8 Sta13: after A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT it is the
        requestor that closes the connection. Sending our FIN at once made
        pynetdicom's requestor sometimes see the end of the stream before the
        PDU that preceded it.
        """
        sock = self.sock
        try:
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
        # The whole A-ASSOCIATE-RQ within the ACSE timeout (the ARTIM timer of
        # PS3.8 9.1.5), not each byte of it: a peer trickling it a byte a
        # second would otherwise hold this thread for hours.
        deadline = time.monotonic() + config.acse_timeout
        header = bytearray(6)
        try:
            self.recv_exact(memoryview(header), deadline)
        except (TimeoutError, _PeerGone):
            LOGGER.info("connection from %s:%s closed before an A-ASSOCIATE-RQ", self.host, self.port)
            return False
        pdu_type = header[0]
        length = _UINT4_BE.unpack_from(header, 2)[0]
        if pdu_type != _A_ASSOCIATE_RQ:
            reason = _REASON_UNEXPECTED_PDU if pdu_type <= _A_ABORT else _REASON_UNRECOGNISED_PDU
            self.refuse_garbage(f"PDU type 0x{pdu_type:02X} instead of A-ASSOCIATE-RQ", reason)
            return False
        if length > MAX_ASSOCIATE_RQ or length < 68:
            self.refuse_garbage(f"A-ASSOCIATE-RQ with length {length}", _REASON_INVALID_PARAMETER)
            return False
        body = bytearray(length)
        try:
            self.recv_exact(memoryview(body), deadline)
        except (TimeoutError, _PeerGone):
            LOGGER.info("truncated A-ASSOCIATE-RQ from %s:%s", self.host, self.port)
            return False
        try:
            rq, protocol_version = decode_associate_rq(memoryview(body))
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
            if isinstance(refusal, Rejection):
                rejection = (refusal.result, refusal.source, refusal.diagnostic)
                reason_text = refusal.reason
            elif refusal is not None:
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
            "association accepted: %s -> %s from %s:%s, %d of %d contexts accepted, peer max PDU %d",
            self.calling_ae,
            self.called_ae,
            self.host,
            self.port,
            len(self.contexts),
            len(results),
            self.peer_max_pdu,
        )
        if self.on_event is not None:
            proposed = {cx.context_id: cx for cx in rq.presentation_context_definition_list}
            self.emit(
                "associated",
                {
                    "calling_ae_title": self.calling_ae,
                    "called_ae_title": self.called_ae,
                    "peer_host": self.host,
                    "peer_port": self.port,
                    "accepted_contexts": len(self.contexts),
                    "rejected_contexts": len(results) - len(self.contexts),
                    # What was proposed and what became of it (PS3.8 Table 9-18
                    # results): the syntaxes offered are kept for refused contexts only.
                    "contexts": [
                        _context_outcome(r, proposed.get(r.context_id)) for r in results
                    ],
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
            rq.presentation_context_definition_list,
            acceptor_contexts_for(config, rq.presentation_context_definition_list),
            roles,
        )
        _prefer_requestor_syntax(results, rq.presentation_context_definition_list, config)
        for context in results:
            if context.result == 0x00 and context.context_id is not None:
                pair = (str(context.abstract_syntax), str(context.transfer_syntax[0]))
                self.contexts[context.context_id] = pair
                if context.as_scu:
                    self.scu_contexts.setdefault(pair, context.context_id)

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
        try:
            self.serve(config)
        finally:
            # A message cut short (abort, timeout, protocol error, release)
            # must not leave its spool file behind.
            self.discard_spool()

    def serve(self, config: FastPathConfig) -> None:
        try:
            while True:
                self.set_timeout(config.network_timeout if self.state == _IDLE else config.dimse_timeout)
                if not self.receive_pdu():
                    return
                while self.deferred is not None:
                    self.run_operation()
        except _ProtocolError as exc:
            self.send_abort(exc.reason)
            self.linger_close()
            self.finish_aborted(f"protocol error: {exc}", by="local")
        except TimeoutError:
            self.send_abort(_REASON_NOT_SPECIFIED)
            self.linger_close()
            what = "DIMSE timeout" if self.state != _IDLE or self.in_operation else "network (idle) timeout"
            self.finish_aborted(what, by="local")
        except _PeerAborted:
            self.finish_aborted("A-ABORT from peer", by="peer")
        except _PeerGone as exc:
            self.finish_aborted(f"transport closed ({exc})", by="peer")

    def receive_pdu(self) -> bool:
        """Read one PDU and act on it (with the socket's current timeout).

        Returns
        -------
        bool
            ``False`` when the association was released.

        Raises
        ------
        _ProtocolError, _PeerAborted, _PeerGone, TimeoutError
        """
        config = self.config
        header = bytearray(6)
        # Deadlines for whole PDUs, not only for each wait (see recv_exact): a
        # trickled header gets the timeout in effect, a trickled body the DIMSE
        # timeout plus the time its length takes at _MIN_PDU_RATE.
        timeout = self.current_timeout
        deadline = None if not timeout or timeout < 0 else time.monotonic() + timeout
        self.recv_exact(memoryview(header), deadline)
        pdu_type, _, length = _PDU_HEADER.unpack_from(header)
        if pdu_type == _P_DATA_TF:
            if length > self.pdu_limit:
                raise _ProtocolError(
                    f"P-DATA-TF of {length} bytes exceeds our maximum {config.maximum_pdu_size}"
                )
            body = bytearray(length)
            self.set_timeout(config.dimse_timeout)
            deadline = time.monotonic() + config.dimse_timeout + length / _MIN_PDU_RATE
            self.recv_exact(memoryview(body), deadline)
            self.bytes_received += length
            self.handle_p_data(body)
            return True
        if pdu_type == _A_RELEASE_RQ:
            if self.in_operation:
                raise _ProtocolError("A-RELEASE-RQ in the middle of a Q/R operation", _REASON_UNEXPECTED_PDU)
            if length > 1024:
                raise _ProtocolError("oversized A-RELEASE-RQ")
            self.set_timeout(config.dimse_timeout)
            self.recv_exact(memoryview(bytearray(length)))
            self.release()
            return False
        if pdu_type == _A_ABORT:
            raise _PeerAborted()
        if pdu_type in (_A_ASSOCIATE_RQ, _A_ASSOCIATE_AC, _A_ASSOCIATE_RJ, _A_RELEASE_RP):
            raise _ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}", _REASON_UNEXPECTED_PDU)
        raise _ProtocolError(f"unknown PDU type 0x{pdu_type:02X}", _REASON_UNRECOGNISED_PDU)

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
                    raise _ProtocolError(f"data set fragment on context {context_id} without a command")
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
        command = _parse_command(raw)
        self.command = command
        if command.command_field not in self.allowed_commands:
            raise _ProtocolError(
                f"command 0x{command.command_field:04X} is not served on this fast path",
                _REASON_UNEXPECTED_PDU,
            )
        if command.command_field & 0x8000 or command.command_field == P.C_CANCEL_RQ:
            if command.message_id_responded_to is None:
                raise _ProtocolError("response/cancel without Message ID Being Responded To")
        elif command.message_id is None:
            raise _ProtocolError("command without Message ID")
        if command.has_data_set:
            self.state = _DATA
            self.data_fragments = []
            self.data_size = 0
            # Only C-STORE data sets can be large; identifiers and response
            # data sets stay in memory.
            self.data_limit = self.spool_threshold if command.command_field == _C_STORE_RQ else _NO_SPOOL
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
        field = command.command_field
        if field == _C_STORE_RQ and not self.in_operation:
            self.handle_store(command, context_id, fragments)
        elif field == P.C_CANCEL_RQ:
            # Only meaningful for the operation in progress (or about to start).
            if self.in_operation or self.deferred is not None:
                assert command.message_id_responded_to is not None
                self.cancelled.add(command.message_id_responded_to)
            else:
                LOGGER.debug("C-CANCEL-RQ from %s with no operation running", self.calling_ae)
        elif field == P.N_EVENT_REPORT_RSP:
            assert command.message_id_responded_to is not None
            self.report_answered(command)
        elif field == P.N_ACTION_RQ and not self.in_operation and self.deferred is None:
            self.handle_n_action(command, context_id, fragments)
        elif field == _C_STORE_RSP:
            if not self.in_operation:
                raise _ProtocolError("C-STORE-RSP without a C-STORE-RQ", _REASON_UNEXPECTED_PDU)
            assert command.message_id_responded_to is not None
            self.store_responses[command.message_id_responded_to] = (
                command.status if command.status is not None else _STATUS_PROCESSING_FAILURE,
                command.error_comment,
            )
        elif self.in_operation or self.deferred is not None:
            raise _ProtocolError(
                "a new request while a Q/R operation is running (asynchronous operations are not negotiated)",
                _REASON_UNEXPECTED_PDU,
            )
        elif field == _C_ECHO_RQ:
            self.handle_echo(command, context_id)
        else:  # C-FIND/C-GET/C-MOVE: served by run() once this PDU is handled
            self.cancelled.clear()
            self.deferred = (command, context_id, fragments)

    # -- spooling large data sets -----------------------------------------------

    def start_spool(self) -> None:
        """Move the data set received so far to a new spool file; the rest follows it."""
        self.spooling = True
        fragments = self.data_fragments
        self.data_fragments = []
        try:
            fd, path = tempfile.mkstemp(
                prefix="dicomhub-spool-", suffix=".part", dir=self.config.spool_dir
            )
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

    # -- Storage Commitment --------------------------------------------------

    def handle_n_action(self, command: _Command, context_id: int, fragments: list[memoryview]) -> None:
        """N-ACTION-RQ: answer it, then send the N-EVENT-REPORT on this association."""
        assert command.message_id is not None
        context = self.contexts.get(context_id)
        status = _STATUS_SUCCESS
        outcome: NActionOutcome | None = None
        action_type = command.action_type_id if command.action_type_id is not None else 0
        if (
            context is None
            or context[0] != STORAGE_COMMITMENT_PUSH_MODEL
            or command.requested_sop_class_uid != STORAGE_COMMITMENT_PUSH_MODEL
            or self.on_n_action is None
        ):
            status = _STATUS_SOP_CLASS_NOT_SUPPORTED
        elif command.requested_sop_instance_uid != STORAGE_COMMITMENT_INSTANCE:
            status = _STATUS_NO_SUCH_OBJECT_INSTANCE
        elif action_type != 1:
            status = _STATUS_NO_SUCH_ACTION
        elif not command.has_data_set:
            status = _STATUS_MISSING_ATTRIBUTE
        else:
            try:
                dataset = _decode_dataset(fragments, context[1])
                outcome = self.on_n_action(
                    NActionRequest(
                        self.calling_ae, self.host, command.message_id, context[1], action_type, dataset
                    )
                )
                status = outcome.status
            except Exception:  # noqa: BLE001 - a failing request must not kill the association
                LOGGER.exception("N-ACTION from %s failed", self.calling_ae)
                status = _STATUS_PROCESSING_FAILURE_N
                outcome = None
        self.send_response(
            context_id,
            P.encode_n_action_rsp(
                command.message_id,
                STORAGE_COMMITMENT_PUSH_MODEL,
                STORAGE_COMMITMENT_INSTANCE,
                status,
                action_type,
            ),
        )
        LOGGER.info("N-ACTION (storage commitment) from %s: status 0x%04X", self.calling_ae, status)
        if outcome is None or outcome.report is None or status != _STATUS_SUCCESS or context is None:
            return
        try:
            event_type, information = outcome.report()
        except Exception:  # noqa: BLE001 - the report goes out later, on a new association
            LOGGER.exception("storage commitment report for %s not prepared", self.calling_ae)
            return
        message_id = self.sub_message_id()
        self.pending_reports[message_id] = outcome.delivered
        # Not waited for: the requestor may release at once, and then the
        # background process delivers the report on an association of its own.
        self.send_message(
            context_id,
            P.encode_n_event_report_rq(
                message_id, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE, event_type
            ),
            _encode_dataset(information, context[1]),
        )

    def report_answered(self, command: _Command) -> None:
        assert command.message_id_responded_to is not None
        if command.message_id_responded_to not in self.pending_reports:
            raise _ProtocolError("N-EVENT-REPORT-RSP for no report of ours", _REASON_UNEXPECTED_PDU)
        delivered = self.pending_reports.pop(command.message_id_responded_to)
        if command.status == _STATUS_SUCCESS:
            if delivered is not None:
                try:
                    delivered()
                except Exception:  # noqa: BLE001 - then it is delivered again later
                    LOGGER.exception("recording a delivered storage commitment report failed")
        else:
            LOGGER.warning(
                "%s answered the storage commitment report with 0x%04X; it will be sent again",
                self.calling_ae,
                command.status if command.status is not None else -1,
            )

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
        spool_path = self.spool_path
        if context is None or context[0] != sop_class:
            status = _STATUS_SOP_CLASS_NOT_SUPPORTED
            error_comment = "SOP class not accepted on this presentation context"
        elif self.spool_failed:
            status = _STATUS_OUT_OF_RESOURCES
            error_comment = "out of resources: cannot spool the data set"
        else:
            if spool_path is None:
                dataset = bytes(fragments[0]) if len(fragments) == 1 else b"".join(fragments)
                # Release the PDU buffers now rather than when this frame ends.
                fragments.clear()
                size = len(dataset)
            else:
                self.close_spool()  # unbuffered writes: the file is complete
                dataset = b""
                size = self.data_size
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
                dataset_path=spool_path,
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
        if self.spooling:
            self.discard_spool()
        self.send_response(
            context_id,
            _encode_response(_C_STORE_RSP, message_id, sop_class, sop_instance, status, error_comment),
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
        self.send_message(context_id, command)

    # -- Query/Retrieve ------------------------------------------------------

    def run_operation(self) -> None:
        """Serve the deferred C-FIND/C-GET/C-MOVE request to its final response."""
        assert self.deferred is not None
        command, context_id, fragments = self.deferred
        self.deferred = None
        self.in_operation = True
        try:
            if command.command_field == P.C_FIND_RQ:
                self.handle_find(command, context_id, fragments)
            else:
                self.handle_retrieve(command, context_id, fragments)
            self.raise_transport_error()
        finally:
            self.in_operation = False
            self.cancelled.clear()
            self.store_responses.clear()
        self.operations += 1

    def raise_transport_error(self) -> None:
        """Re-raise a transport failure noticed while polling for C-CANCEL."""
        error = self.transport_error
        if error is not None:
            self.transport_error = None
            raise error

    def poll(self) -> None:
        """Act on whatever PDUs are already queued on the socket; never blocks long."""
        poller = self.poller
        if poller is None:
            poller = self.poller = select.poll()
            poller.register(self.sock, select.POLLIN)
        # Under TLS, bytes already decrypted wait in the SSL object, not the socket.
        pending = getattr(self.sock, "pending", None)
        while poller.poll(0) or (pending is not None and pending()):
            self.set_timeout(self.config.dimse_timeout)
            self.receive_pdu()

    def cancel_requested(self, message_id: int) -> bool:
        """Whether a C-CANCEL-RQ for `message_id` arrived (checks the socket).

        A transport failure met on the way is kept for
        :meth:`raise_transport_error` and reported as a cancellation, so that
        callbacks calling this stop early and cannot swallow it.
        """
        if message_id in self.cancelled or self.transport_error is not None:
            return True
        try:
            self.poll()
        except (_ProtocolError, _PeerGone, _PeerAborted, TimeoutError) as exc:
            self.transport_error = exc
            return True
        return message_id in self.cancelled

    def qr_request(
        self, command: _Command, context_id: int, fragments: list[memoryview], models: frozenset[str]
    ) -> tuple[QueryRequest | None, int, str | None, str]:
        """Check the context and decode the identifier.

        Returns
        -------
        tuple
            (request or None, refusal status, error comment, transfer syntax).
        """
        assert command.message_id is not None
        message_id = command.message_id
        context = self.contexts.get(context_id)
        model = command.sop_class_uid or ""
        transfer_syntax = context[1] if context else _IMPLICIT_VR_LE
        if context is None or context[0] != model or model not in models:
            return None, _STATUS_SOP_CLASS_NOT_SUPPORTED, "SOP class not accepted", transfer_syntax
        if not command.has_data_set:
            return None, _STATUS_BAD_IDENTIFIER, "request without an identifier", transfer_syntax
        try:
            identifier = _decode_dataset(fragments, transfer_syntax)
        except Exception as exc:  # noqa: BLE001 - garbage from the peer
            LOGGER.warning("undecodable identifier from %s: %r", self.calling_ae, exc)
            return None, _STATUS_BAD_IDENTIFIER, "cannot decode the identifier", transfer_syntax
        request = QueryRequest(
            calling_ae_title=self.calling_ae,
            called_ae_title=self.called_ae,
            peer_host=self.host,
            message_id=message_id,
            sop_class_uid=model,
            identifier=identifier,
            move_destination=command.move_destination,
            is_cancelled=lambda: self.cancel_requested(message_id),
        )
        return request, 0, None, transfer_syntax

    def handle_find(self, command: _Command, context_id: int, fragments: list[memoryview]) -> None:
        started = time.perf_counter()
        message_id = command.message_id
        assert message_id is not None
        model = command.sop_class_uid or ""
        request, final, comment, transfer_syntax = self.qr_request(
            command, context_id, fragments, FIND_MODELS
        )
        fragments.clear()
        matches = 0
        if request is not None and self.on_find is None:
            final, comment = _STATUS_SOP_CLASS_NOT_SUPPORTED, "C-FIND is not configured"
        elif request is not None:
            final, comment = _STATUS_SUCCESS, None
            iterator: Iterator[tuple[int, Identifier | None]] | None = None
            try:
                assert self.on_find is not None
                iterator = iter(self.on_find(request))
                while True:
                    try:
                        item = next(iterator)
                    except StopIteration:
                        break
                    if self.cancel_requested(message_id):
                        final = _STATUS_CANCEL
                        break
                    status, identifier = int(item[0]), item[1]
                    if status not in (_STATUS_PENDING, _STATUS_PENDING_WARNING):
                        final = status
                        break
                    if identifier is None:
                        LOGGER.warning("on_find yielded a pending status without identifier")
                        continue
                    data = _encode_dataset(identifier, transfer_syntax)
                    self.raise_transport_error()
                    self.send_message(
                        context_id,
                        P.encode_response(P.C_FIND_RSP, message_id, model, None, status, has_data_set=True),
                        data,
                    )
                    matches += 1
            except (_ProtocolError, _PeerGone, _PeerAborted):
                raise
            except Exception:  # noqa: BLE001 - a failing query must not kill the association
                LOGGER.exception("C-FIND from %s failed; answering 0xC000", self.calling_ae)
                final, comment = _STATUS_UNABLE_TO_PROCESS, "unable to process"
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception:  # noqa: BLE001
                        LOGGER.exception("closing the on_find iterator failed")
            if final == _STATUS_SUCCESS and self.cancel_requested(message_id):
                final = _STATUS_CANCEL
        self.raise_transport_error()
        self.send_message(
            context_id, P.encode_response(P.C_FIND_RSP, message_id, model, None, final, comment)
        )
        elapsed = time.perf_counter() - started
        LOGGER.info(
            "C-FIND from %s: %d matches, status 0x%04X in %.1f ms",
            self.calling_ae,
            matches,
            final,
            elapsed * 1000,
        )
        self.emit(
            "find",
            {
                "calling_ae_title": self.calling_ae,
                "sop_class_uid": model,
                "status": final,
                "matches": matches,
                "seconds": elapsed,
            },
        )

    def handle_retrieve(self, command: _Command, context_id: int, fragments: list[memoryview]) -> None:
        started = time.perf_counter()
        is_get = command.command_field == P.C_GET_RQ
        name = "C-GET" if is_get else "C-MOVE"
        rsp_field = P.C_GET_RSP if is_get else P.C_MOVE_RSP
        message_id = command.message_id
        assert message_id is not None
        model = command.sop_class_uid or ""
        request, refusal, comment, transfer_syntax = self.qr_request(
            command, context_id, fragments, GET_MODELS if is_get else MOVE_MODELS
        )
        fragments.clear()

        def respond(
            status: int,
            counts: tuple[int | None, int, int, int] | None,
            comment: str | None = None,
            failed_uids: Sequence[str] = (),
        ) -> None:
            data = None
            if failed_uids:
                data = _failed_uid_list(failed_uids, transfer_syntax)
            self.raise_transport_error()
            self.send_message(
                context_id,
                P.encode_response(
                    rsp_field,
                    message_id,
                    model,
                    None,
                    status,
                    comment,
                    has_data_set=data is not None,
                    suboperations=counts,
                ),
                data,
            )

        def refuse(status: int, comment: str | None) -> None:
            LOGGER.info("%s from %s refused: 0x%04X %s", name, self.calling_ae, status, comment or "")
            respond(status, None, comment)
            self.emit(
                name[2:].lower(),
                {
                    "calling_ae_title": self.calling_ae,
                    "status": status,
                    "completed": 0,
                    "failed": 0,
                    "warning": 0,
                    "seconds": time.perf_counter() - started,
                },
            )

        if request is None:
            refuse(refusal, comment)
            return
        if self.on_retrieve is None:
            refuse(_STATUS_SOP_CLASS_NOT_SUPPORTED, f"{name} is not configured")
            return
        if not is_get and not request.move_destination:
            refuse(_STATUS_UNKNOWN_DESTINATION, "no Move Destination")
            return
        try:
            plan = self.on_retrieve(request)
            if isinstance(plan, tuple):
                status, comment = plan
                refuse(int(status), comment)
                return
            instances = list(plan.instances)
        except (_ProtocolError, _PeerGone, _PeerAborted):
            raise
        except Exception:  # noqa: BLE001
            LOGGER.exception("on_retrieve for %s from %s failed", name, self.calling_ae)
            refuse(_STATUS_UNABLE_TO_PROCESS, "unable to process")
            return
        total = len(instances)

        store: StoreAssociation | None = None
        if not is_get and total:
            destination = plan.destination
            if destination is None:
                refuse(_STATUS_UNKNOWN_DESTINATION, "move destination unknown")
                return
            host, port, ae_title = destination
            proposals = move_proposals(instances)
            if len(proposals) > _MAX_MOVE_CONTEXTS:
                LOGGER.warning(
                    "C-MOVE to %s needs %d presentation contexts; only %d proposed",
                    ae_title,
                    len(proposals),
                    _MAX_MOVE_CONTEXTS,
                )
            try:
                store = StoreAssociation.open(
                    host,
                    port,
                    ae_title,
                    self.config.ae_title,
                    proposals[:_MAX_MOVE_CONTEXTS],
                    connect_timeout=self.config.acse_timeout,
                    acse_timeout=self.config.acse_timeout,
                    dimse_timeout=self.config.dimse_timeout,
                    maximum_pdu_size=self.config.maximum_pdu_size,
                    implementation_class_uid=self.config.implementation_class_uid,
                    implementation_version_name=self.config.implementation_version_name,
                    tls=plan.destination_tls,
                )
            except (StoreAssociationError, ValueError, OSError) as exc:
                LOGGER.warning(
                    "C-MOVE from %s: cannot associate with %s at %s:%s: %s",
                    self.calling_ae,
                    ae_title,
                    host,
                    port,
                    exc,
                )
                refuse(_STATUS_UNKNOWN_DESTINATION, f"cannot associate with {ae_title}")
                return

        completed = failed = warning = 0
        failed_uids: list[str] = []
        cancelled = False
        done = 0
        try:
            for instance in instances:
                if self.cancel_requested(message_id):
                    cancelled = True
                    break
                if is_get:
                    outcome = self.get_sub_operation(instance)
                else:
                    assert store is not None
                    outcome = _move_sub_operation(
                        store, instance, self.sub_message_id(), self.calling_ae, message_id
                    )
                done += 1
                if outcome == _STATUS_SUCCESS:
                    completed += 1
                elif outcome is not None and outcome & 0xF000 == 0xB000:
                    warning += 1
                else:
                    failed += 1
                    failed_uids.append(instance.sop_instance_uid)
                    if store is not None and not store.is_open:
                        # The destination went away: the rest fail too.
                        rest = instances[done:]
                        failed += len(rest)
                        failed_uids.extend(i.sop_instance_uid for i in rest)
                        done = total
                        respond(_STATUS_PENDING, (0, completed, failed, warning))
                        break
                respond(_STATUS_PENDING, (total - done, completed, failed, warning))
        finally:
            if store is not None:
                store.release()
        if cancelled:
            final = _STATUS_CANCEL
            counts: tuple[int | None, int, int, int] = (total - done, completed, failed, warning)
        else:
            counts = (None, completed, failed, warning)
            if failed == 0 and warning == 0:
                final = _STATUS_SUCCESS
            elif completed == 0 and warning == 0:
                final = _STATUS_SUBOPS_FAILED
            else:
                final = _STATUS_SUBOPS_WARNING
        respond(final, counts, None, failed_uids)
        elapsed = time.perf_counter() - started
        LOGGER.info(
            "%s from %s%s: %d completed, %d failed, %d warning of %d; status 0x%04X in %.2f s",
            name,
            self.calling_ae,
            "" if is_get else f" to {request.move_destination}",
            completed,
            failed,
            warning,
            total,
            final,
            elapsed,
        )
        self.emit(
            name[2:].lower(),
            {
                "calling_ae_title": self.calling_ae,
                "status": final,
                "completed": completed,
                "failed": failed,
                "warning": warning,
                "seconds": elapsed,
            },
        )

    def sub_message_id(self) -> int:
        self.next_message_id = self.next_message_id % 0xFFFF + 1
        return self.next_message_id

    def get_sub_operation(self, instance: Sendable) -> int | None:
        """Send one C-STORE-RQ on this association; return its status (None = failed here)."""
        picked = _context_and_data(
            instance,
            lambda sop, ts: self.scu_contexts.get((sop, ts)),
            f"C-GET from {self.calling_ae}: no accepted context with SCU role",
        )
        if picked is None:
            return None
        context_id, data = picked
        message_id = self.sub_message_id()
        command = P.encode_store_rq(message_id, instance.sop_class_uid, instance.sop_instance_uid)
        try:
            if isinstance(data, FileRegion):
                if not self.send_region(context_id, command, instance, data):
                    return None
            else:
                self.raise_transport_error()
                self.send_message(context_id, command, data)
        finally:
            P.release_region(data)
            del data
        self.set_timeout(self.config.dimse_timeout)
        while message_id not in self.store_responses:
            self.receive_pdu()
        status, comment = self.store_responses.pop(message_id)
        if status != _STATUS_SUCCESS:
            LOGGER.warning(
                "C-GET sub-operation %s to %s: status 0x%04X %s",
                instance.sop_instance_uid,
                self.calling_ae,
                status,
                comment or "",
            )
        return status

    def send_region(self, context_id: int, command: bytes, instance: Sendable, region: FileRegion) -> bool:
        """Send a C-STORE-RQ whose data set lies in a file; False (logged) if it cannot be opened."""
        try:
            fd = P.open_region(region)
        except OSError as exc:
            LOGGER.warning("reading %s failed: %s", instance.sop_instance_uid, exc)
            return False
        try:
            self.raise_transport_error()
            self.set_timeout(self.config.dimse_timeout)
            P.send_file_message(self.sock, context_id, command, fd, region, self.peer_max_pdu)
        finally:
            os.close(fd)
        return True

    # -- the end -----------------------------------------------------------

    def counts(self) -> dict[str, object]:
        return {
            "calling_ae_title": self.calling_ae,
            "peer_host": self.host,
            "stores": self.stores,
            "echoes": self.echoes,
            "operations": self.operations,
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


def _context_and_data(
    instance: Sendable, lookup: Callable[[str, str], int | None], refusal: str
) -> tuple[int, EncodedDataSet] | None:
    """The first accepted context for the instance's syntaxes, and its data in that syntax.

    None (logged) when no syntax was accepted or the data cannot be read: the
    sub-operation then counts as failed.
    """
    for syntax in instance.syntaxes():
        context_id = lookup(instance.sop_class_uid, syntax)
        if context_id is not None:
            break
    else:
        LOGGER.warning(
            "%s for %s in %s; %s not sent",
            refusal,
            instance.sop_class_uid,
            " or ".join(instance.syntaxes()),
            instance.sop_instance_uid,
        )
        return None
    try:
        return context_id, instance.data_in(syntax)
    except Exception:  # noqa: BLE001 - a failed read fails this sub-operation only
        LOGGER.exception("reading %s failed", instance.sop_instance_uid)
        return None


def _context_outcome(
    result: PresentationContext, proposal: PresentationContext | None
) -> tuple[str, int, str | None, list[str] | None]:
    """(abstract syntax, result, accepted transfer syntax, proposed syntaxes if refused)."""
    code = int(result.result) if result.result is not None else 2
    accepted = str(result.transfer_syntax[0]) if code == 0 and result.transfer_syntax else None
    offered = None
    if code != 0 and proposal is not None:
        offered = [str(ts) for ts in proposal.transfer_syntax]
    return str(result.abstract_syntax or ""), code, accepted, offered


def _prefer_requestor_syntax(
    results: list[PresentationContext],
    proposed: Sequence[PresentationContext],
    config: FastPathConfig,
) -> None:
    """Accept a storage context in the requestor's first supported syntax when it is compressed.

    pynetdicom picks the acceptor's first preference, which puts the
    uncompressed syntaxes first. An archive keeps what it receives, so when
    the requestor puts a compressed syntax first, that is the better choice:
    a modality that proposes JPEG 2000 first sends what it holds instead of
    decompressing it, and a C-GET requestor that asks for it first (``getscu
    +xv``) gets JPEG 2000 objects without a transcode. Among the uncompressed
    syntaxes our own order stays (explicit, implicit, then big endian): DCMTK
    tools offer ``[big endian, implicit]`` as a secondary context and must get
    implicit VR little endian there, not big endian.
    """
    by_id = {cx.context_id: cx.transfer_syntax for cx in proposed}
    for context in results:
        if context.result != 0x00:
            continue
        ours = storage_syntaxes(config, str(context.abstract_syntax))
        if not ours:
            continue
        first = next((str(ts) for ts in by_id.get(context.context_id, ()) if ts in ours), None)
        if first is not None and first not in _UNCOMPRESSED:
            context.transfer_syntax = [UID(first)]


def move_proposals(instances: Sequence[Sendable]) -> list[tuple[str, list[str]]]:
    """Presentation contexts for a C-MOVE sub-association.

    Each stored (SOP class, transfer syntax) pair gets a context of its own,
    so a peer that takes the stored syntax gets the bytes as stored; each
    SOP class also gets one context with the uncompressed little-endian
    syntaxes its instances can be transcoded to, which every Storage SCP
    accepts (PS3.5 10.1). Fallback contexts come first, so that the cap of
    128 contexts drops a direct path rather than the only path.
    """
    stored: dict[tuple[str, str], None] = {}
    fallbacks: dict[str, dict[str, None]] = {}
    for i in instances:
        stored[(i.sop_class_uid, i.transfer_syntax_uid)] = None
        usable = fallbacks.setdefault(i.sop_class_uid, {})
        for ts in i.syntaxes():
            if ts in _UNCOMPRESSED_FALLBACKS:
                usable[ts] = None
    contexts: list[tuple[str, list[str]]] = []
    for sop, usable in fallbacks.items():
        # A syntax already proposed alone for this class needs no second context.
        rest: list[str] = [ts for ts in _UNCOMPRESSED_FALLBACKS if ts in usable and (sop, ts) not in stored]
        if rest:
            contexts.append((sop, rest))
    contexts.extend((sop, [ts]) for sop, ts in stored)
    return contexts


_UNCOMPRESSED_FALLBACKS: Final = (_EXPLICIT_VR_LE, _IMPLICIT_VR_LE)


def _move_sub_operation(
    store: StoreAssociation,
    instance: Sendable,
    message_id: int,
    originator_ae_title: str,
    originator_message_id: int,
) -> int | None:
    """Send one instance on the C-MOVE sub-association; return its status (None = failed)."""
    picked = _context_and_data(
        instance, store.accepted, f"C-MOVE to {store.called_ae_title}: not accepted"
    )
    if picked is None:
        return None
    context_id, data = picked
    try:
        status, comment = store.send_c_store(
            context_id,
            instance.sop_class_uid,
            instance.sop_instance_uid,
            data,
            message_id,
            originator_ae_title,
            originator_message_id,
        )
    except StoreAssociationError as exc:
        LOGGER.warning("C-MOVE to %s broke down: %s", store.called_ae_title, exc)
        return None
    except OSError as exc:  # a FileRegion that cannot be opened; nothing was sent
        LOGGER.warning("reading %s failed: %s", instance.sop_instance_uid, exc)
        return None
    if status != _STATUS_SUCCESS:
        LOGGER.warning(
            "C-MOVE sub-operation %s to %s: status 0x%04X %s",
            instance.sop_instance_uid,
            store.called_ae_title,
            status,
            comment or "",
        )
    return status


def _syntax_flags(transfer_syntax: str) -> tuple[bool, bool]:
    """(is_implicit_VR, is_little_endian) of an uncompressed transfer syntax."""
    return transfer_syntax == _IMPLICIT_VR_LE, transfer_syntax != _EXPLICIT_VR_BE


def _decode_dataset(fragments: list[memoryview], transfer_syntax: str) -> Dataset:
    """Decode an identifier completely (so that errors surface here)."""
    raw = bytes(fragments[0]) if len(fragments) == 1 else b"".join(fragments)
    implicit, little = _syntax_flags(transfer_syntax)
    dataset = read_dataset(BytesIO(raw), implicit, little)
    for _ in dataset:  # converts every raw element; raises on garbage
        pass
    return dataset


def _encode_dataset(dataset: Identifier, transfer_syntax: str) -> bytes:
    if not isinstance(dataset, Dataset):
        return dataset(transfer_syntax)
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = _syntax_flags(transfer_syntax)
    write_dataset(fp, dataset)
    return fp.getvalue()


def _failed_uid_list(uids: Sequence[str], transfer_syntax: str) -> bytes:
    """The *Failed SOP Instance UID List* identifier (kept under the 64 KiB value limit)."""
    kept: list[str] = []
    size = 0
    for uid in uids:
        size += len(uid) + 1
        if size > 65000:
            break
        kept.append(uid)
    identifier = Dataset()
    identifier.FailedSOPInstanceUIDList = kept
    return _encode_dataset(identifier, transfer_syntax)


def serve_association(
    sock: socket.socket,
    address: tuple[str, int],
    config: FastPathConfig,
    on_store: Callable[[StoreRequest], StoreOutcome],
    accept_association: Callable[[AssociationInfo], str | Rejection | None] = lambda info: None,
    on_event: Callable[[str, dict[str, object]], None] | None = None,
    *,
    on_find: FindCallback | None = None,
    on_retrieve: RetrieveCallback | None = None,
    on_n_action: Callable[[NActionRequest], NActionOutcome] | None = None,
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
        ``"released"``, ``"aborted"``, ``"store"``, ``"echo"``, ``"find"``,
        ``"get"`` or ``"move"`` and a dict of details; exceptions from it are
        logged and ignored.
    on_find : callable, optional
        C-FIND (needs ``config.query_retrieve``): called with the
        :class:`QueryRequest`; returns an iterator of ``(0xFF00, identifier)``
        per match, then optionally a final ``(status, None)`` (default
        success).  Identifiers are encoded in the context's transfer syntax.
        Between matches a C-CANCEL-RQ is looked for (answered 0xFE00 and the
        iterator closed).  An exception is logged and answered 0xC000.
    on_retrieve : callable, optional
        C-GET and C-MOVE: called with the :class:`QueryRequest`; returns a
        :class:`RetrievePlan` (for C-MOVE with its destination), or a
        ``(status, error comment)`` tuple to refuse (e.g. 0xA801 unknown
        destination, 0xA900 bad identifier).  Every :class:`Sendable` is a
        C-STORE sub-operation (on this association for C-GET, where the peer
        must have accepted the SCP role for its SOP class and transfer
        syntax; on a new association to the destination for C-MOVE); a
        pending response follows each one, then the final response: 0x0000,
        0xB000 (some failed or warned), 0xA702 (all failed), 0xFE00
        (cancelled), with the *Failed SOP Instance UID List* when any failed;
        0xA801 when the destination cannot be associated.  An exception from
        the callback is answered 0xC000.
    on_n_action : callable, optional
        Storage Commitment (needs ``config.storage_commitment``): called with
        the :class:`NActionRequest`; its :class:`NActionOutcome` gives the
        N-ACTION-RSP status and the N-EVENT-REPORT sent right after it.

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
        association = _Association(
            sock, address, config, on_store, accept_association, on_event, on_find, on_retrieve, on_n_action
        )
        if association.establish():
            association.run()
    except Exception:  # noqa: BLE001 - last line of defence for the listener thread
        LOGGER.exception("fast path association with %s failed unexpectedly", address)
    finally:
        try:
            sock.close()
        except OSError:
            pass
