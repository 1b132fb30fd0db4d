"""A minimal blocking Storage SCU, used for C-MOVE sub-operations.

One socket, no threads, no event loop: :meth:`StoreAssociation.open`
negotiates (A-ASSOCIATE-RQ/-AC encoded and decoded with pynetdicom's PDU
classes), :meth:`StoreAssociation.send_c_store` sends one C-STORE-RQ plus its
data set (zero-copy, fragmented to the peer's maximum PDU length; from a file
with ``sendfile`` for a :class:`~dicomhub.dimse.requests.FileRegion`) and waits
for the C-STORE-RSP; :meth:`~StoreAssociation.release` /
:meth:`~StoreAssociation.abort` end it.  ``TCP_NODELAY`` is always on.

Example
-------
>>> assoc = StoreAssociation.open("127.0.0.1", 11112, "STORESCP", "DICOMHUB",
...                               [(CTImageStorage, [ExplicitVRLittleEndian])])
>>> cid = assoc.accepted(CTImageStorage, ExplicitVRLittleEndian)
>>> status, comment = assoc.send_c_store(cid, CTImageStorage, uid, data, 1)
>>> assoc.release()
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Final

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from dicomhub.dimse import messages as M
from dicomhub.dimse import pdu as P
from dicomhub.dimse import transport as T
from dicomhub.dimse.requests import FileRegion

__all__ = [
    "AssociationAborted",
    "AssociationRejected",
    "StoreAssociation",
    "StoreAssociationError",
]

LOGGER = logging.getLogger("dicomhub.dimse.scu")

_APPLICATION_CONTEXT_NAME: Final = "1.2.840.10008.3.1.1.1"
_MAX_CONTEXTS: Final = 128
_MAX_AC_PDU: Final = 1 << 20
# Never allocate more than this for one incoming PDU, whatever the peer says.
_MAX_INCOMING_PDU: Final = 16 << 20


class StoreAssociationError(Exception):
    """The association could not be established or broke down."""


class AssociationRejected(StoreAssociationError):
    """The peer answered with A-ASSOCIATE-RJ.

    Attributes
    ----------
    result, source, diagnostic : int
        As in PS3.8 Table 9-21.
    """

    def __init__(self, result: int, source: int, diagnostic: int) -> None:
        super().__init__(f"association rejected (result {result}, source {source}, diagnostic {diagnostic})")
        self.result = result
        self.source = source
        self.diagnostic = diagnostic


class AssociationAborted(StoreAssociationError):
    """The peer aborted, closed the connection, or broke the protocol."""


class StoreAssociation:
    """An established association on which we are the Storage SCU.

    Create with :meth:`open`.  Not thread-safe; one request at a time.

    Attributes
    ----------
    peer_max_pdu : int
        The peer's *Maximum Length Received* (0 = unlimited).
    called_ae_title, calling_ae_title : str
    """

    def __init__(
        self,
        sock: socket.socket,
        called_ae_title: str,
        calling_ae_title: str,
        accepted: dict[tuple[str, str], int],
        peer_max_pdu: int,
        dimse_timeout: float,
    ) -> None:
        self.sock = sock
        self.called_ae_title = called_ae_title
        self.calling_ae_title = calling_ae_title
        self._accepted = accepted
        self.peer_max_pdu = peer_max_pdu
        self.dimse_timeout = dimse_timeout
        self._open = True

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
        connect_timeout: float = 10.0,
        acse_timeout: float = 30.0,
        dimse_timeout: float = 30.0,
        maximum_pdu_size: int = 262144,
        implementation_class_uid: str = "1.2.826.0.1.3680043.10.1419.1",
        implementation_version_name: str | None = "DICOMHUB_010",
        tls: ssl.SSLContext | None = None,
    ) -> StoreAssociation:
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
        connect_timeout, acse_timeout, dimse_timeout : float
            Seconds for the TCP connection, for the A-ASSOCIATE-AC, and for
            each response afterwards.
        maximum_pdu_size : int
            Our *Maximum Length Received* (0 = unlimited).
        tls : ssl.SSLContext or None
            DICOM TLS (PS3.15 B.1): the client context the connection is
            wrapped with before the A-ASSOCIATE-RQ, with `host` as the server
            name its certificate must carry; ``None``: plain TCP.

        Raises
        ------
        AssociationRejected
            On A-ASSOCIATE-RJ.
        StoreAssociationError
            When the connection is refused or times out, the TLS handshake
            fails (the message names the TLS error), the peer aborts or
            answers garbage.
        ValueError
            When `contexts` is empty or has more than 128 items.
        """
        if not contexts or len(contexts) > _MAX_CONTEXTS:
            raise ValueError(f"between 1 and {_MAX_CONTEXTS} presentation contexts required")
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
        rq.user_information = user_info  # type: ignore[assignment]
        request = A_ASSOCIATE_RQ(rq).encode()

        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:
            raise StoreAssociationError(f"cannot connect to {host}:{port}: {exc}") from exc
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
                raise StoreAssociationError(f"{host}:{port} aborted the association request")
            if pdu_type != P.A_ASSOCIATE_AC:
                raise StoreAssociationError(f"unexpected PDU type 0x{pdu_type:02X}")
            ac_pdu = A_ASSOCIATE_AC()
            ac_pdu.decode(P.PDU_HEADER.pack(pdu_type, 0, len(body)) + body)
            ac = ac_pdu.to_primitive()
        except AssociationRejected:
            raise
        except StoreAssociationError:
            _close(sock)
            raise
        except (OSError, T.PeerGone) as exc:
            _close(sock)
            raise StoreAssociationError(f"association with {host}:{port} failed: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - pynetdicom's decoder raises anything
            _abort(sock)
            raise StoreAssociationError(f"undecodable A-ASSOCIATE-AC: {exc!r}") from exc

        accepted: dict[tuple[str, str], int] = {}
        for result in ac.presentation_context_definition_results_list:
            cid = result.context_id
            if result.result != 0x00 or cid not in proposed or not result.transfer_syntax:
                continue
            ts = str(result.transfer_syntax[0])
            abstract_syntax, offered = proposed[cid]
            if ts not in offered:
                continue  # PS3.8 9.3.3.2: must be one we proposed
            accepted.setdefault((abstract_syntax, ts), cid)
        peer_max = int(ac.maximum_length_received or 0)
        LOGGER.debug(
            "associated with %s at %s:%s: %d of %d contexts accepted, peer max PDU %d",
            called_ae_title,
            host,
            port,
            len(accepted),
            len(proposed),
            peer_max,
        )
        return cls(sock, called_ae_title, calling_ae_title, accepted, peer_max, dimse_timeout)

    # -- use ---------------------------------------------------------------

    def accepted(self, sop_class_uid: str, transfer_syntax_uid: str) -> int | None:
        """Return the accepted presentation context ID for the pair, or ``None``."""
        return self._accepted.get((str(sop_class_uid), str(transfer_syntax_uid)))

    @property
    def accepted_contexts(self) -> dict[tuple[str, str], int]:
        """(abstract syntax, transfer syntax) -> context ID of every accepted context."""
        return dict(self._accepted)

    @property
    def is_open(self) -> bool:
        return self._open

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
                return self._c_store(
                    context_id,
                    M.encode_store_rq(
                        message_id,
                        sop_class_uid,
                        sop_instance_uid,
                        move_originator_ae_title,
                        move_originator_message_id,
                    ),
                    dataset,
                    fd,
                    message_id,
                )
            finally:
                if fd >= 0:
                    os.close(fd)
        finally:
            T.release_region(dataset)

    def _c_store(
        self,
        context_id: int,
        command: bytes,
        dataset: bytes | memoryview | FileRegion,
        fd: int,
        message_id: int,
    ) -> tuple[int, str | None]:
        try:
            self.sock.settimeout(self.dimse_timeout)
            if isinstance(dataset, FileRegion):
                T.send_file_message(self.sock, context_id, command, fd, dataset, self.peer_max_pdu)
            else:
                T.send_buffers(self.sock, P.message_buffers(context_id, command, dataset, self.peer_max_pdu))
            while True:
                rsp = self._read_command()
                if rsp.command_field != M.C_STORE_RSP:
                    raise P.ProtocolError(f"unexpected command 0x{rsp.command_field:04X}")
                if rsp.message_id_responded_to != (message_id & 0xFFFF):
                    LOGGER.warning(
                        "C-STORE-RSP for message %s while waiting for %s; ignored",
                        rsp.message_id_responded_to,
                        message_id,
                    )
                    continue
                if rsp.status is None:
                    raise P.ProtocolError("C-STORE-RSP without Status")
                return rsp.status, rsp.error_comment
        except P.ProtocolError as exc:
            self.abort()
            raise AssociationAborted(f"protocol error from {self.called_ae_title}: {exc}") from exc
        except (T.PeerGone, TimeoutError, OSError) as exc:
            self.abort()
            raise AssociationAborted(
                f"association with {self.called_ae_title} failed: {exc or type(exc).__name__}"
            ) from exc

    def _read_command(self) -> M.Command:
        """Read PDUs until one complete command set (skipping any data set after it)."""
        fragments: list[bytes] = []
        done: M.Command | None = None
        while True:
            pdu_type, body = _read_pdu(self.sock, _MAX_INCOMING_PDU)
            if pdu_type == P.A_ABORT:
                self._open = False
                _close(self.sock)
                raise T.PeerGone("A-ABORT from peer")
            if pdu_type != P.P_DATA_TF:
                raise P.ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}")
            pos, end = 0, len(body)
            while pos < end:
                if end - pos < 6:
                    raise P.ProtocolError("truncated PDV item")
                length, _cid, control = P.PDV_HEADER.unpack_from(body, pos)
                item_end = pos + 4 + length
                if length < 2 or item_end > end:
                    raise P.ProtocolError(f"PDV item length {length} invalid")
                if control & 0x01:
                    fragments.append(body[pos + 6 : item_end])
                    if control & 0x02:
                        done = M.parse_command(b"".join(fragments))
                        fragments = []
                        if not done.has_data_set:
                            return done
                elif done is not None and control & 0x02:
                    return done  # a response data set we do not need
                pos = item_end

    # -- the end -----------------------------------------------------------

    def release(self, timeout: float | None = None) -> None:
        """Send A-RELEASE-RQ, wait for A-RELEASE-RP (best effort), close."""
        if not self._open:
            return
        self._open = False
        sock = self.sock
        try:
            sock.settimeout(self.dimse_timeout if timeout is None else timeout)
            sock.sendall(P.RELEASE_RQ_PDU)
            deadline = time.monotonic() + (self.dimse_timeout if timeout is None else timeout)
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

    def __enter__(self) -> StoreAssociation:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.release()
        else:
            self.abort()


def _handshake(sock: socket.socket, context: ssl.SSLContext, host: str, port: int) -> ssl.SSLSocket:
    """``sock`` after the TLS handshake (within its connect timeout), the peer's
    certificate verified against ``host``; StoreAssociationError naming the TLS
    error (an untrusted certificate, a peer that does not speak TLS) otherwise."""
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        _close(sock)
        raise StoreAssociationError(
            f"TLS handshake with {host}:{port} failed: certificate not trusted: {exc.verify_message}"
        ) from exc
    except (OSError, ssl.SSLError) as exc:
        _close(sock)
        raise StoreAssociationError(f"TLS handshake with {host}:{port} failed: {exc}") from exc


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
