"""Storage SOP Class SCP (PS3.4 Annex B): C-STORE in, the data set handed to ``on_store``.

The hot path of the archive: the data set arrives as the PDVs' memoryview
slices (joined once into the bytes handed over) or, past the spool
threshold, as a file the upper layer (:mod:`dicomhub.dimse.dul`) already
wrote; the C-STORE-RSP goes out only after ``on_store`` returned, i.e. after
the instance is durable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, ClassVar

from dicomhub.dimse import messages as M
from dicomhub.dimse import status as S
from dicomhub.dimse.messages import Command
from dicomhub.dimse.pdu import ProtocolError
from dicomhub.dimse.providers.base import AcceptedContext, Provider
from dicomhub.dimse.requests import StoreOutcome, StoreRequest

if TYPE_CHECKING:
    from dicomhub.dimse.association import Association

__all__ = ["StorageProvider"]

LOGGER = logging.getLogger("dicomhub.dimse")


class StorageProvider(Provider):
    """C-STORE SCP for the configured storage SOP classes.

    Parameters
    ----------
    sop_classes : collection of str
        The storage SOP classes accepted (private ones accepted by
        ``accept_unknown_storage`` reach this provider as the table's fallback).
    on_store : callable
        Called once per C-STORE-RQ with its :class:`StoreRequest`, on the
        association's thread; its :class:`StoreOutcome` is sent back.  An
        exception is logged and answered with status 0xC210.
    """

    name: ClassVar[str] = "storage"

    def __init__(
        self, sop_classes: Collection[str], on_store: Callable[[StoreRequest], StoreOutcome]
    ) -> None:
        self.sop_classes = sop_classes
        self._on_store = on_store

    def c_store(
        self,
        assoc: Association,
        command: Command,
        context_id: int,
        context: AcceptedContext | None,
        fragments: list[memoryview],
    ) -> None:
        if not command.has_data_set:
            raise ProtocolError("C-STORE-RQ without a data set")
        sop_class = command.sop_class_uid
        sop_instance = command.sop_instance_uid
        message_id = command.message_id
        if sop_class is None or sop_instance is None or message_id is None:
            raise ProtocolError("C-STORE-RQ without Affected SOP Class/Instance UID")
        started = time.perf_counter()
        error_comment: str | None = None
        size = 0
        spool_path = assoc.spool_path
        if context is None or context[0] != sop_class:
            status = S.SOP_CLASS_NOT_SUPPORTED
            error_comment = "SOP class not accepted on this presentation context"
        elif assoc.spool_failed:
            status = S.STORE_OUT_OF_RESOURCES
            error_comment = "out of resources: cannot spool the data set"
        else:
            if spool_path is None:
                dataset = bytes(fragments[0]) if len(fragments) == 1 else b"".join(fragments)
                # Release the PDU buffers now rather than when this frame ends.
                fragments.clear()
                size = len(dataset)
            else:
                assoc.close_spool()  # unbuffered writes: the file is complete
                dataset = b""
                size = assoc.data_size
            request = StoreRequest(
                calling_ae_title=assoc.calling_ae,
                called_ae_title=assoc.called_ae,
                peer_host=assoc.host,
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
                outcome = self._on_store(request)
                status = int(outcome.status)
                if not 0 <= status <= 0xFFFF:
                    raise ValueError(f"status {status} out of range")
                error_comment = outcome.error_comment
            except Exception:  # noqa: BLE001 - a failing store must not kill the server
                LOGGER.exception(
                    "on_store failed for %s from %s; answering 0x%04X",
                    sop_instance,
                    assoc.calling_ae,
                    S.STORE_PROCESSING_FAILURE,
                )
                status = S.STORE_PROCESSING_FAILURE
                error_comment = "processing failure"
        if assoc.spooling:
            assoc.discard_spool()
        assoc.send_message(
            context_id,
            M.encode_response(M.C_STORE_RSP, message_id, sop_class, sop_instance, status, error_comment),
        )
        assoc.stores += 1
        elapsed = time.perf_counter() - started
        LOGGER.debug(
            "C-STORE %s (%s, %d bytes) from %s: status 0x%04X in %.1f ms",
            sop_instance,
            sop_class,
            size,
            assoc.calling_ae,
            status,
            elapsed * 1000,
        )
        if assoc.on_event is not None:
            assoc.emit(
                "store",
                {
                    "calling_ae_title": assoc.calling_ae,
                    "sop_class_uid": sop_class,
                    "sop_instance_uid": sop_instance,
                    "status": status,
                    "bytes": size,
                    "seconds": elapsed,
                },
            )
