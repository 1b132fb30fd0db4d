"""The transport under the DICOM upper layer: sockets, TLS, ``sendmsg`` and ``sendfile``.

Both sides of an association (the acceptor's :mod:`dicomhub.dimse.association`
and the requestor) move bytes through these functions: exact-length reads
into caller-owned buffers (``recv_into`` on a memoryview, no intermediate
copies), zero-copy sends of already framed PDUs with
:meth:`socket.socket.sendmsg`, and data sets that lie in a file
(:class:`FileRegion`) sent straight from the page cache with ``os.sendfile``.
Under TLS (:class:`ssl.SSLSocket`) the same calls fall back to ``sendall``
and ``pread``, since encryption copies the bytes anyway.

References
----------
PS3.8 Section 9.1 (TCP/IP transport), PS3.15 Annex B (DICOM TLS).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from dicomhub.dimse.pdu import (
    P_DATA_HEADERS,
    P_DATA_TF,
    REASON_NOT_SPECIFIED,
    UNLIMITED_FRAGMENT,
    ProtocolError,
    message_buffers,
)

__all__ = [
    "EncodedDataSet",
    "FileRegion",
    "PeerGone",
    "linger_close",
    "open_region",
    "recv_exact",
    "release_region",
    "send_buffers",
    "send_file_message",
]

LOGGER = logging.getLogger("dicomhub.dimse")

# sendmsg() takes at most IOV_MAX (1024 on Linux) buffers per call.
_IOV_BATCH: Final = 512
# Holds a PDU header back until its fragment follows (one segment, not two,
# despite TCP_NODELAY).  Linux only; elsewhere 0 (no flag).
_MSG_MORE: Final = getattr(socket, "MSG_MORE", 0)
# os.sendfile() errors that mean "not on this kind of file/socket": fall back
# to pread + send for the rest of the region.
_NO_SENDFILE: Final = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOTSOCK})
# After the last PDU of an association (A-RELEASE-RP, A-ABORT, A-ASSOCIATE-RJ)
# the requestor is the one that closes (PS3.8 ARTIM); closing first while its
# bytes are unread would turn our FIN into an RST that can destroy that PDU.
_LINGER_SECONDS: Final = 2.0
_LINGER_MAX_BYTES: Final = 1 << 20


class PeerGone(Exception):
    """The transport closed or failed; nothing more can be sent."""


@dataclass(frozen=True, slots=True)
class FileRegion:
    """A data set to send that lies in a file: `length` bytes from `offset`.

    Sent in P-DATA-TF PDUs straight from the file (``os.sendfile``), never
    read into memory as a whole.

    Attributes
    ----------
    path : str
        The file; opened just before the C-STORE-RQ goes out.
    offset, length : int
        Where the data set (no File Meta) starts in the file, and its size.
    delete_after : bool
        The file is a temporary one (e.g. a transcoded copy): it is unlinked
        once sent, and also when sending fails or is not attempted after
        the region was handed over.
    """

    path: str
    offset: int
    length: int
    delete_after: bool = False


#: A data set to send: in memory, or a region of a file.
EncodedDataSet = bytes | memoryview | FileRegion


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


def linger_close(sock: socket.socket) -> None:
    """Wait (briefly, the ARTIM timer) for the peer to close; the caller closes after.

    PS3.8 Sta13: after A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT it is the
    requestor that closes the connection. Sending our FIN at once made
    pynetdicom's requestor sometimes see the end of the stream before the
    PDU that preceded it.
    """
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
