"""Modality Performed Procedure Step SCP (PS3.4 Annex F.7): the use cases.

An N-CREATE records the step IN PROGRESS and starts the scheduled procedure
steps it names (Scheduled Step Attributes Sequence: Accession Number, and the
Scheduled Procedure Step ID when the order has it); an N-SET to COMPLETED or
DISCONTINUED ends them, through :meth:`OrderService.move_step` so that every
channel obeys one order life cycle. A step that names no known order (IHE's
unscheduled case) is kept and listed as unlinked.

Each change of a linked step queues an HL7 v2 ORM^O01 status message (ORC-1
``SC``, ORC-5 ``IP``/``CM``/``DC``) for ``mpps_hl7_destination``, in the same
transaction as the change; the background process delivers it over MLLP and
retries with backoff, so the DIMSE answer never waits for the order system.

The step is durable before the modality is answered. The order moves after
that commit: when the life cycle refuses the move (the order was cancelled,
or HL7 moved it already), the step is still accepted and the refusal logged,
since the modality's report of what it did is a fact to keep.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable, Sequence

from pydicom.dataset import Dataset

from dicomhub.errors import DicomhubError, InvalidRequest, NotFound
from dicomhub.index.engine import lease
from dicomhub.index.mpps import MppsRepository, OutboxEntry
from dicomhub.model.caller import Caller
from dicomhub.model.identifiers import require_uid
from dicomhub.model.mpps import (
    Hl7Outgoing,
    PerformedProcedureStep,
    PerformedStepStatus,
    ScheduledStepRef,
    apply_n_set,
    check_n_create,
    hl7_status_message,
    scheduled_step_refs,
)
from dicomhub.model.orders import Order, StepStatus
from dicomhub.services.orders import OrderKey, OrderService

__all__ = ["MppsService", "SendHl7"]

LOGGER = logging.getLogger("dicomhub.mpps")

#: Sends one HL7 message to ``host:port`` over MLLP and returns once it is accepted
#: (MSA-1 AA or CA); raises when it is not.
SendHl7 = Callable[[str, str], None]

_FIRST_RETRY = dt.timedelta(seconds=1)
_LONGEST_WAIT = dt.timedelta(minutes=10)
_RETRY_WINDOW = dt.timedelta(days=3)
# The root under which the SCP makes SOP Instance UIDs for an N-CREATE without one:
# 2.25 is the UUID-derived root (PS3.5 B.2), so no registration is needed.
_UUID_ROOT = "2.25."

_ORDER_STATES = {
    PerformedStepStatus.IN_PROGRESS: StepStatus.IN_PROGRESS,
    PerformedStepStatus.COMPLETED: StepStatus.COMPLETED,
    PerformedStepStatus.DISCONTINUED: StepStatus.DISCONTINUED,
}


def _json(ds: Dataset) -> str:
    # Bulk data has no place in an MPPS; anything binary is kept inline.
    return ds.to_json(bulk_data_threshold=1 << 30)


class MppsService:
    """Performed procedure steps: create, set, read, list; status messages out.

    Parameters
    ----------
    repo : MppsRepository
    orders : OrderService
        Moves the scheduled steps the performed ones name.
    hl7_destination : str
        ``host:port`` of the order system's MLLP listener; "" sends nothing.
    sending_application : str
        MSH-3 of the messages (the archive's AE title).
    """

    def __init__(
        self,
        repo: MppsRepository,
        orders: OrderService,
        hl7_destination: str = "",
        sending_application: str = "DICOMHUB",
    ) -> None:
        self.repo = repo
        self.orders = orders
        self.hl7_destination = hl7_destination
        self.sending_application = sending_application

    # ------------------------------------------------------------ links

    def _order_of(self, ref: ScheduledStepRef) -> Order | None:
        if not ref.accession_number:
            return None
        return self.orders.repo.order(accession_number=ref.accession_number)

    @staticmethod
    def _step_id(order: Order, ref: ScheduledStepRef) -> str | None:
        """The step of ``order`` that ``ref`` names; None (every step that can move)
        when it names none the order has."""
        ids = {s.step_id for s in order.steps}
        return ref.scheduled_procedure_step_id if ref.scheduled_procedure_step_id in ids else None

    def _messages(
        self, targets: Sequence[tuple[Order, str | None]], status: PerformedStepStatus, subject: str
    ) -> list[Hl7Outgoing]:
        if not self.hl7_destination:
            return []
        now = dt.datetime.now()
        out = []
        for order, step_id in targets:
            control_id = uuid.uuid4().hex[:20]
            text = hl7_status_message(
                order,
                status,
                control_id,
                now,
                sending_application=self.sending_application,
                step_id=step_id or "",
            )
            out.append(Hl7Outgoing(self.hl7_destination, control_id, text, subject))
        return out

    def _move_orders(
        self, targets: Sequence[tuple[Order, str | None]], status: PerformedStepStatus, caller: Caller
    ) -> None:
        to = _ORDER_STATES[status]
        for order, step_id in targets:
            try:
                if to is StepStatus.COMPLETED and step_id is not None:
                    # A step whose start was never reported (no N-CREATE seen for it) starts first.
                    current = next((s for s in order.steps if s.step_id == step_id), None)
                    if current is not None and current.status is StepStatus.SCHEDULED:
                        self.orders.move_step(
                            OrderKey(order_id=order.order_id), step_id, StepStatus.IN_PROGRESS, caller
                        )
                self.orders.move_step(OrderKey(order_id=order.order_id), step_id, to, caller)
            except DicomhubError as exc:
                LOGGER.warning("MPPS: order %s not moved to %s: %s", order.accession_number, to.value, exc)

    @staticmethod
    def _movable(order: Order, step_id: str | None, to: StepStatus) -> bool:
        """Whether the life cycle lets ``order``'s step (or some step) move to ``to`` now,
        as :meth:`_move_orders` would move it: no status message for a move that cannot happen."""
        steps = [s for s in order.steps if step_id is None or s.step_id == step_id]
        sources = {
            StepStatus.IN_PROGRESS: {StepStatus.SCHEDULED},
            StepStatus.COMPLETED: {StepStatus.IN_PROGRESS, *([StepStatus.SCHEDULED] if step_id else [])},
            StepStatus.DISCONTINUED: {StepStatus.SCHEDULED, StepStatus.IN_PROGRESS},
        }[to]
        return any(s.status in sources for s in steps)

    def _targets(self, step: PerformedProcedureStep) -> list[tuple[Order, str | None]]:
        targets: list[tuple[Order, str | None]] = []
        for ref in step.refs:
            order = self._order_of(ref)
            if order is not None and order.order_id in step.linked_orders:
                targets.append((order, self._step_id(order, ref)))
        return targets

    # ------------------------------------------------------------ N-CREATE, N-SET, N-GET

    def create(
        self, attributes: Dataset, sop_instance_uid: str | None, caller: Caller
    ) -> PerformedProcedureStep:
        """N-CREATE: record a step IN PROGRESS (``sop_instance_uid`` None: one is made)
        and start the scheduled steps it names.

        Raises
        ------
        MissingAttribute, InvalidAttributeValue
            The Attribute List breaks PS3.4 F.7.2.1.
        DuplicatePerformedStep
            A step with this SOP Instance UID exists.
        InvalidRequest
            A SOP Instance UID that is not a UID.
        """
        if sop_instance_uid is None:
            sop_instance_uid = _UUID_ROOT + str(uuid.uuid4().int)
        require_uid(sop_instance_uid, "Affected SOP Instance UID")
        check_n_create(attributes)
        refs = scheduled_step_refs(attributes)
        links: list[tuple[ScheduledStepRef, str]] = []
        targets: list[tuple[Order, str | None]] = []
        for ref in refs:
            order = self._order_of(ref)
            links.append((ref, "" if order is None else order.order_id))
            if order is not None and self._movable(order, self._step_id(order, ref), StepStatus.IN_PROGRESS):
                targets.append((order, self._step_id(order, ref)))
            elif order is not None:
                LOGGER.warning(
                    "MPPS %s: order %s has no step to start (it is %s); linked, not moved",
                    sop_instance_uid,
                    order.accession_number,
                    order.status.value,
                )
        step = PerformedProcedureStep(
            sop_instance_uid=sop_instance_uid,
            status=PerformedStepStatus.IN_PROGRESS,
            refs=refs,
            attributes=_json(attributes),
            calling_ae_title=caller.name,
            modality=str(attributes.get("Modality", "") or ""),
            patient_id=str(attributes.get("PatientID", "") or ""),
        )
        stored = self.repo.create(step, links, self._messages(targets, step.status, sop_instance_uid))
        LOGGER.info(
            "MPPS %s IN PROGRESS from %s (%s)",
            sop_instance_uid,
            caller.who,
            ", ".join(stored.linked_orders) or "unscheduled",
        )
        self._move_orders(targets, step.status, caller)
        return stored

    def set(self, sop_instance_uid: str, modifications: Dataset, caller: Caller) -> PerformedProcedureStep:
        """N-SET: merge ``modifications`` into the step; on COMPLETED or DISCONTINUED,
        end the scheduled steps it is linked to.

        Raises
        ------
        NotFound
            No step with this SOP Instance UID (0x0112).
        PerformedStepFinal
            It is COMPLETED or DISCONTINUED already (0x0110).
        MissingAttribute, InvalidAttributeValue, NoSuchAttribute
            The Modification List breaks PS3.4 F.7.2.2.
        """
        ended: list[tuple[Order, str | None]] = []

        def change(before: PerformedProcedureStep | None) -> tuple[PerformedProcedureStep, list[Hl7Outgoing]]:
            if before is None:
                raise NotFound(f"no performed procedure step {sop_instance_uid}")
            merged, status = apply_n_set(before.dataset(), before.status, modifications)
            after = dataclasses.replace(before, status=status, attributes=_json(merged))
            if status is before.status:
                return after, []
            to = _ORDER_STATES[status]
            ended.extend(t for t in self._targets(before) if self._movable(*t, to))
            return after, self._messages(ended, status, sop_instance_uid)

        stored = self.repo.change(sop_instance_uid, change)
        LOGGER.info("MPPS %s N-SET from %s: %s", sop_instance_uid, caller.who, stored.status.value)
        if ended:
            self._move_orders(ended, stored.status, caller)
        return stored

    def show(self, sop_instance_uid: str, caller: Caller) -> PerformedProcedureStep:
        """The step, for a caller who may read orders (REST, CLI). NotFound when unknown."""
        self.orders._may_read(caller)
        return self.get(sop_instance_uid)

    def get(self, sop_instance_uid: str) -> PerformedProcedureStep:
        """The step, for the modality (N-GET). NotFound when unknown."""
        step = self.repo.get(sop_instance_uid)
        if step is None:
            raise NotFound(f"no performed procedure step {sop_instance_uid}")
        return step

    def steps(
        self,
        caller: Caller,
        *,
        status: Sequence[PerformedStepStatus] = (),
        linked: bool | None = None,
        limit: int = 1000,
    ) -> list[PerformedProcedureStep]:
        """Steps, oldest first; ``linked`` False: only the unscheduled ones. Reading takes
        what reading orders takes."""
        self.orders._may_read(caller)
        if limit < 1:
            raise InvalidRequest("limit must be at least 1")
        found = self.repo.steps(status=status, limit=limit)
        if linked is not None:
            found = [s for s in found if bool(s.linked_orders) is linked]
        return found

    def outbox(self, caller: Caller, limit: int = 100) -> list[dict[str, object]]:
        self.orders._may_read(caller)
        return self.repo.outbox(limit)

    # ------------------------------------------------------------ delivery

    def deliver_due(self, send: SendHl7, now: dt.datetime | None = None) -> int:
        """Try each due message once, in order per destination; return how many were tried.

        A destination's messages go out in the order of the changes they report: while
        its oldest pending message waits for a retry, the newer ones wait too (an order
        system must not read COMPLETED before IN PROGRESS)."""
        now = now or dt.datetime.now(dt.UTC)
        held: set[str] = set()
        tried = 0
        for entry in self.repo.pending():
            destination = entry.message.destination
            if destination in held:
                continue
            if entry.next_attempt_at > now:
                held.add(destination)
                continue
            tried += 1
            if not self._deliver(entry, send, now):
                held.add(destination)
        return tried

    def _deliver(self, entry: OutboxEntry, send: SendHl7, now: dt.datetime) -> bool:
        message = entry.message
        try:
            send(message.destination, message.message)
        except Exception as exc:  # noqa: BLE001 - any failure means: try again later
            wait = min(_FIRST_RETRY * (2**entry.attempts), _LONGEST_WAIT)
            retry_at: dt.datetime | None = now + wait
            if now - entry.created_at > _RETRY_WINDOW:
                retry_at = None
            LOGGER.warning(
                "MPPS status message %s for %s to %s not delivered (%s); %s",
                message.control_id,
                message.subject,
                message.destination,
                exc,
                f"next attempt at {retry_at:%H:%M:%S}" if retry_at else "giving up",
            )
            self.repo.attempt_failed(entry.pk, f"{exc.__class__.__name__}: {exc}", retry_at)
            # A message given up on no longer holds back the newer ones.
            return retry_at is None
        self.repo.delivered(entry.pk)
        LOGGER.info("MPPS status message %s delivered to %s", message.control_id, message.destination)
        return True

    def run_delivery(self, stop: threading.Event, send: SendHl7, idle: float = 1.0) -> None:
        """Loop until ``stop``: deliver due messages (the background process runs this)."""
        while not stop.wait(idle):
            try:
                # One node at a time delivers, so that a message is not sent twice at once.
                with lease(self.repo.engine, "mpps-hl7-delivery") as mine:
                    if mine:
                        self.deliver_due(send)
            except DicomhubError:
                LOGGER.exception("MPPS status delivery failed; retrying")
