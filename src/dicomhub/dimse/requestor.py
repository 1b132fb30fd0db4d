"""The requestor side of DIMSE: one blocking engine for every outgoing association.

One socket (``TCP_NODELAY``, optionally DICOM TLS), no threads, no event loop:
:meth:`Association.open` negotiates presentation contexts and SCP/SCU role
selection (PS3.7 D.3.3.4) with pynetdicom's PDU classes, then each request is
encoded with :func:`dicomhub.dimse.pdu.encode_request` and framed by the same
zero-copy code as the acceptor's responses (``sendmsg``; ``sendfile`` for a
:class:`~dicomhub.dimse.requests.FileRegion`).

What the peer sends while we wait for a response is served on the spot:

* C-STORE-RQ (the sub-operations of our C-GET, where we hold the Storage SCP
  role) goes to the ``on_c_store`` handler;
* N-EVENT-REPORT-RQ (a Storage Commitment report on the association of our
  N-ACTION) goes to ``on_n_event_report`` and is kept for
  :meth:`Association.wait_for_event_report`.

Services: C-ECHO, C-STORE, C-FIND (with C-CANCEL), C-GET, C-MOVE, N-EVENT-REPORT,
N-GET, N-SET, N-ACTION, N-CREATE, N-DELETE (PS3.7 9.3, 10.3).

Example
-------
>>> with Association.open("127.0.0.1", 11112, "PEER", "DICOMHUB",
...                       [(StudyRootFind, [ExplicitVRLittleEndian])]) as assoc:
...     for response in assoc.send_c_find(StudyRootFind, query):
...         print(response.status, response.dataset)
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext

from dicomhub.dimse import messages as M
from dicomhub.dimse import pdu as P
from dicomhub.dimse import transport as T
from dicomhub.dimse.requests import FileRegion
from dicomhub.dimse.responses import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
    EventReport,
    EventReportHandler,
    IncomingStore,
    Response,
    Responses,
    StoreHandler,
    encode_dataset,
)

__all__ = [
    "Association",
    "AssociationAborted",
    "AssociationError",
    "AssociationRejected",
    "EventReport",
    "IncomingStore",
    "Response",
    "Responses",
    "StoreHandler",
    "EventReportHandler",
]

LOGGER = logging.getLogger("dicomhub.dimse.requestor")

_APPLICATION_CONTEXT_NAME: Final = "1.2.840.10008.3.1.1.1"
_MAX_CONTEXTS: Final = 128
_MAX_AC_PDU: Final = 1 << 20
# Never allocate more than this for one incoming PDU, whatever the peer says.
_MAX_INCOMING_PDU: Final = 16 << 20
# The transfer syntax of a context the peer never accepted (its messages are refused).
_IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"


# PS3.8 Table 9-21: why an association was rejected, in words.
_REJECT_REASONS: Final[Mapping[tuple[int, int], str]] = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}


class AssociationError(Exception):
    """The association could not be established or broke down."""


class AssociationRejected(AssociationError):
    """The peer answered with A-ASSOCIATE-RJ.

    Attributes
    ----------
    result, source, diagnostic : int
        As in PS3.8 Table 9-21.
    """

    def __init__(self, result: int, source: int, diagnostic: int) -> None:
        words = _REJECT_REASONS.get((source, diagnostic), "reason unknown")
        kind = "permanently" if result == 1 else "transiently"
        super().__init__(
            f"association rejected {kind}: {words} "
            f"(result {result}, source {source}, diagnostic {diagnostic})"
        )
        self.result = result
        self.source = source
        self.diagnostic = diagnostic


class AssociationAborted(AssociationError):
    """The peer aborted, released, closed the connection, timed out or broke the protocol."""


class Association:
    """An established association on which dicomhub is the requestor.

    Create with :meth:`open`.  Not thread-safe; one request at a time (a
    :class:`Responses` must be drained or closed before the next request).

    Attributes
    ----------
    peer_max_pdu : int
        The peer's *Maximum Length Received* (0 = unlimited).
    called_ae_title, calling_ae_title : str
    on_c_store, on_n_event_report : callable or None
        Handlers for requests the peer sends us (see the module docstring).
    """

    def __init__(
        self,
        sock: socket.socket,
        called_ae_title: str,
        calling_ae_title: str,
        contexts: dict[int, tuple[str, str]],
        roles: dict[str, tuple[bool, bool]],
        peer_max_pdu: int,
        dimse_timeout: float,
    ) -> None:
        self.sock = sock
        self.called_ae_title = called_ae_title
        self.calling_ae_title = calling_ae_title
        self._contexts = contexts
        self._accepted = {pair: cid for cid, pair in sorted(contexts.items(), reverse=True)}
        self._roles = roles
        self.peer_max_pdu = peer_max_pdu
        self.dimse_timeout = dimse_timeout
        self.on_c_store: StoreHandler | None = None
        self.on_n_event_report: EventReportHandler | None = None
        self.event_reports: collections.deque[EventReport] = collections.deque()
        self._open = True
        self._next_id = 0
        self._last_context = min(contexts) if contexts else 1
        # SOP class -> the abstract syntax whose context carries it: the classes of a
        # meta SOP class (PS3.4 H.3.1: Basic Film Session on the Print Management
        # meta class's context) travel on the meta class's context.
        self.context_classes: dict[str, str] = {}

    # -- establishment -----------------------------------------------------

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        called_ae_title: str,
        calling_ae_title: str,
        contexts: Sequence[tuple[str, Sequence[str]]],
        *,
        roles: Mapping[str, tuple[bool, bool]] | None = None,
        connect_timeout: float = 10.0,
        acse_timeout: float = 30.0,
        dimse_timeout: float = 30.0,
        maximum_pdu_size: int = 262144,
        implementation_class_uid: str = "1.2.826.0.1.3680043.10.1419.1",
        implementation_version_name: str | None = "DICOMHUB_010",
        tls: ssl.SSLContext | None = None,
        on_c_store: StoreHandler | None = None,
        on_n_event_report: EventReportHandler | None = None,
    ) -> Association:
        """Connect and negotiate an association.

        Parameters
        ----------
        host, port : str, int
            The peer.
        called_ae_title, calling_ae_title : str
            AE titles for the A-ASSOCIATE-RQ (at most 16 characters).
        contexts : sequence of (str, sequence of str)
            One presentation context per item: abstract syntax and the
            transfer syntaxes proposed for it (at most 128 contexts).
        roles : mapping of str to (bool, bool), optional
            SCP/SCU Role Selection items to propose: SOP Class UID ->
            (SCU role, SCP role), e.g. ``{CTImageStorage: (False, True)}`` to
            receive C-GET sub-operations (PS3.7 D.3.3.4).
        connect_timeout, acse_timeout, dimse_timeout : float
            Seconds for the TCP connection, for the A-ASSOCIATE-AC, and for
            each response afterwards.
        maximum_pdu_size : int
            Our *Maximum Length Received* (0 = unlimited).
        tls : ssl.SSLContext or None
            DICOM TLS (PS3.15 B.1): the client context the connection is
            wrapped with before the A-ASSOCIATE-RQ, with `host` as the server
            name its certificate must carry; ``None``: plain TCP.
        on_c_store, on_n_event_report : callable, optional
            Handlers of the requests the peer may send on this association.

        Raises
        ------
        AssociationRejected
            On A-ASSOCIATE-RJ (the message says why in words).
        AssociationError
            When the connection is refused or times out, the TLS handshake
            fails (the message names the TLS error), the peer aborts or
            answers garbage.
        ValueError
            When `contexts` is empty or has more than 128 items.
        """
        if not contexts or len(contexts) > _MAX_CONTEXTS:
            raise ValueError(f"between 1 and {_MAX_CONTEXTS} presentation contexts required")
        request, proposed = _associate_rq(
            called_ae_title,
            calling_ae_title,
            contexts,
            roles or {},
            maximum_pdu_size,
            implementation_class_uid,
            implementation_version_name,
        )
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:
            raise AssociationError(f"cannot connect to {host}:{port}: {exc}") from exc
        if tls is not None:
            sock = _handshake(sock, tls, host, port)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(acse_timeout)
            sock.sendall(request)
            pdu_type, body = _read_pdu(sock, _MAX_AC_PDU)
            if pdu_type == P.A_ASSOCIATE_RJ:
                rj = A_ASSOCIATE_RJ()
                rj.decode(P.PDU_HEADER.pack(pdu_type, 0, len(body)) + body)
                _close(sock)
                raise AssociationRejected(
                    int(rj.result or 0), int(rj.source or 0), int(rj.reason_diagnostic or 0)
                )
            if pdu_type == P.A_ABORT:
                raise AssociationError(f"{host}:{port} aborted the association request")
            if pdu_type != P.A_ASSOCIATE_AC:
                raise AssociationError(f"unexpected PDU type 0x{pdu_type:02X} from {host}:{port}")
            ac_pdu = A_ASSOCIATE_AC()
            ac_pdu.decode(P.PDU_HEADER.pack(pdu_type, 0, len(body)) + body)
            ac = ac_pdu.to_primitive()
        except AssociationRejected:
            raise
        except AssociationError:
            _close(sock)
            raise
        except (OSError, T.PeerGone) as exc:
            _close(sock)
            raise AssociationError(f"association with {host}:{port} failed: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - pynetdicom's decoder raises anything
            _abort(sock)
            raise AssociationError(f"undecodable A-ASSOCIATE-AC from {host}:{port}: {exc!r}") from exc

        accepted: dict[int, tuple[str, str]] = {}
        for result in ac.presentation_context_definition_results_list:
            cid = result.context_id
            if result.result != 0x00 or cid not in proposed or not result.transfer_syntax:
                continue
            ts = str(result.transfer_syntax[0])
            abstract_syntax, offered = proposed[cid]
            if ts in offered:  # PS3.8 9.3.3.2: must be one we proposed
                accepted[cid] = (abstract_syntax, ts)
        # PS3.7 D.3.3.4: without a reply item the defaults hold (we are SCU only);
        # a reply cannot grant a role we did not propose.
        granted = {uid: (True, False) for uid in (roles or {})}
        for item in ac.user_information:
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid is not None:
                uid = str(item.sop_class_uid)
                scu, scp = (roles or {}).get(uid, (True, False))
                granted[uid] = (bool(item.scu_role) and scu, bool(item.scp_role) and scp)
        peer_max = int(ac.maximum_length_received or 0)
        LOGGER.debug(
            "associated with %s at %s:%s: %d of %d contexts accepted, peer max PDU %d",
            called_ae_title, host, port, len(accepted), len(proposed), peer_max,
        )  # fmt: skip
        assoc = cls(sock, called_ae_title, calling_ae_title, accepted, granted, peer_max, dimse_timeout)
        assoc.on_c_store = on_c_store
        assoc.on_n_event_report = on_n_event_report
        return assoc

    # -- what was negotiated ------------------------------------------------

    def accepted(self, sop_class_uid: str, transfer_syntax_uid: str) -> int | None:
        """Return the accepted presentation context ID for the pair, or ``None``."""
        return self._accepted.get((str(sop_class_uid), str(transfer_syntax_uid)))

    @property
    def accepted_contexts(self) -> dict[tuple[str, str], int]:
        """(abstract syntax, transfer syntax) -> context ID of every accepted context."""
        return dict(self._accepted)

    def context_for(self, sop_class_uid: str) -> tuple[int, str]:
        """(context ID, transfer syntax) of the first accepted context of `sop_class_uid`.

        Raises
        ------
        AssociationError
            When the peer accepted no context for it.
        """
        wanted = self.context_classes.get(str(sop_class_uid), str(sop_class_uid))
        for cid, (abstract_syntax, ts) in sorted(self._contexts.items()):
            if abstract_syntax == wanted:
                return cid, ts
        raise AssociationError(f"{self.called_ae_title} accepted no presentation context for {sop_class_uid}")

    def role(self, sop_class_uid: str) -> tuple[bool, bool]:
        """(SCU role, SCP role) we hold for `sop_class_uid` after role selection."""
        return self._roles.get(str(sop_class_uid), (True, False))

    @property
    def is_open(self) -> bool:
        return self._open

    def _message_id(self) -> int:
        self._next_id = self._next_id % 0xFFFF + 1
        return self._next_id

    # -- C-ECHO, C-STORE ----------------------------------------------------

    def send_c_echo(self, sop_class_uid: str = "1.2.840.10008.1.1") -> int:
        """Send C-ECHO-RQ; return the response's Status."""
        return self._request(sop_class_uid, M.C_ECHO_RQ, M.C_ECHO_RSP, None, affected=True).status

    def send_c_store(
        self,
        context_id: int,
        sop_class_uid: str,
        sop_instance_uid: str,
        dataset: bytes | memoryview | FileRegion,
        message_id: int,
        move_originator_ae_title: str | None = None,
        move_originator_message_id: int | None = None,
    ) -> tuple[int, str | None]:
        """Send one C-STORE-RQ and its data set; wait for the C-STORE-RSP.

        Parameters
        ----------
        dataset : bytes, memoryview or FileRegion
            The encoded data set (no File Meta) in the context's transfer
            syntax; sent without copying, and for a :class:`FileRegion`
            straight from the file (never read whole).  A region marked
            ``delete_after`` is unlinked before this returns or raises,
            whatever happened.

        Returns
        -------
        tuple of (int, str or None)
            The response's *Status* and *Error Comment*.

        Raises
        ------
        AssociationAborted
            When the peer aborts, closes, times out or breaks the protocol;
            the association is then closed (an A-ABORT is sent when possible).
        OSError
            The region's file cannot be opened or is shorter than the region:
            nothing was sent and the association is still usable.
        """
        try:
            if not self._open:
                raise AssociationAborted("the association is closed")
            # Opened before anything is sent: a missing file fails this
            # store only, not the association.
            fd = T.open_region(dataset) if isinstance(dataset, FileRegion) else -1
            try:
                command = M.encode_store_rq(
                    message_id,
                    sop_class_uid,
                    sop_instance_uid,
                    move_originator_ae_title,
                    move_originator_message_id,
                )
                with self._failing():
                    self.sock.settimeout(self.dimse_timeout)
                    if isinstance(dataset, FileRegion):
                        T.send_file_message(self.sock, context_id, command, fd, dataset, self.peer_max_pdu)
                    else:
                        T.send_buffers(
                            self.sock, P.message_buffers(context_id, command, dataset, self.peer_max_pdu)
                        )
                rsp = self._await_response(message_id, M.C_STORE_RSP)
                return rsp.status, rsp.error_comment
            finally:
                if fd >= 0:
                    os.close(fd)
        finally:
            T.release_region(dataset)

    # -- C-FIND, C-GET, C-MOVE ---------------------------------------------

    def send_c_find(self, sop_class_uid: str, identifier: Dataset, priority: int = 0) -> Responses:
        """Send C-FIND-RQ; iterate the responses (pending ones carry the matches)."""
        return self._retrieve(sop_class_uid, M.C_FIND_RQ, M.C_FIND_RSP, identifier, priority)

    def send_c_get(
        self,
        sop_class_uid: str,
        identifier: Dataset,
        priority: int = 0,
        on_c_store: StoreHandler | None = None,
    ) -> Responses:
        """Send C-GET-RQ; iterate the responses while the sub-operations arrive.

        The C-STORE-RQs of the sub-operations come on this association and go
        to `on_c_store` (or the association's handler): propose their storage
        contexts and the SCP role for their classes in :meth:`open`.
        """
        if on_c_store is not None:
            self.on_c_store = on_c_store
        return self._retrieve(sop_class_uid, M.C_GET_RQ, M.C_GET_RSP, identifier, priority)

    def send_c_move(
        self, sop_class_uid: str, identifier: Dataset, move_destination: str, priority: int = 0
    ) -> Responses:
        """Send C-MOVE-RQ to `move_destination`; iterate the responses."""
        return self._retrieve(
            sop_class_uid, M.C_MOVE_RQ, M.C_MOVE_RSP, identifier, priority, move_destination=move_destination
        )

    def _retrieve(
        self,
        sop_class_uid: str,
        request_field: int,
        response_field: int,
        identifier: Dataset,
        priority: int,
        move_destination: str | None = None,
    ) -> Responses:
        cid, ts = self.context_for(sop_class_uid)
        message_id = self._message_id()
        command = M.encode_request(
            request_field,
            message_id,
            affected_sop_class_uid=sop_class_uid,
            has_data_set=True,
            priority=priority,
            move_destination=move_destination,
        )
        self._send_command(cid, command, encode_dataset(identifier, ts))
        return Responses(self, message_id, response_field)

    # -- DIMSE-N ------------------------------------------------------------

    def send_n_event_report(
        self, sop_class_uid: str, sop_instance_uid: str, event_type_id: int, information: Dataset | None
    ) -> Response:
        """N-EVENT-REPORT-RQ with the Event Information; the response (Event Reply in ``dataset``)."""
        return self._request(
            sop_class_uid, M.N_EVENT_REPORT_RQ, M.N_EVENT_REPORT_RSP, information,
            affected=True, sop_instance_uid=sop_instance_uid, event_type_id=event_type_id,
        )  # fmt: skip

    def send_n_get(
        self, sop_class_uid: str, sop_instance_uid: str, attribute_identifier_list: Sequence[int] = ()
    ) -> Response:
        """N-GET-RQ for some attributes (tags as ``0xGGGGEEEE``; none: all).

        The response's ``dataset`` is the Attribute List.
        """
        return self._request(
            sop_class_uid, M.N_GET_RQ, M.N_GET_RSP, None,
            sop_instance_uid=sop_instance_uid, attribute_identifier_list=attribute_identifier_list,
        )  # fmt: skip

    def send_n_set(self, sop_class_uid: str, sop_instance_uid: str, modification: Dataset) -> Response:
        """N-SET-RQ with the Modification List; the response."""
        return self._request(
            sop_class_uid, M.N_SET_RQ, M.N_SET_RSP, modification, sop_instance_uid=sop_instance_uid
        )

    def send_n_action(
        self, sop_class_uid: str, sop_instance_uid: str, action_type_id: int, information: Dataset | None
    ) -> Response:
        """N-ACTION-RQ with the Action Information; the response (Action Reply in ``dataset``)."""
        return self._request(
            sop_class_uid, M.N_ACTION_RQ, M.N_ACTION_RSP, information,
            sop_instance_uid=sop_instance_uid, action_type_id=action_type_id,
        )  # fmt: skip

    def send_n_create(
        self, sop_class_uid: str, sop_instance_uid: str | None, attributes: Dataset | None
    ) -> Response:
        """N-CREATE-RQ; without an instance UID the peer assigns one (the response's
        Affected SOP Instance UID)."""
        return self._request(
            sop_class_uid,
            M.N_CREATE_RQ,
            M.N_CREATE_RSP,
            attributes,
            affected=True,
            sop_instance_uid=sop_instance_uid,
        )

    def send_n_delete(self, sop_class_uid: str, sop_instance_uid: str) -> Response:
        """N-DELETE-RQ; the response."""
        return self._request(
            sop_class_uid, M.N_DELETE_RQ, M.N_DELETE_RSP, None, sop_instance_uid=sop_instance_uid
        )

    def wait_for_event_report(self, timeout: float) -> EventReport | None:
        """The next N-EVENT-REPORT the peer sends (served on arrival), or None after `timeout` s.

        Raises
        ------
        AssociationAborted
            The peer aborted, released or broke the protocol meanwhile.
        """
        deadline = time.monotonic() + timeout
        while not self.event_reports:
            left = deadline - time.monotonic()
            if left <= 0 or not self._open:
                return None
            try:
                self._serve_one(left)
            except TimeoutError:
                return None
        return self.event_reports.popleft()

    def _request(
        self,
        sop_class_uid: str,
        request_field: int,
        response_field: int,
        dataset: Dataset | None,
        *,
        affected: bool = False,
        sop_instance_uid: str | None = None,
        event_type_id: int | None = None,
        action_type_id: int | None = None,
        attribute_identifier_list: Sequence[int] | None = None,
    ) -> Response:
        """One request with a single response (C-ECHO and DIMSE-N)."""
        cid, ts = self.context_for(sop_class_uid)
        message_id = self._message_id()
        # PS3.7 10.3: Affected SOP Class/Instance for N-EVENT-REPORT and N-CREATE,
        # Requested SOP Class/Instance for N-GET, N-SET, N-ACTION, N-DELETE.
        command = M.encode_request(
            request_field,
            message_id,
            affected_sop_class_uid=sop_class_uid if affected else None,
            requested_sop_class_uid=None if affected else sop_class_uid,
            affected_sop_instance_uid=sop_instance_uid if affected else None,
            requested_sop_instance_uid=None if affected else sop_instance_uid,
            has_data_set=dataset is not None,
            event_type_id=event_type_id,
            action_type_id=action_type_id,
            attribute_identifier_list=attribute_identifier_list,
        )
        self._send_command(cid, command, None if dataset is None else encode_dataset(dataset, ts))
        return self._await_response(message_id, response_field)

    # -- the message loop ---------------------------------------------------

    def _send_command(self, context_id: int, command: bytes, dataset: bytes | None) -> None:
        if not self._open:
            raise AssociationAborted("the association is closed")
        self._last_context = context_id
        with self._failing():
            self.sock.settimeout(self.dimse_timeout)
            T.send_buffers(self.sock, P.message_buffers(context_id, command, dataset, self.peer_max_pdu))

    def _await_response(self, message_id: int, response_field: int) -> Response:
        """Serve what the peer sends until the response to `message_id` comes."""
        if not self._open:
            raise AssociationAborted("the association is closed")
        while True:
            with self._failing():
                cid, command, data = self._receive(self.dimse_timeout)
            if not command.command_field & 0x8000:
                self._serve(cid, command, data)
                continue
            if command.command_field != response_field:
                self.abort()
                raise AssociationAborted(
                    f"protocol error from {self.called_ae_title}: "
                    f"unexpected command 0x{command.command_field:04X}"
                )
            if command.message_id_responded_to != message_id & 0xFFFF:
                LOGGER.warning(
                    "response to message %s while waiting for %s; ignored",
                    command.message_id_responded_to,
                    message_id,
                )
                continue
            if command.status is None:
                self.abort()
                raise AssociationAborted(
                    f"protocol error from {self.called_ae_title}: a response without Status"
                )
            return Response(command, data, self._contexts.get(cid, ("", _IMPLICIT_VR_LE))[1])

    def _serve_one(self, timeout: float) -> None:
        """Receive and serve one request of the peer (TimeoutError if none comes)."""
        try:
            with self._failing(timeouts=False):
                cid, command, data = self._receive(timeout)
        except TimeoutError:
            raise
        if command.command_field & 0x8000:
            LOGGER.warning("unsolicited response 0x%04X ignored", command.command_field)
            return
        self._serve(cid, command, data)

    def _serve(self, cid: int, command: M.Command, data: bytes | None) -> None:
        """Answer a request of the peer: C-STORE-RQ, N-EVENT-REPORT-RQ; anything else aborts."""
        ts = self._contexts.get(cid, ("", _IMPLICIT_VR_LE))[1]
        field, message_id = command.command_field, command.message_id or 0
        sop_class, sop_instance = command.sop_class_uid or "", command.sop_instance_uid or ""
        if field == M.C_STORE_RQ and data is not None:
            incoming = IncomingStore(sop_class, sop_instance, ts, data, command.move_originator_ae_title)
            status = self._call(self.on_c_store, incoming, "C-STORE")
            rsp = M.encode_response(M.C_STORE_RSP, message_id, sop_class, sop_instance, status)
        elif field == M.N_EVENT_REPORT_RQ:
            report = EventReport(sop_class, sop_instance, command.event_type_id or 0, data, ts)
            status = (
                self._call(self.on_n_event_report, report, "N-EVENT-REPORT") if self.on_n_event_report else 0
            )
            if status == STATUS_SUCCESS:
                self.event_reports.append(report)
            rsp = M.encode_response(M.N_EVENT_REPORT_RSP, message_id, sop_class, sop_instance, status)
        else:
            self.abort()
            raise AssociationAborted(
                f"{self.called_ae_title} sent request 0x{field:04X}, which this association does not serve"
            )
        self._send_command(cid, rsp, None)

    def _call(self, handler: Callable[[IncomingStore], int] | Callable[[EventReport], int] | None,
              request: IncomingStore | EventReport, what: str) -> int:  # fmt: skip
        if handler is None:
            LOGGER.warning("%s from %s refused: no handler on this association", what, self.called_ae_title)
            return STATUS_CANNOT_UNDERSTAND
        try:
            return int(handler(request))  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - a failed handler fails this request only
            LOGGER.exception("%s handler failed", what)
            return STATUS_CANNOT_UNDERSTAND if what == "C-STORE" else STATUS_PROCESSING_FAILURE

    def _receive(self, timeout: float) -> tuple[int, M.Command, bytes | None]:
        """Read PDUs until one whole message: (context ID, command set, data set or None)."""
        self.sock.settimeout(timeout)
        fragments: list[bytes] = []
        data: list[bytes] = []
        command: M.Command | None = None
        while True:
            pdu_type, body = _read_pdu(self.sock, _MAX_INCOMING_PDU)
            if pdu_type == P.A_ABORT:
                self._open = False
                _close(self.sock)
                raise T.PeerGone("A-ABORT from peer")
            if pdu_type == P.A_RELEASE_RQ:
                self._open = False
                try:
                    self.sock.sendall(P.RELEASE_RP_PDU)
                finally:
                    _close(self.sock)
                raise T.PeerGone("the peer released the association")
            if pdu_type != P.P_DATA_TF:
                raise P.ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}")
            pos, end = 0, len(body)
            while pos < end:
                if end - pos < 6:
                    raise P.ProtocolError("truncated PDV item")
                length, cid, control = P.PDV_HEADER.unpack_from(body, pos)
                item_end = pos + 4 + length
                if length < 2 or item_end > end:
                    raise P.ProtocolError(f"PDV item length {length} invalid")
                if control & 0x01:
                    fragments.append(body[pos + 6 : item_end])
                    if control & 0x02:
                        command = M.parse_command(b"".join(fragments))
                        if not command.has_data_set:
                            return cid, command, None
                elif command is None:
                    raise P.ProtocolError("a data set PDV before its command")
                else:
                    data.append(body[pos + 6 : item_end])
                    if control & 0x02:
                        return cid, command, b"".join(data)
                pos = item_end

    def _failing(self, timeouts: bool = True) -> _Failing:
        return _Failing(self, timeouts)

    # -- the end -----------------------------------------------------------

    def release(self, timeout: float | None = None) -> None:
        """Send A-RELEASE-RQ, wait for A-RELEASE-RP (best effort), close."""
        if not self._open:
            return
        self._open = False
        sock = self.sock
        wait = self.dimse_timeout if timeout is None else timeout
        try:
            sock.settimeout(wait)
            sock.sendall(P.RELEASE_RQ_PDU)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                pdu_type, _ = _read_pdu(sock, _MAX_INCOMING_PDU)
                if pdu_type in (P.A_RELEASE_RP, P.A_ABORT):
                    break
                if pdu_type == P.A_RELEASE_RQ:  # release collision: answer and finish
                    sock.sendall(P.RELEASE_RP_PDU)
                    break
        except (OSError, T.PeerGone, P.ProtocolError):
            pass
        _close(sock)

    def abort(self) -> None:
        """Send A-ABORT (source 0 = service user) and close; never raises."""
        if not self._open:
            return
        self._open = False
        _abort(self.sock)

    def __enter__(self) -> Association:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.release()
        else:
            self.abort()


