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
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from pydicom.dataset import Dataset

from dicomhub.dimse.messages import Command
from dicomhub.dimse.providers.base import AcceptedContext, Provider
from dicomhub.dimse.providers.cfind import answer_c_find, read_query_request, send_final_c_find
from dicomhub.dimse.requests import QueryRequest
from dicomhub.model.worklist import MODALITY_WORKLIST_FIND

if TYPE_CHECKING:
    from dicomhub.dimse.association import Association

__all__ = ["WorklistFindCallback", "WorklistProvider", "WorklistResponse"]

LOGGER = logging.getLogger("dicomhub.dimse")


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
        request, final, comment, transfer_syntax = read_query_request(
            assoc, command, context, fragments, self.sop_classes
        )
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
