"""Modality Worklist SCP (PS3.4 Annex K): C-FIND of the Modality Worklist Information Model.

A callback that knows nothing of the protocol does the archive's part
(:func:`dicomhub.dimse.worklist.handle_worklist_find`): it yields one
:class:`WorklistResponse` per scheduled procedure step, status 0xFF00 (0xFF01
when the request had keys the worklist does not support), then the final one.
This module reads the request; :func:`~dicomhub.dimse.providers.cfind.answer_c_find`
frames the answers as for Query/Retrieve: a pending C-FIND-RSP with its
identifier per answer, C-CANCEL looked for between answers (answered 0xFE00,
the iterator closed), and a failure status with its Error Comment (0xA900 for
a bad identifier, 0xC000 when the query could not be run).

References
----------
PS3.4 K.4.1 (C-FIND SCP behaviour), PS3.7 9.1.2, 9.3.2.3 (C-CANCEL).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, ClassVar, Final, NamedTuple

from pydicom.dataset import Dataset

from dicomhub.dimse import messages as M
from dicomhub.dimse.messages import Command
from dicomhub.dimse.providers.base import AcceptedContext, Provider
from dicomhub.dimse.providers.cfind import answer_c_find, send_final_c_find
from dicomhub.dimse.requests import QueryRequest
from dicomhub.model.worklist import MODALITY_WORKLIST_FIND

if TYPE_CHECKING:
    from dicomhub.dimse.association import Association

__all__ = ["WorklistFindCallback", "WorklistProvider", "WorklistResponse"]

LOGGER = logging.getLogger("dicomhub.dimse")

_IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
_BAD_IDENTIFIER: Final = 0xA900
_SOP_CLASS_NOT_SUPPORTED: Final = 0x0122


class WorklistResponse(NamedTuple):
    """One C-FIND-RSP: pending with an identifier, or final (with an Error Comment on failure)."""

    status: int
    identifier: Dataset | Callable[[str], bytes] | None = None  # a callable encodes in the given syntax
    comment: str | None = None


WorklistFindCallback = Callable[[QueryRequest], Iterator[WorklistResponse]]


class WorklistProvider(Provider):
    """C-FIND SCP of the Modality Worklist Information Model.

    Parameters
    ----------
    on_find : callable
        Called with the :class:`QueryRequest`; see the module docstring. An
        exception from it is logged and answered 0xC000.
    """

    sop_classes = frozenset({MODALITY_WORKLIST_FIND})
    name: ClassVar[str] = "modality worklist"

    def __init__(self, on_find: WorklistFindCallback) -> None:
        self._on_find = on_find

    def _request(
        self,
        assoc: Association,
        command: Command,
        context: AcceptedContext | None,
        fragments: list[memoryview],
    ) -> tuple[QueryRequest | None, int, str, str]:
        assert command.message_id is not None  # the association checked the command set
        message_id = command.message_id
        transfer_syntax = context[1] if context else _IMPLICIT_VR_LE
        if context is None or context[0] != MODALITY_WORKLIST_FIND or command.sop_class_uid != context[0]:
            return None, _SOP_CLASS_NOT_SUPPORTED, "SOP class not accepted", transfer_syntax
        if not command.has_data_set:
            return None, _BAD_IDENTIFIER, "request without an identifier", transfer_syntax
        try:
            identifier = M.decode_dataset(fragments, transfer_syntax)
        except Exception as exc:  # noqa: BLE001 - garbage from the peer
            LOGGER.warning("undecodable worklist identifier from %s: %r", assoc.calling_ae, exc)
            return None, _BAD_IDENTIFIER, "cannot decode the identifier", transfer_syntax
        request = QueryRequest(
            calling_ae_title=assoc.calling_ae,
            called_ae_title=assoc.called_ae,
            peer_host=assoc.host,
            message_id=message_id,
            sop_class_uid=MODALITY_WORKLIST_FIND,
            identifier=identifier,
            move_destination=None,
            is_cancelled=lambda: assoc.cancel_requested(message_id),
        )
        return request, 0, "", transfer_syntax

    def c_find(
        self,
        assoc: Association,
        command: Command,
        context_id: int,
        context: AcceptedContext | None,
        fragments: list[memoryview],
    ) -> None:
        started = time.perf_counter()
        message_id = command.message_id
        assert message_id is not None
        request, final, comment, transfer_syntax = self._request(assoc, command, context, fragments)
        fragments.clear()
        answers = 0
        if request is not None:
            on_find = self._on_find
            final, answers = answer_c_find(
                assoc, context_id, message_id, MODALITY_WORKLIST_FIND, transfer_syntax,
                lambda: on_find(request), "worklist C-FIND",
            )  # fmt: skip
        else:
            send_final_c_find(assoc, context_id, message_id, MODALITY_WORKLIST_FIND, final, comment)
        elapsed = time.perf_counter() - started
        LOGGER.info(
            "worklist C-FIND from %s: %d answers, status 0x%04X in %.1f ms",
            assoc.calling_ae,
            answers,
            final,
            elapsed * 1000,
        )
        assoc.emit(
            "find",
            {
                "calling_ae_title": assoc.calling_ae,
                "sop_class_uid": MODALITY_WORKLIST_FIND,
                "status": final,
                "matches": answers,
                "seconds": elapsed,
            },
        )