class _Failing:
    """Turns transport and protocol failures into AssociationAborted (after an A-ABORT)."""

    def __init__(self, assoc: Association, timeouts: bool) -> None:
        self.assoc = assoc
        self.timeouts = timeouts

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        if exc is None:
            return
        name = self.assoc.called_ae_title
        if isinstance(exc, P.ProtocolError):
            self.assoc.abort()
            raise AssociationAborted(f"protocol error from {name}: {exc}") from exc
        if isinstance(exc, TimeoutError) and not self.timeouts:
            return  # the caller's own deadline (raised on)
        if isinstance(exc, T.PeerGone | TimeoutError | OSError):
            self.assoc.abort()
            raise AssociationAborted(f"association with {name} failed: {exc or type(exc).__name__}") from exc


def _associate_rq(
    called_ae_title: str,
    calling_ae_title: str,
    contexts: Sequence[tuple[str, Sequence[str]]],
    roles: Mapping[str, tuple[bool, bool]],
    maximum_pdu_size: int,
    implementation_class_uid: str,
    implementation_version_name: str | None,
) -> tuple[bytes, dict[int, tuple[str, Sequence[str]]]]:
    """The encoded A-ASSOCIATE-RQ PDU and context ID -> (abstract syntax, proposed syntaxes)."""
    rq = A_ASSOCIATE()
    rq.application_context_name = UID(_APPLICATION_CONTEXT_NAME)
    rq.calling_ae_title = calling_ae_title
    rq.called_ae_title = called_ae_title
    proposed: dict[int, tuple[str, Sequence[str]]] = {}
    definitions = []
    for index, (abstract_syntax, transfer_syntaxes) in enumerate(contexts):
        context = PresentationContext()
        context.context_id = 2 * index + 1
        context.abstract_syntax = UID(abstract_syntax)
        context.transfer_syntax = [UID(ts) for ts in transfer_syntaxes]
        definitions.append(context)
        proposed[2 * index + 1] = (str(abstract_syntax), [str(t) for t in transfer_syntaxes])
    rq.presentation_context_definition_list = definitions
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = maximum_pdu_size
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = UID(implementation_class_uid)
    user_info: list[object] = [max_length, class_uid]
    if implementation_version_name:
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = implementation_version_name
        user_info.append(version)
    for sop_class_uid, (scu, scp) in roles.items():
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = UID(sop_class_uid)
        role.scu_role = scu
        role.scp_role = scp
        user_info.append(role)
    rq.user_information = user_info  # type: ignore[assignment]
    return A_ASSOCIATE_RQ(rq).encode(), proposed


