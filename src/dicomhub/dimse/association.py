"""The association loop of the acceptor: receive a message, find its provider, dispatch.

One association runs on the calling thread on one blocking socket
(:func:`serve_association`).  The layers below it:

* :mod:`dicomhub.dimse.transport` moves bytes (exact-length reads,
  ``sendmsg``/``sendfile``, TLS);
* :mod:`dicomhub.dimse.acse` decides on the A-ASSOCIATE-RQ (accept, reject,
  presentation contexts, role selection);
* :mod:`dicomhub.dimse.dul` (:class:`~dicomhub.dimse.dul.UpperLayer`, which
  :class:`Association` extends) turns PDUs into complete messages and spools
  large data sets;
* :mod:`dicomhub.dimse.messages` decodes and encodes the command sets.

Above it, the service classes are providers (:mod:`dicomhub.dimse.providers`),
found in ONE table keyed by SOP class: each accepted presentation context is
mapped at negotiation to the provider of its abstract syntax, and each
message goes to that provider's method for its command (``c_store``,
``c_find``, ``n_action``, ...).  DIMSE-N requests are decoded and checked
here, so that every provider gets the same PS3.7 answers for what it cannot
serve: a context that was not accepted 0x0122 (*SOP class not supported*), a
SOP class that is not the context's 0x0118 (*No such SOP class*), a request
without its SOP instance 0x0112, an operation the provider does not define
0x0211 (*Unrecognized operation*), a data set that cannot be decoded or a
provider that fails 0x0110 (*Processing failure*).

C-FIND, C-GET and C-MOVE run after the PDU that completed them
(:meth:`Association.run_operation`), so that a C-CANCEL-RQ or the C-STORE-RSPs
of C-GET sub-operations can be read while they run.

References
----------
PS3.7 Sections 9 (DIMSE-C), 10 (DIMSE-N), C (status); PS3.8 Sections 7
(ACSE services), 9.3 (PDUs).
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pynetdicom.presentation import PresentationContext

from dicomhub.dimse import acse
from dicomhub.dimse import messages as M
from dicomhub.dimse import status as S
from dicomhub.dimse import transport as T
from dicomhub.dimse.dul import IDLE, PeerAborted, UpperLayer
from dicomhub.dimse.messages import Command, NRequest, NResponse
from dicomhub.dimse.pdu import (
    A_ABORT,
    A_ASSOCIATE_RQ,
    REASON_INVALID_PARAMETER,
    REASON_NOT_SPECIFIED,
    REASON_UNEXPECTED_PDU,
    REASON_UNRECOGNISED_PDU,
    RELEASE_RP_PDU,
    ProtocolError,
)
from dicomhub.dimse.providers.base import AcceptedContext, Provider
from dicomhub.dimse.providers.commitment import StorageCommitmentProvider
from dicomhub.dimse.providers.mpps import ModalityPerformedProcedureStepProvider
from dicomhub.dimse.providers.printing import PrintManagementProvider
from dicomhub.dimse.providers.query_retrieve import QueryRetrieveProvider
from dicomhub.dimse.providers.storage import StorageProvider
from dicomhub.dimse.providers.verification import VerificationProvider
from dicomhub.dimse.providers.worklist import WorklistFindCallback, WorklistProvider
from dicomhub.dimse.requests import (
    AssociationConfig,
    AssociationInfo,
    FindCallback,
    NActionOutcome,
    NActionRequest,
    Rejection,
    RetrieveCallback,
    StoreOutcome,
    StoreRequest,
)

__all__ = ["Association", "default_providers", "provider_table", "serve_association"]

if TYPE_CHECKING:
    from dicomhub.services.mpps import MppsService
    from dicomhub.services.printing import PrintService

LOGGER = logging.getLogger("dicomhub.dimse.association")

_C_CONTROL = frozenset({M.C_CANCEL_RQ, M.C_STORE_RSP})
_QUERY_RETRIEVE_COMMANDS = frozenset({M.C_FIND_RQ, M.C_GET_RQ, M.C_MOVE_RQ})
_N_COMMANDS = frozenset({*M.N_REQUESTS, M.N_EVENT_REPORT_RSP})


def default_providers(
    config: AssociationConfig,
    on_store: Callable[[StoreRequest], StoreOutcome],
    on_find: FindCallback | None = None,
    on_retrieve: RetrieveCallback | None = None,
    on_n_action: Callable[[NActionRequest], NActionOutcome] | None = None,
    mpps: MppsService | None = None,
    on_worklist_find: WorklistFindCallback | None = None,
    mpps_authorize: Callable[[], None] | None = None,
    printing: PrintService | None = None,
    print_authorize: Callable[[], None] | None = None,
) -> list[Provider]:
    """The service class providers of the archive, as `config` enables them.

    Adding a service class is one line here (and its module in
    :mod:`dicomhub.dimse.providers`).  The storage provider comes first: it
    is also the table's fallback for the private storage classes that
    ``config.accept_unknown_storage`` accepts.
    """
    providers: list[Provider] = [StorageProvider(config.storage_contexts.keys(), on_store)]
    if config.verification:
        providers.append(VerificationProvider())
    if config.query_retrieve:
        providers.append(QueryRetrieveProvider(on_find, on_retrieve))
    if config.storage_commitment and on_n_action is not None:
        providers.append(StorageCommitmentProvider(on_n_action))
    if config.modality_performed_procedure_step and mpps is not None:
        providers.append(ModalityPerformedProcedureStepProvider(mpps, mpps_authorize))
    if config.modality_worklist and on_worklist_find is not None:
        providers.append(WorklistProvider(on_worklist_find))
    if config.print_management and printing is not None:
        providers.append(PrintManagementProvider(printing, print_authorize))  # per association: its session
    return providers


def provider_table(providers: Iterable[Provider]) -> dict[str, Provider]:
    """SOP class -> provider; a later provider wins a SOP class an earlier one named too."""
    return {sop_class: provider for provider in providers for sop_class in provider.sop_classes}


class Association(UpperLayer):
    """One association served on the calling thread (acceptor side)."""

    __slots__ = (
        "host",
        "port",
        "called_ae",
        "accept_association",
        "on_event",
        "table",
        "fallback",
        "pending_reports",
        "scu_contexts",
        "deferred",
        "cancelled",
        "store_responses",
        "transport_error",
        "poller",
        "next_message_id",
        "operations",
        "contexts",
        "stores",
        "echoes",
        "started",
    )

    def __init__(
        self,
        sock: socket.socket,
        address: tuple[str, int],
        config: AssociationConfig,
        providers: Sequence[Provider],
        accept_association: Callable[[AssociationInfo], str | Rejection | None],
        on_event: Callable[[str, dict[str, object]], None] | None,
    ) -> None:
        super().__init__(sock, config)
        self.host = str(address[0]) if address else ""
        self.port = int(address[1]) if address and len(address) > 1 else 0
        self.called_ae = ""
        self.accept_association = accept_association
        self.on_event = on_event
        self.table = provider_table(providers)
        # Private storage classes accepted with accept_unknown_storage are in no table.
        self.fallback: Provider | None = providers[0] if providers else None
        allowed = {M.C_STORE_RQ, M.C_ECHO_RQ, *_N_COMMANDS}
        if config.query_retrieve:
            allowed |= _QUERY_RETRIEVE_COMMANDS | _C_CONTROL
        if config.modality_worklist:
            allowed |= {M.C_FIND_RQ, M.C_CANCEL_RQ}
        self.allowed_commands = frozenset(allowed)
        # Message ID of an N-EVENT-REPORT-RQ we sent -> what to call on success.
        self.pending_reports: dict[int, Callable[[], None] | None] = {}
        # (SOP class, transfer syntax) -> context ID where we may act as SCU
        self.scu_contexts: dict[tuple[str, str], int] = {}
        # A complete Q/R request waiting to be served by run().
        self.deferred: tuple[Command, int, list[memoryview]] | None = None
        self.cancelled: set[int] = set()
        self.store_responses: dict[int, tuple[int, str | None]] = {}
        self.transport_error: BaseException | None = None
        self.poller: select.poll | None = None
        self.next_message_id = 0
        self.operations = 0
        # context ID -> accepted context (abstract syntax, transfer syntax, provider, roles)
        self.contexts: dict[int, AcceptedContext] = {}
        self.stores = 0
        self.echoes = 0
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

    # -- association establishment -----------------------------------------

    def establish(self) -> bool:
        """Read the A-ASSOCIATE-RQ and accept or reject it.

        Returns
        -------
        bool
            ``True`` when the association is established.
        """
        self.set_timeout(self.config.acse_timeout)
        try:
            pdu_type, length, body = self.read_associate_rq()
        except (TimeoutError, T.PeerGone):
            LOGGER.info("connection from %s:%s closed before a whole A-ASSOCIATE-RQ", self.host, self.port)
            return False
        if pdu_type != A_ASSOCIATE_RQ:
            reason = REASON_UNEXPECTED_PDU if pdu_type <= A_ABORT else REASON_UNRECOGNISED_PDU
            self.refuse_garbage(f"PDU type 0x{pdu_type:02X} instead of A-ASSOCIATE-RQ", reason)
            return False
        if body is None:
            self.refuse_garbage(f"A-ASSOCIATE-RQ with length {length}", REASON_INVALID_PARAMETER)
            return False
        try:
            rq, protocol_version = acse.decode_associate_rq(memoryview(body))
        except Exception as exc:  # noqa: BLE001 - pynetdicom raises anything on garbage
            self.refuse_garbage(f"undecodable A-ASSOCIATE-RQ ({exc!r})", REASON_INVALID_PARAMETER)
            return False

        self.calling_ae = rq.calling_ae_title.strip()
        self.called_ae = rq.called_ae_title.strip()
        info = AssociationInfo(self.calling_ae, self.called_ae, self.host, self.port)

        # (result, source, diagnostic) per PS3.8 Table 9-21
        rejection: tuple[int, int, int] | None = None
        reason_text = ""
        refused = acse.refusal_of(rq, protocol_version, self.config)
        if refused is not None:
            rejection, reason_text = refused
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
            ac_pdu, results = acse.negotiate(rq, self.config, self._provided_syntaxes)
        except Exception as exc:  # noqa: BLE001 - e.g. a context without transfer syntax
            self.refuse_garbage(f"negotiation failed ({exc!r})", REASON_INVALID_PARAMETER)
            return False
        self.record_contexts(results)
        try:
            self.send(ac_pdu)
        except T.PeerGone:
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
                    "contexts": [acse.context_outcome(r, proposed.get(r.context_id)) for r in results],
                },
            )
        return True

    def refuse_garbage(self, what: str, reason: int) -> None:
        LOGGER.warning("aborting connection from %s:%s: %s", self.host, self.port, what)
        self.send_abort(reason)
        T.linger_close(self.sock)
        self.emit("aborted", {"peer_host": self.host, "reason": what, "by": "local"})

    def reject(self, rejection: tuple[int, int, int], reason_text: str) -> None:
        result, source, diagnostic = rejection
        LOGGER.info(
            "association rejected: %s -> %s from %s:%s: %s",
            self.calling_ae,
            self.called_ae,
            self.host,
            self.port,
            reason_text,
        )
        try:
            self.send(acse.encode_rejection(result, source, diagnostic))
        except T.PeerGone:
            pass
        T.linger_close(self.sock)
        self.emit(
            "rejected",
            {
                "calling_ae_title": self.calling_ae,
                "called_ae_title": self.called_ae,
                "peer_host": self.host,
                "reason": reason_text,
            },
        )

    def run(self) -> None:
        """Serve the established association until release, abort or error."""
        config = self.config
        try:
            self.serve(config)
        finally:
            # A message cut short (abort, timeout, protocol error, release)
            # must not leave its spool file behind.
            self.discard_spool()

    def serve(self, config: AssociationConfig) -> None:
        try:
            while True:
                self.set_timeout(config.network_timeout if self.state == IDLE else config.dimse_timeout)
                if not self.receive_pdu():
                    return
                while self.deferred is not None:
                    self.run_operation()
        except ProtocolError as exc:
            self.send_abort(exc.reason)
            T.linger_close(self.sock)
            self.finish_aborted(f"protocol error: {exc}", by="local")
        except TimeoutError:
            self.send_abort(REASON_NOT_SPECIFIED)
            T.linger_close(self.sock)
            what = "DIMSE timeout" if self.state != IDLE or self.in_operation else "network (idle) timeout"
            self.finish_aborted(what, by="local")
        except PeerAborted:
            self.finish_aborted("A-ABORT from peer", by="peer")
        except T.PeerGone as exc:
            self.finish_aborted(f"transport closed ({exc})", by="peer")

    # -- providers -----------------------------------------------------------

    def provider_for(self, sop_class_uid: str | None) -> Provider | None:
        """The provider of `sop_class_uid` in the table (the fallback for any other)."""
        provider = self.table.get(sop_class_uid or "")
        return provider if provider is not None else self.fallback

    def _provided_syntaxes(self, sop_class_uid: str) -> Sequence[str]:
        provider = self.table.get(sop_class_uid)
        return provider.transfer_syntaxes if provider is not None else ()

    def record_contexts(self, results: list[PresentationContext]) -> None:
        """Keep the accepted contexts, each with its provider and our roles on it."""
        for context in results:
            if context.result == 0x00 and context.context_id is not None:
                abstract, syntax = str(context.abstract_syntax), str(context.transfer_syntax[0])
                as_scu = bool(context.as_scu)
                self.contexts[context.context_id] = AcceptedContext(
                    abstract, syntax, self.provider_for(abstract), as_scu, bool(context.as_scp)
                )
                if as_scu:
                    self.scu_contexts.setdefault((abstract, syntax), context.context_id)

    # -- messages ------------------------------------------------------------

    def dispatch(self) -> None:
        """Act on the complete message and send its response."""
        command = self.command
        assert command is not None
        context_id = self.message_context
        self.state = IDLE
        self.command = None
        fragments = self.data_fragments
        self.data_fragments = []
        field = command.command_field
        if field == M.C_STORE_RQ and not self.in_operation:
            context = self.contexts.get(context_id)
            provider = context.provider if context is not None else self.provider_for(command.sop_class_uid)
            if provider is None:
                self.discard_spool()
                self.refuse(command, context_id, S.SOP_CLASS_NOT_SUPPORTED, "SOP class not accepted")
            else:
                provider.c_store(self, command, context_id, context, fragments)
        elif field == M.C_CANCEL_RQ:
            # Only meaningful for the operation in progress (or about to start).
            if self.in_operation or self.deferred is not None:
                assert command.message_id_responded_to is not None
                self.cancelled.add(command.message_id_responded_to)
            else:
                LOGGER.debug("C-CANCEL-RQ from %s with no operation running", self.calling_ae)
        elif field == M.N_EVENT_REPORT_RSP:
            self.report_answered(command)
        elif field == M.C_STORE_RSP:
            if not self.in_operation:
                raise ProtocolError("C-STORE-RSP without a C-STORE-RQ", REASON_UNEXPECTED_PDU)
            assert command.message_id_responded_to is not None
            self.store_responses[command.message_id_responded_to] = (
                command.status if command.status is not None else S.STORE_PROCESSING_FAILURE,
                command.error_comment,
            )
        elif self.in_operation or self.deferred is not None:
            raise ProtocolError(
                "a new request while a Q/R operation is running (asynchronous operations are not negotiated)",
                REASON_UNEXPECTED_PDU,
            )
        elif field == M.C_ECHO_RQ:
            context = self.contexts.get(context_id)
            provider = context.provider if context is not None else self.provider_for(command.sop_class_uid)
            if provider is None:
                self.refuse(command, context_id, S.SOP_CLASS_NOT_SUPPORTED, "SOP class not accepted")
            else:
                provider.c_echo(self, command, context_id, context)
        elif field in M.N_REQUESTS:
            self.handle_n_request(command, context_id, fragments)
        else:  # C-FIND/C-GET/C-MOVE: served by run() once this PDU is handled
            self.cancelled.clear()
            self.deferred = (command, context_id, fragments)

    def send_response(self, context_id: int, command: bytes) -> None:
        """Send a command set as P-DATA-TF PDU(s) within the peer's maximum."""
        self.send_message(context_id, command)

    def refuse(self, command: Command, context_id: int, status: int, comment: str | None = None) -> None:
        """Answer a DIMSE-C request with a failure status and nothing else (PS3.7 9.3)."""
        assert command.message_id is not None
        LOGGER.info(
            "command 0x%04X from %s refused: 0x%04X %s",
            command.command_field,
            self.calling_ae,
            status,
            comment or "",
        )
        self.send_message(
            context_id,
            M.encode_response(
                command.command_field | 0x8000,
                command.message_id,
                command.sop_class_uid,
                command.sop_instance_uid if command.command_field == M.C_STORE_RQ else None,
                status,
                comment,
            ),
        )

    # -- DIMSE-N -------------------------------------------------------------

    def handle_n_request(self, command: Command, context_id: int, fragments: list[memoryview]) -> None:
        """Decode and check a DIMSE-N request, hand it to its provider, send the response."""
        field = command.command_field
        assert command.message_id is not None
        affected = field in (M.N_EVENT_REPORT_RQ, M.N_CREATE_RQ)
        sop_class = command.sop_class_uid if affected else command.requested_sop_class_uid
        sop_instance = command.sop_instance_uid if affected else command.requested_sop_instance_uid
        type_id = command.event_type_id if field == M.N_EVENT_REPORT_RQ else command.action_type_id
        context = self.contexts.get(context_id)
        response = self._n_response(command, context_id, context, fragments, sop_class, sop_instance, type_id)
        status = int(response.status)
        if not 0 <= status <= 0xFFFF:
            LOGGER.error("provider answered %s with status %r", M.N_REQUESTS[field], response.status)
            response = NResponse(S.PROCESSING_FAILURE, error_comment="processing failure")
            status = S.PROCESSING_FAILURE
        transfer_syntax = context.transfer_syntax if context is not None else M.IMPLICIT_VR_LE
        data = None
        if response.dataset is not None:
            try:
                data = M.encode_dataset(response.dataset, transfer_syntax)
            except Exception:  # noqa: BLE001 - a provider's broken data set fails this response only
                LOGGER.exception("%s response data set not encodable", M.N_REQUESTS[field])
                status, response = S.PROCESSING_FAILURE, NResponse(S.PROCESSING_FAILURE)
        self.send_message(
            context_id,
            M.encode_n_response(
                field | 0x8000,
                command.message_id,
                sop_class,
                response.sop_instance_uid or sop_instance,
                status,
                error_comment=response.error_comment,
                has_data_set=data is not None,
                type_id=type_id if field in (M.N_EVENT_REPORT_RQ, M.N_ACTION_RQ) else None,
                attribute_identifier_list=response.attribute_identifier_list or (),
            ),
            data,
        )
        LOGGER.info("%s %s from %s: status 0x%04X", M.N_REQUESTS[field], sop_class, self.calling_ae, status)
        self.emit(
            "n_request",
            {"calling_ae_title": self.calling_ae, "operation": M.N_REQUESTS[field], "status": status},
        )
        if response.after is not None:
            response.after()

    def _n_response(
        self,
        command: Command,
        context_id: int,
        context: AcceptedContext | None,
        fragments: list[memoryview],
        sop_class: str | None,
        sop_instance: str | None,
        type_id: int | None,
    ) -> NResponse:
        field = command.command_field
        # Strictly by the table: the storage fallback serves no DIMSE-N.
        provider = self.table.get(context.abstract_syntax) if context is not None else None
        if context is None or provider is None:
            return NResponse(S.SOP_CLASS_NOT_SUPPORTED, error_comment="SOP class not accepted here")
        if sop_class is None or not provider.serves(context.abstract_syntax, sop_class):
            return NResponse(S.NO_SUCH_SOP_CLASS, error_comment="SOP class is not the context's")
        if sop_instance is None and field != M.N_CREATE_RQ:
            return NResponse(S.NO_SUCH_SOP_INSTANCE, error_comment="no SOP Instance UID")
        dataset: Dataset | None = None
        if command.has_data_set:
            try:
                dataset = M.decode_dataset(fragments, context.transfer_syntax)
            except Exception as exc:  # noqa: BLE001 - garbage from the peer
                LOGGER.warning(
                    "undecodable %s data set from %s: %r", M.N_REQUESTS[field], self.calling_ae, exc
                )
                return NResponse(S.PROCESSING_FAILURE, error_comment="cannot decode the data set")
            finally:
                fragments.clear()
        attributes: tuple[int, ...] | None = None
        if command.attribute_identifier_list:
            try:
                attributes = M.attribute_tags(command.attribute_identifier_list)
            except ValueError as exc:
                return NResponse(S.INVALID_ATTRIBUTE_VALUE, error_comment=str(exc))
        assert command.message_id is not None
        request = NRequest(
            command_field=field,
            message_id=command.message_id,
            context_id=context_id,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            transfer_syntax_uid=context.transfer_syntax,
            dataset=dataset,
            event_type_id=type_id if field == M.N_EVENT_REPORT_RQ else None,
            action_type_id=type_id if field == M.N_ACTION_RQ else None,
            attribute_identifier_list=attributes,
            calling_ae_title=self.calling_ae,
        )
        handler = {
            M.N_EVENT_REPORT_RQ: provider.n_event_report,
            M.N_GET_RQ: provider.n_get,
            M.N_SET_RQ: provider.n_set,
            M.N_ACTION_RQ: provider.n_action,
            M.N_CREATE_RQ: provider.n_create,
            M.N_DELETE_RQ: provider.n_delete,
        }[field]
        try:
            return handler(self, request)
        except (ProtocolError, T.PeerGone, PeerAborted):
            raise
        except Exception:  # noqa: BLE001 - a failing request must not kill the association
            LOGGER.exception("%s from %s failed", request.name, self.calling_ae)
            return NResponse(S.PROCESSING_FAILURE, error_comment="processing failure")

    def send_n_event_report(
        self,
        context_id: int,
        sop_class_uid: str,
        sop_instance_uid: str,
        event_type_id: int,
        information: Dataset,
        delivered: Callable[[], None] | None = None,
    ) -> int:
        """Send an N-EVENT-REPORT-RQ on this association; `delivered` runs on a success response.

        The response is not waited for (it arrives with the next messages);
        returns the request's Message ID.
        """
        context = self.contexts.get(context_id)
        transfer_syntax = context.transfer_syntax if context is not None else M.IMPLICIT_VR_LE
        message_id = self.sub_message_id()
        self.pending_reports[message_id] = delivered
        self.send_message(
            context_id,
            M.encode_n_request(
                M.N_EVENT_REPORT_RQ,
                message_id,
                sop_class_uid,
                sop_instance_uid,
                has_data_set=True,
                type_id=event_type_id,
            ),
            M.encode_dataset(information, transfer_syntax),
        )
        return message_id

    # -- Query/Retrieve operations --------------------------------------------

    def run_operation(self) -> None:
        """Serve the deferred C-FIND/C-GET/C-MOVE request to its final response."""
        assert self.deferred is not None
        command, context_id, fragments = self.deferred
        self.deferred = None
        self.in_operation = True
        try:
            context = self.contexts.get(context_id)
            provider = context.provider if context is not None else self.provider_for(command.sop_class_uid)
            if provider is None:
                self.refuse(command, context_id, S.SOP_CLASS_NOT_SUPPORTED, "SOP class not accepted")
            elif command.command_field == M.C_FIND_RQ:
                provider.c_find(self, command, context_id, context, fragments)
            elif command.command_field == M.C_GET_RQ:
                provider.c_get(self, command, context_id, context, fragments)
            else:
                provider.c_move(self, command, context_id, context, fragments)
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
        except (ProtocolError, T.PeerGone, PeerAborted, TimeoutError) as exc:
            self.transport_error = exc
            return True
        return message_id in self.cancelled

    def sub_message_id(self) -> int:
        self.next_message_id = self.next_message_id % 0xFFFF + 1
        return self.next_message_id

    def report_answered(self, command: Command) -> None:
        """N-EVENT-REPORT-RSP to a report of ours: success records it delivered."""
        assert command.message_id_responded_to is not None
        if command.message_id_responded_to not in self.pending_reports:
            raise ProtocolError("N-EVENT-REPORT-RSP for no report of ours", REASON_UNEXPECTED_PDU)
        delivered = self.pending_reports.pop(command.message_id_responded_to)
        if command.status == S.SUCCESS:
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
        if self.state != IDLE:
            LOGGER.warning(
                "A-RELEASE-RQ from %s in the middle of a message; the message is dropped",
                self.calling_ae,
            )
        # Before the A-RELEASE-RP: a peer may associate again the moment it has it.
        self.emit("releasing", {})
        try:
            self.send(RELEASE_RP_PDU)
        except T.PeerGone:
            pass
        T.linger_close(self.sock)
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


