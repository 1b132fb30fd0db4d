"""C-FIND responses streamed from an iterator: what every C-FIND SCP does the same way.

Query/Retrieve and Modality Worklist differ in what they match, not in how the
answers go out (PS3.7 9.1.2, 9.3.2.3): a pending C-FIND-RSP with its identifier
per answer, C-CANCEL looked for between answers (0xFE00, and the iterator
closed so the query stops), a final status from the iterator when it gives
one, 0xC000 when the query raises, and the final C-FIND-RSP. A lost peer is
not answered: its transport error goes up to the association.

The identifier such a request carries is read here too (:func:`read_query_request`),
for C-GET and C-MOVE as well: they are refused for the same reasons.

Answers that come faster than one per :data:`_COALESCE_SECONDS` are sent
together, with the final response, in one ``sendmsg``: each send on its own
costs a system call, TCP segment and a wake-up of the client for a ~300-byte
PDU, which made up most of the per-match time of a query with 100 matches as
DCMTK's ``findscu`` saw it. The first answer, and any answer after a pause,
still goes out at once, so a slow query streams as before and a C-CANCEL
after the first answers still finds the query running.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

from dicomhub.dimse import messages as M
from dicomhub.dimse import transport as T
from dicomhub.dimse.dul import PeerAborted
from dicomhub.dimse.messages import Command
from dicomhub.dimse.pdu import ProtocolError
from dicomhub.dimse.requests import Identifier, QueryRequest

if TYPE_CHECKING:
    from dicomhub.dimse.association import Association
    from dicomhub.dimse.providers.base import AcceptedContext

__all__ = ["Answer", "answer_c_find", "read_query_request", "send_final_c_find"]

LOGGER = logging.getLogger("dicomhub.dimse")

_SUCCESS: Final = 0x0000
_PENDING: Final = frozenset({0xFF00, 0xFF01})
_CANCEL: Final = 0xFE00
_UNABLE_TO_PROCESS: Final = 0xC000
_SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
_BAD_IDENTIFIER: Final = 0xA900
_IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
# Answers within this time of the last send wait for the next send (see the module) ...
_COALESCE_SECONDS: Final = 0.002
# ... unless this many bytes are waiting already.
_COALESCE_BYTES: Final = 64 * 1024

#: What a query yields: (status, identifier) or (status, identifier, error comment).
#: The identifier is a data set, a callable that encodes it in the given transfer
#: syntax, or None (skipped while pending; a final status carries none).
Answer = tuple[int, Identifier | None] | tuple[int, Identifier | None, str | None]


def read_query_request(
    assoc: Association,
    command: Command,
    context: AcceptedContext | None,
    fragments: list[memoryview],
    models: frozenset[str],
) -> tuple[QueryRequest | None, int, str | None, str]:
    """Check the context against ``models`` and decode the request's identifier.

    Returns (request or None, refusal status, error comment, transfer syntax of the
    context): 0x0122 when the SOP class is not one of ``models`` or not the
    context's, 0xA900 when the identifier is missing or cannot be decoded.
    """
    assert command.message_id is not None  # the association checked the command set
    message_id = command.message_id
    model = command.sop_class_uid or ""
    transfer_syntax = context[1] if context else _IMPLICIT_VR_LE
    if context is None or context[0] != model or model not in models:
        return None, _SOP_CLASS_NOT_SUPPORTED, "SOP class not accepted", transfer_syntax
    if not command.has_data_set:
        return None, _BAD_IDENTIFIER, "request without an identifier", transfer_syntax
    try:
        identifier = M.decode_dataset(fragments, transfer_syntax)
    except Exception as exc:  # noqa: BLE001 - garbage from the peer
        LOGGER.warning("undecodable identifier in a %s request from %s: %r", model, assoc.calling_ae, exc)
        return None, _BAD_IDENTIFIER, "cannot decode the identifier", transfer_syntax
    request = QueryRequest(
        calling_ae_title=assoc.calling_ae,
        called_ae_title=assoc.called_ae,
        peer_host=assoc.host,
        message_id=message_id,
        sop_class_uid=model,
        identifier=identifier,
        move_destination=command.move_destination,
        is_cancelled=lambda: assoc.cancel_requested(message_id),
    )
    return request, 0, None, transfer_syntax


def answer_c_find(
    assoc: Association,
    context_id: int,
    message_id: int,
    sop_class_uid: str,
    transfer_syntax: str,
    query: Callable[[], Iterable[Answer]],
    what: str,
) -> tuple[int, int]:
    """Run ``query()`` and send its answers and the final C-FIND-RSP; (final status, answers sent).

    ``what`` names the query in the log ("C-FIND", "worklist C-FIND").
    """
    final, comment, answers = _SUCCESS, None, 0
    iterator = None
    waiting: list[bytes | memoryview] = []  # framed answers not yet sent
    waiting_bytes, last_send = 0, -_COALESCE_SECONDS
    try:
        iterator = iter(query())
        for answer in iterator:
            if assoc.cancel_requested(message_id):
                final = _CANCEL
                break
            status, identifier = int(answer[0]), answer[1]
            if status not in _PENDING:
                final, comment = status, (answer[2] if len(answer) == 3 else None)
                break
            if identifier is None:
                continue
            data = M.encode_dataset(identifier, transfer_syntax)
            assoc.raise_transport_error()
            waiting += assoc.frame_message(
                context_id,
                M.encode_response(M.C_FIND_RSP, message_id, sop_class_uid, None, status, has_data_set=True),
                data,
            )
            waiting_bytes += len(data)
            answers += 1
            now = time.monotonic()
            if now - last_send >= _COALESCE_SECONDS or waiting_bytes >= _COALESCE_BYTES:
                assoc.send_framed(waiting)
                waiting, waiting_bytes, last_send = [], 0, now
    except (ProtocolError, T.PeerGone, PeerAborted):
        raise
    except Exception:  # noqa: BLE001 - a failing query must not end the association
        LOGGER.exception("%s from %s failed; answering 0xC000", what, assoc.calling_ae)
        final, comment = _UNABLE_TO_PROCESS, "unable to process"
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001
                LOGGER.exception("closing the %s iterator failed", what)
    if final == _SUCCESS and assoc.cancel_requested(message_id):
        final = _CANCEL
    send_final_c_find(assoc, context_id, message_id, sop_class_uid, final, comment, waiting)
    return final, answers


def send_final_c_find(
    assoc: Association,
    context_id: int,
    message_id: int,
    sop_class_uid: str,
    status: int,
    comment: str | None,
    waiting: list[bytes | memoryview] | None = None,
) -> None:
    """The final C-FIND-RSP (the Error Comment is an LO: at most 64 characters), in one
    send with the framed answers still ``waiting``."""
    error_comment = (comment or "")[:64] or None
    assoc.raise_transport_error()
    final = assoc.frame_message(
        context_id, M.encode_response(M.C_FIND_RSP, message_id, sop_class_uid, None, status, error_comment)
    )
    assoc.send_framed([*waiting, *final] if waiting else final)