def _handshake(sock: socket.socket, context: ssl.SSLContext, host: str, port: int) -> ssl.SSLSocket:
    """``sock`` after the TLS handshake (within its connect timeout), the peer's
    certificate verified against ``host``; AssociationError naming the TLS
    error (an untrusted certificate, a peer that does not speak TLS) otherwise."""
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        _close(sock)
        raise AssociationError(
            f"TLS handshake with {host}:{port} failed: certificate not trusted: {exc.verify_message}"
        ) from exc
    except (OSError, ssl.SSLError) as exc:
        _close(sock)
        raise AssociationError(f"TLS handshake with {host}:{port} failed: {exc}") from exc


def _read_pdu(sock: socket.socket, limit: int) -> tuple[int, bytes]:
    header = bytearray(6)
    T.recv_exact(sock, memoryview(header))
    pdu_type, _, length = P.PDU_HEADER.unpack(header)
    if length > limit:
        raise P.ProtocolError(f"PDU of {length} bytes is too large")
    body = bytearray(length)
    T.recv_exact(sock, memoryview(body))
    return pdu_type, bytes(body)


def _abort(sock: socket.socket) -> None:
    try:
        sock.settimeout(2.0)
        sock.sendall(P.PDU_HEADER.pack(P.A_ABORT, 0, 4) + b"\x00\x00\x00\x00")
    except OSError:
        pass
    _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
