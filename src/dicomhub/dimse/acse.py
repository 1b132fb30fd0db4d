"""Association requests: routing checks, peeking, decoding, and the contexts we accept.

The cold path of an association (once per association), on pynetdicom's PDU
classes and :func:`pynetdicom.presentation.negotiate_as_acceptor`.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Sequence
from typing import Final

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext

from dicomhub.dimse import pdu as P
from dicomhub.dimse.contexts import STORAGE_TRANSFER_SYNTAXES
from dicomhub.dimse.requests import (
    QUERY_RETRIEVE_SOP_CLASSES,
    VERIFICATION_SOP_CLASS,
    FastPathConfig,
)
from dicomhub.model.commitment import STORAGE_COMMITMENT_PUSH_MODEL
from dicomhub.model.sopclasses import StorableSOPClasses

__all__ = [
    "acceptor_contexts",
    "acceptor_contexts_for",
    "decode_associate_rq",
    "is_fast_path_request",
    "peek_associate_request",
    "storage_syntaxes",
]

LOGGER = logging.getLogger("dicomhub.dimse.fastpath")

_IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
_EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1"
_EXPLICIT_VR_BE: Final = "1.2.840.10008.1.2.2"
_UNCOMPRESSED: Final = (_EXPLICIT_VR_LE, _IMPLICIT_VR_LE, _EXPLICIT_VR_BE)
_A_ASSOCIATE_RQ: Final = P.A_ASSOCIATE_RQ
_UINT4_BE = P.UINT4_BE
_UINT2_BE = P.UINT2_BE
_PDU_HEADER = P.PDU_HEADER
# A-ASSOCIATE-RQs are a few kB even with 128 contexts; anything bigger than
# this is garbage or an attack, and must not make us allocate or wait for it.
MAX_ASSOCIATE_RQ: Final = 1 << 20


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
        proposed abstract syntax is Verification (if ``config.verification``),
        a storage SOP class in ``config.storage_contexts``, one of the six
        Q/R models (if ``config.query_retrieve``), or one the other stack
        does not serve either (see ``config.fallback_abstract_syntaxes``).
    """
    contexts = rq.presentation_context_definition_list
    if not contexts:
        return False
    fallback = config.fallback_abstract_syntaxes
    for context in contexts:
        uid = context.abstract_syntax
        if uid is None:
            return False
        text = str(uid)
        if text == VERIFICATION_SOP_CLASS:
            if config.verification:
                continue
        elif text in config.storage_contexts:
            continue
        elif config.query_retrieve and text in QUERY_RETRIEVE_SOP_CLASSES:
            continue
        elif config.storage_commitment and text == STORAGE_COMMITMENT_PUSH_MODEL:
            continue
        if fallback is None or text in fallback:
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
        if length < 68 or length > MAX_ASSOCIATE_RQ:
            return None
        pdu = _peek_exact(sock, 6 + length, deadline)
        if pdu is None:
            return None
        return decode_associate_rq(memoryview(pdu)[6:])[0]
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


def decode_associate_rq(body: memoryview) -> tuple[A_ASSOCIATE, int]:
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


def acceptor_contexts(config: FastPathConfig) -> list[PresentationContext]:
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
    # With Q/R, C-GET needs us as SCU of the storage classes too (the
    # requestor proposes role selection; without it we stay SCP only).
    roles = config.query_retrieve
    for abstract_syntax, transfer_syntaxes in config.storage_contexts.items():
        if transfer_syntaxes:
            contexts[abstract_syntax] = _context(abstract_syntax, transfer_syntaxes, roles)
    if config.query_retrieve:
        for model in sorted(QUERY_RETRIEVE_SOP_CLASSES):
            contexts[model] = _context(model, _UNCOMPRESSED)
    if config.storage_commitment:
        # Both roles: a requestor that proposes role selection (to receive the
        # report later on an association we open) gets what it asks for.
        contexts[STORAGE_COMMITMENT_PUSH_MODEL] = _context(
            STORAGE_COMMITMENT_PUSH_MODEL, [_EXPLICIT_VR_LE, _IMPLICIT_VR_LE], roles=True
        )
    result = list(contexts.values())
    with _CONTEXT_CACHE_LOCK:
        if len(_CONTEXT_CACHE) >= 16:
            _CONTEXT_CACHE.clear()
        _CONTEXT_CACHE[key] = (config, result)
    return result


def storage_syntaxes(config: FastPathConfig, abstract_syntax: str) -> Sequence[str]:
    """The transfer syntaxes accepted for ``abstract_syntax`` as a storage SOP class.

    Those of ``config.storage_contexts``; with ``config.accept_unknown_storage``
    the storage syntaxes for a SOP class the standard does not register too
    (empty: not accepted for storage).
    """
    listed = config.storage_contexts.get(abstract_syntax)
    if listed is not None:
        return listed
    if config.accept_unknown_storage and StorableSOPClasses.is_unknown(abstract_syntax):
        return STORAGE_TRANSFER_SYNTAXES
    return ()


def acceptor_contexts_for(
    config: FastPathConfig, proposed: Sequence[PresentationContext]
) -> list[PresentationContext]:
    """The supported presentation contexts for one A-ASSOCIATE-RQ.

    :func:`acceptor_contexts`, plus, with ``config.accept_unknown_storage``, a
    storage context for every proposed abstract syntax that is a valid UID the
    standard does not register: a private storage SOP class (Orthanc's
    ``UnknownSopClassAccepted``). Registered UIDs that are not storage SOP
    classes (say, Modality Worklist) stay refused, and so do abstract syntaxes
    that are not valid UIDs. At most 128 contexts fit in a request (odd
    context IDs), so a hostile requestor cannot make this list grow further.

    Parameters
    ----------
    config : FastPathConfig
        The association loop's configuration.
    proposed : sequence of PresentationContext
        The requestor's presentation context definition list.

    Returns
    -------
    list of PresentationContext
    """
    contexts = acceptor_contexts(config)
    if not config.accept_unknown_storage:
        return contexts
    known = {str(cx.abstract_syntax) for cx in contexts}
    extra: dict[str, PresentationContext] = {}
    for context in proposed:
        uid = "" if context.abstract_syntax is None else str(context.abstract_syntax)
        if uid in known or uid in extra:
            continue
        syntaxes = storage_syntaxes(config, uid)
        if syntaxes:
            # As for the listed classes: the SCU role too, for C-GET sub-operations.
            extra[uid] = _context(uid, syntaxes, config.query_retrieve)
    return [*contexts, *extra.values()] if extra else contexts


def _context(
    abstract_syntax: str, transfer_syntaxes: Sequence[str], roles: bool = False
) -> PresentationContext:
    context = PresentationContext()
    context.abstract_syntax = UID(abstract_syntax)
    context.transfer_syntax = [UID(uid) for uid in transfer_syntaxes]
    if roles:
        context.scu_role = True
        context.scp_role = True
    return context