def serve_association(
    sock: socket.socket,
    address: tuple[str, int],
    config: AssociationConfig,
    on_store: Callable[[StoreRequest], StoreOutcome],
    accept_association: Callable[[AssociationInfo], str | Rejection | None] = lambda info: None,
    on_event: Callable[[str, dict[str, object]], None] | None = None,
    *,
    on_find: FindCallback | None = None,
    on_retrieve: RetrieveCallback | None = None,
    on_n_action: Callable[[NActionRequest], NActionOutcome] | None = None,
    on_worklist_find: WorklistFindCallback | None = None,
    providers: Sequence[Provider] = (),
    mpps: MppsService | None = None,
    mpps_authorize: Callable[[], None] | None = None,
    printing: PrintService | None = None,
    print_authorize: Callable[[], None] | None = None,
) -> None:
    """Run one whole association on the calling thread and close the socket.

    Parameters
    ----------
    sock : socket.socket
        The accepted connection; its A-ASSOCIATE-RQ is still unread.
    address : tuple of (str, int)
        The peer address as returned by ``accept()``.
    config : AssociationConfig
        What to accept and the timeouts.
    on_store : callable
        Called once per C-STORE-RQ; see
        :class:`~dicomhub.dimse.providers.storage.StorageProvider`.
    accept_association : callable, optional
        Policy hook: returns a rejection reason to refuse the association
        (A-ASSOCIATE-RJ, permanent, calling AE title not recognised) or
        ``None`` to accept it.
    on_event : callable, optional
        Statistics hook called with ``"associated"``, ``"rejected"``,
        ``"releasing"`` (just before the A-RELEASE-RP goes), ``"released"``,
        ``"aborted"``, ``"store"``, ``"echo"``, ``"find"``, ``"get"`` or
        ``"move"`` and a dict of details; exceptions from it are logged and ignored.
    on_find, on_retrieve : callable, optional
        C-FIND, and C-GET / C-MOVE (need ``config.query_retrieve``); see
        :class:`~dicomhub.dimse.providers.query_retrieve.QueryRetrieveProvider`.
    on_n_action : callable, optional
        Storage Commitment (needs ``config.storage_commitment``): called with
        the :class:`NActionRequest`; its :class:`NActionOutcome` gives the
        N-ACTION-RSP status and the N-EVENT-REPORT sent right after it.
    on_worklist_find : callable, optional
        Modality Worklist C-FIND (needs ``config.modality_worklist``); see
        :class:`~dicomhub.dimse.providers.worklist.WorklistProvider`.
    mpps, mpps_authorize : MppsService, callable, optional
        MPPS (needs ``config.modality_performed_procedure_step``), and the check
        that the calling peer may report performed steps (raises ``Forbidden``);
        see :class:`~dicomhub.dimse.providers.mpps.ModalityPerformedProcedureStepProvider`.
    providers : sequence of Provider, optional
        More service classes, registered after :func:`default_providers`
        (so they win a SOP class both name); their SOP classes are accepted
        with their ``transfer_syntaxes`` and both roles.

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
        table = [
            *default_providers(
                config,
                on_store,
                on_find,
                on_retrieve,
                on_n_action,
                mpps=mpps,
                on_worklist_find=on_worklist_find,
                mpps_authorize=mpps_authorize,
                printing=printing,
                print_authorize=print_authorize,
            ),  # fmt: skip
            *providers,
        ]
        association = Association(sock, address, config, table, accept_association, on_event)
        if association.establish():
            association.run()
    except Exception:  # noqa: BLE001 - last line of defence for the listener thread
        LOGGER.exception("association with %s failed unexpectedly", address)
    finally:
        try:
            sock.close()
        except OSError:
            pass
