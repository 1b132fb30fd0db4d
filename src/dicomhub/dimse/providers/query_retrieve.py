"""Query/Retrieve SCP (PS3.4 Annex C): Patient and Study Root C-FIND, C-GET and C-MOVE.

Two callbacks that know nothing of the protocol do the archive's part
(:class:`~dicomhub.dimse.requests.QueryRequest` in; match identifiers, or a
:class:`~dicomhub.dimse.requests.RetrievePlan` of
:class:`~dicomhub.dimse.requests.Sendable` out).  C-GET sub-operations go out
on the same association (where the requestor accepted our SCU role for the
SOP class), C-MOVE ones on a :class:`~dicomhub.dimse.scu.StoreAssociation`;
data sets are sent as memoryview slices with ``sendmsg`` (no copy), or from a
file with ``sendfile`` when the callback hands a :class:`FileRegion`.
C-CANCEL is honoured between responses and sub-operations.  Only
synchronous operations (no asynchronous operations window): one Q/R
operation at a time, run by the association after the PDU that completed
the request.

References
----------
PS3.4 C.4.1 (C-FIND), C.4.2 (C-MOVE), C.4.3 (C-GET); PS3.7 9.1.2-9.1.4, 9.3.2.3 (C-CANCEL).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, Final

from pydicom.dataset import Dataset

from dicomhub.dimse import messages as M
from dicomhub.dimse import transport as T
from dicomhub.dimse.dul import PeerAborted
from dicomhub.dimse.messages import Command
from dicomhub.dimse.pdu import ProtocolError
from dicomhub.dimse.providers.base import AcceptedContext, Provider
from dicomhub.dimse.providers.cfind import answer_c_find, read_query_request, send_final_c_find
from dicomhub.dimse.requests import (
    FIND_MODELS,
    GET_MODELS,
    MOVE_MODELS,
    QUERY_RETRIEVE_SOP_CLASSES,
    EncodedDataSet,
    FileRegion,
    FindCallback,
    RetrieveCallback,
    Sendable,
)
from dicomhub.dimse.scu import StoreAssociation, StoreAssociationError

if TYPE_CHECKING:
    from dicomhub.dimse.association import Association

__all__ = ["QueryRetrieveProvider", "move_proposals"]

LOGGER = logging.getLogger("dicomhub.dimse")

_IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
_EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1"
_UNCOMPRESSED_FALLBACKS: Final = (_EXPLICIT_VR_LE, _IMPLICIT_VR_LE)
# A C-MOVE's sub-association proposes one context per (SOP class, transfer syntax).
_MAX_MOVE_CONTEXTS: Final = 128

_STATUS_SUCCESS: Final = 0x0000
_STATUS_SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
_STATUS_PENDING: Final = 0xFF00
_STATUS_CANCEL: Final = 0xFE00
_STATUS_UNABLE_TO_PROCESS: Final = 0xC000
_STATUS_UNKNOWN_DESTINATION: Final = 0xA801
_STATUS_SUBOPS_FAILED: Final = 0xA702
_STATUS_SUBOPS_WARNING: Final = 0xB000


class QueryRetrieveProvider(Provider):
    """C-FIND, C-GET and C-MOVE SCP of the Patient and Study Root information models.

    Parameters
    ----------
    on_find : callable or None
        Called with the :class:`QueryRequest`; returns an iterator of
        ``(0xFF00, identifier)`` per match, then optionally a final
        ``(status, None)`` (default success).  Identifiers are encoded in the
        context's transfer syntax.  Between matches a C-CANCEL-RQ is looked
        for (answered 0xFE00 and the iterator closed).  An exception is
        logged and answered 0xC000.  ``None``: C-FIND is answered 0x0122.
    on_retrieve : callable or None
        C-GET and C-MOVE: called with the :class:`QueryRequest`; returns a
        :class:`~dicomhub.dimse.requests.RetrievePlan` (for C-MOVE with its
        destination), or a ``(status, error comment)`` tuple to refuse (e.g.
        0xA801 unknown destination, 0xA900 bad identifier).  Every
        :class:`Sendable` is a C-STORE sub-operation; a pending response
        follows each one, then the final response: 0x0000, 0xB000 (some
        failed or warned), 0xA702 (all failed), 0xFE00 (cancelled), with the
        *Failed SOP Instance UID List* when any failed; 0xA801 when the
        destination cannot be associated.  An exception from the callback is
        answered 0xC000.
    """

    sop_classes = QUERY_RETRIEVE_SOP_CLASSES
    name: ClassVar[str] = "query/retrieve"

    def __init__(self, on_find: FindCallback | None, on_retrieve: RetrieveCallback | None) -> None:
        self._on_find = on_find
        self._on_retrieve = on_retrieve

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
        model = command.sop_class_uid or ""
        request, final, comment, transfer_syntax = read_query_request(
            assoc, command, context, fragments, FIND_MODELS
        )
        fragments.clear()
        matches = 0
        if request is not None and self._on_find is None:
            final, comment = _STATUS_SOP_CLASS_NOT_SUPPORTED, "C-FIND is not configured"
        if request is not None and self._on_find is not None:
            on_find = self._on_find
            final, matches = answer_c_find(
                assoc, context_id, message_id, model, transfer_syntax, lambda: on_find(request), "C-FIND"
            )
        else:
            send_final_c_find(assoc, context_id, message_id, model, final, comment)
        elapsed = time.perf_counter() - started
        LOGGER.info(
            "C-FIND from %s: %d matches, status 0x%04X in %.1f ms",
            assoc.calling_ae,
            matches,
            final,
            elapsed * 1000,
        )
        assoc.emit(
            "find",
            {
                "calling_ae_title": assoc.calling_ae,
                "sop_class_uid": model,
                "status": final,
                "matches": matches,
                "seconds": elapsed,
            },
        )

    def c_get(
        self,
        assoc: Association,
        command: Command,
        context_id: int,
        context: AcceptedContext | None,
        fragments: list[memoryview],
    ) -> None:
        self._retrieve(assoc, command, context_id, context, fragments)

    def c_move(
        self,
        assoc: Association,
        command: Command,
        context_id: int,
        context: AcceptedContext | None,
        fragments: list[memoryview],
    ) -> None:
        self._retrieve(assoc, command, context_id, context, fragments)

    def _retrieve(
        self,
        assoc: Association,
        command: Command,
        context_id: int,
        context: AcceptedContext | None,
        fragments: list[memoryview],
    ) -> None:
        started = time.perf_counter()
        is_get = command.command_field == M.C_GET_RQ
        name = "C-GET" if is_get else "C-MOVE"
        rsp_field = M.C_GET_RSP if is_get else M.C_MOVE_RSP
        message_id = command.message_id
        assert message_id is not None
        model = command.sop_class_uid or ""
        request, refusal, comment, transfer_syntax = read_query_request(
            assoc, command, context, fragments, GET_MODELS if is_get else MOVE_MODELS
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
            assoc.raise_transport_error()
            assoc.send_message(
                context_id,
                M.encode_response(
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
            LOGGER.info("%s from %s refused: 0x%04X %s", name, assoc.calling_ae, status, comment or "")
            respond(status, None, comment)
            assoc.emit(
                name[2:].lower(),
                {
                    "calling_ae_title": assoc.calling_ae,
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
        if self._on_retrieve is None:
            refuse(_STATUS_SOP_CLASS_NOT_SUPPORTED, f"{name} is not configured")
            return
        if not is_get and not request.move_destination:
            refuse(_STATUS_UNKNOWN_DESTINATION, "no Move Destination")
            return
        try:
            plan = self._on_retrieve(request)
            if isinstance(plan, tuple):
                status, comment = plan
                refuse(int(status), comment)
                return
            instances = list(plan.instances)
        except (ProtocolError, T.PeerGone, PeerAborted):
            raise
        except Exception:  # noqa: BLE001
            LOGGER.exception("on_retrieve for %s from %s failed", name, assoc.calling_ae)
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
                    assoc.config.ae_title,
                    proposals[:_MAX_MOVE_CONTEXTS],
                    connect_timeout=assoc.config.acse_timeout,
                    acse_timeout=assoc.config.acse_timeout,
                    dimse_timeout=assoc.config.dimse_timeout,
                    maximum_pdu_size=assoc.config.maximum_pdu_size,
                    implementation_class_uid=assoc.config.implementation_class_uid,
                    implementation_version_name=assoc.config.implementation_version_name,
                    tls=plan.destination_tls,
                )
            except (StoreAssociationError, ValueError, OSError) as exc:
                LOGGER.warning(
                    "C-MOVE from %s: cannot associate with %s at %s:%s: %s",
                    assoc.calling_ae,
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
                if assoc.cancel_requested(message_id):
                    cancelled = True
                    break
                if is_get:
                    outcome = self._get_sub_operation(assoc, instance)
                else:
                    assert store is not None
                    outcome = _move_sub_operation(
                        store, instance, assoc.sub_message_id(), assoc.calling_ae, message_id
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
            assoc.calling_ae,
            "" if is_get else f" to {request.move_destination}",
            completed,
            failed,
            warning,
            total,
            final,
            elapsed,
        )
        assoc.emit(
            name[2:].lower(),
            {
                "calling_ae_title": assoc.calling_ae,
                "status": final,
                "completed": completed,
                "failed": failed,
                "warning": warning,
                "seconds": elapsed,
            },
        )

    def _get_sub_operation(self, assoc: Association, instance: Sendable) -> int | None:
        """Send one C-STORE-RQ on this association; return its status (None = failed here)."""
        picked = _context_and_data(
            instance,
            lambda sop, ts: assoc.scu_contexts.get((sop, ts)),
            f"C-GET from {assoc.calling_ae}: no accepted context with SCU role",
        )
        if picked is None:
            return None
        context_id, data = picked
        message_id = assoc.sub_message_id()
        command = M.encode_store_rq(message_id, instance.sop_class_uid, instance.sop_instance_uid)
        try:
            if isinstance(data, FileRegion):
                if not self._send_region(assoc, context_id, command, instance, data):
                    return None
            else:
                assoc.raise_transport_error()
                assoc.send_message(context_id, command, data)
        finally:
            T.release_region(data)
            del data
        assoc.set_timeout(assoc.config.dimse_timeout)
        while message_id not in assoc.store_responses:
            assoc.receive_pdu()
        status, comment = assoc.store_responses.pop(message_id)
        if status != _STATUS_SUCCESS:
            LOGGER.warning(
                "C-GET sub-operation %s to %s: status 0x%04X %s",
                instance.sop_instance_uid,
                assoc.calling_ae,
                status,
                comment or "",
            )
        return status

    def _send_region(
        self, assoc: Association, context_id: int, command: bytes, instance: Sendable, region: FileRegion
    ) -> bool:
        """Send a C-STORE-RQ whose data set lies in a file; False (logged) if it cannot be opened."""
        try:
            fd = T.open_region(region)
        except OSError as exc:
            LOGGER.warning("reading %s failed: %s", instance.sop_instance_uid, exc)
            return False
        try:
            assoc.raise_transport_error()
            assoc.set_timeout(assoc.config.dimse_timeout)
            T.send_file_message(assoc.sock, context_id, command, fd, region, assoc.peer_max_pdu)
        finally:
            os.close(fd)
        return True


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


def _move_sub_operation(
    store: StoreAssociation,
    instance: Sendable,
    message_id: int,
    originator_ae_title: str,
    originator_message_id: int,
) -> int | None:
    """Send one instance on the C-MOVE sub-association; return its status (None = failed)."""
    picked = _context_and_data(instance, store.accepted, f"C-MOVE to {store.called_ae_title}: not accepted")
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
    return M.encode_dataset(identifier, transfer_syntax)
