"""Order context in: orders and patients of record from HL7 v2, FHIR, the CLI and REST.

Every channel calls the same use cases, so the state rules of
:mod:`dicomhub.model.orders` and access control hold for all of them:

- writing (place, replace, cancel, discontinue, change status; create, update
  and merge patients) needs :attr:`Action.SCHEDULE`;
- reading needs ``query`` at the archive scope, or ``schedule`` (an order is
  not a study: a label or patient scoped grant does not reach it).

Each change is audited (Order Record / Patient Record, PS3.15 A.5.3.9-10)
with its outcome, refusals included. Changes made inside
:meth:`OrderService.unit_of_work` (the ORC groups of one HL7 message) stand or
fall together; their audit records are written when the unit ends, and a
change a later failure rolled back is recorded as not applied. The Modality Worklist and MPPS providers
read and move orders through :meth:`OrderService.orders` and
:meth:`OrderService.move_step`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator, Sequence

from dicomhub.errors import Conflict, DicomhubError, InvalidRequest, NotFound
from dicomhub.index.coercion import ArchivePatientChange
from dicomhub.index.orders import OrderRepository
from dicomhub.model.access import Action
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditEvent, AuditOutcome, AuditRecorder
from dicomhub.model.caller import Caller
from dicomhub.model.orders import (
    IllegalTransition,
    Order,
    Patient,
    PatientMerge,
    PatientRef,
    StepStatus,
    cancel,
    check_order,
    check_patient,
    complete,
    discontinue,
    start,
)
from dicomhub.services.access import Forbidden
from dicomhub.services.coercion import ArchivePatients

__all__ = ["OrderKey", "OrderService"]

LOGGER = logging.getLogger("dicomhub.orders")


@dataclasses.dataclass(frozen=True, slots=True)
class OrderKey:
    """How a request names an order: its id (REST, FHIR, CLI), its Accession Number,
    or the placer's order number (HL7 ORC-2); the first one given is used."""

    order_id: str = ""
    accession_number: str = ""
    placer: str = ""

    def __post_init__(self) -> None:
        if not (self.order_id or self.accession_number or self.placer):
            raise InvalidRequest("name the order by its id, Accession Number or placer order number")

    def find(self) -> dict[str, str]:
        for name in ("order_id", "accession_number", "placer"):
            value = getattr(self, name)
            if value:
                return {name: value}
        return {}  # pragma: no cover - __post_init__ refuses it

    def __str__(self) -> str:
        return self.order_id or self.accession_number or f"placer {self.placer}"


def _checked_order(order: Order) -> Order:
    try:
        return check_order(order)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc


def _checked_patient(patient: Patient) -> Patient:
    try:
        return check_patient(patient)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc


def _carry_states(before: Order, after: Order) -> Order:
    """``after`` (a replacement) with the states its steps had in ``before``: a
    replacement changes what is scheduled, never how far a step got. A step that
    started may not disappear."""
    states = {s.step_id: s.status for s in before.steps}
    kept = {s.step_id for s in after.steps}
    for step in before.steps:
        if step.step_id not in kept and step.status is not StepStatus.SCHEDULED:
            raise IllegalTransition(
                f"scheduled procedure step {step.step_id} is {step.status.value}: it cannot be removed"
            )
    return dataclasses.replace(
        after,
        procedures=tuple(
            dataclasses.replace(
                p,
                steps=tuple(dataclasses.replace(s, status=states.get(s.step_id, s.status)) for s in p.steps),
            )
            for p in after.procedures
        ),
    )


class OrderService:
    """Orders and patients of record; see the module docstring."""

    def __init__(
        self,
        repo: OrderRepository,
        audit: AuditRecorder | None = None,
        archive: ArchivePatients | None = None,
    ) -> None:
        """``archive``: carries patient updates and merges to the archive's studies."""
        self.repo = repo
        self.audit = audit
        # Called with an order just placed or replaced, after its commit (linking
        # stored studies to it); a failure there is logged, never the order's.
        self.placed: list[Callable[[Order], None]] = []
        self.archive = archive
        # Per thread: the audit events of the open unit of work, written at its end.
        self._unit = threading.local()

    @contextlib.contextmanager
    def unit_of_work(self) -> Iterator[None]:
        """The changes made inside are one transaction: all applied, or none.

        The ``placed`` listeners hear of the orders after the commit, and not at
        all when the unit is rolled back. The audit events wait for the outcome:
        on failure, the changes that had succeeded are recorded as rolled back
        with the reason, so the audit trail never claims an order that the index
        does not hold. Nested units join.
        """
        if getattr(self._unit, "events", None) is not None:
            yield
            return
        events: list[AuditEvent] = []
        changed: list[Order] = []
        self._unit.events, self._unit.changed = events, changed
        try:
            with self.repo.unit_of_work():
                yield
        except BaseException as exc:
            self._unit.events = self._unit.changed = None
            reason = f"rolled back with the rest of its message: {exc}"[:500]
            for event in events:
                if event.outcome is AuditOutcome.SUCCESS:
                    event = dataclasses.replace(
                        event, outcome=AuditOutcome.MINOR_FAILURE, detail={**event.detail, "reason": reason}
                    )
                self._write_audit(event)
            raise
        self._unit.events = self._unit.changed = None
        for event in events:
            self._write_audit(event)
        for order in changed:  # committed now: what listens may read it on its own connections
            self._notify(order)

    # ------------------------------------------------------------ access and audit

    @staticmethod
    def _may_write(caller: Caller, what: str) -> None:
        if not caller.access.may(Action.SCHEDULE):
            raise Forbidden(f"{caller.who} may not {what} (needs the schedule action, e.g. role scheduler)")

    @staticmethod
    def _may_read(caller: Caller) -> None:
        access = caller.access
        if access.study_filter(Action.QUERY).everything or access.may(Action.SCHEDULE):
            return
        raise Forbidden(f"{caller.who} may not read orders (needs query at the archive scope, or schedule)")

    def check_read(self, caller: Caller) -> None:
        """Raise Forbidden unless ``caller`` may read orders (also what goes with them)."""
        self._may_read(caller)

    def check_write(self, caller: Caller, what: str) -> None:
        """Raise Forbidden unless ``caller`` may change orders (``what``: for the message)."""
        self._may_write(caller, what)

    def _notify(self, order: Order) -> Order:
        pending = getattr(self._unit, "changed", None)
        if pending is not None:
            pending.append(order)  # told once the unit of work has committed
            return order
        for listener in self.placed:
            try:
                listener(order)
            except Exception:
                LOGGER.exception("after order %s changed", order.accession_number)
        return order

    def _record(
        self,
        action: AuditAction,
        caller: Caller,
        outcome: AuditOutcome,
        detail: dict[str, object],
        studies: Sequence[AuditedStudy] = (),
    ) -> None:
        event = AuditEvent(action, outcome, caller, tuple(studies), detail)
        pending = getattr(self._unit, "events", None)
        if pending is not None:
            pending.append(event)
        else:
            self._write_audit(event)

    def _record_archive(
        self, change: ArchivePatientChange | None, caller: Caller, detail: dict[str, object]
    ) -> None:
        # Through _record, so that inside a unit of work it waits for the outcome.
        found = ArchivePatients.audited(change, detail)
        if found is not None:
            self._record(AuditAction.PATIENT_RECORD, caller, AuditOutcome.SUCCESS, found[0], found[1])

    def _write_audit(self, event: AuditEvent) -> None:
        if self.audit is not None:
            self.audit.record(event)

    def _audited(
        self,
        action: AuditAction,
        caller: Caller,
        detail: dict[str, object],
        run: Callable[[], Order | Patient | int],
    ) -> Order | Patient | int:
        """Run a change and audit it; a refusal is audited with its reason and re-raised."""
        try:
            result = run()
        except DicomhubError as exc:
            outcome = (
                AuditOutcome.SERIOUS_FAILURE if isinstance(exc, Forbidden) else AuditOutcome.MINOR_FAILURE
            )
            self._record(action, caller, outcome, {**detail, "reason": str(exc)[:500]})
            raise
        studies: tuple[AuditedStudy, ...] = ()
        if isinstance(result, Order):
            detail = {**detail, "order": result.order_id, "accession_number": result.accession_number,
                      "status": result.status.value}  # fmt: skip
            studies = tuple(
                AuditedStudy(p.study_instance_uid, result.patient.patient_id)
                for p in result.procedures
                if p.study_instance_uid
            )
        self._record(action, caller, AuditOutcome.SUCCESS, detail, studies)
        return result

    # ------------------------------------------------------------ patients

    def patient(self, caller: Caller, *, resource_id: str = "", ref: PatientRef | None = None) -> Patient:
        """The patient of record with this id (REST, FHIR) or Patient ID + issuer."""
        self._may_read(caller)
        found = self.repo.patient_by_resource_id(resource_id) if resource_id else None
        if found is None and ref is not None:
            found = self.repo.patient(ref)
        if found is None:
            raise NotFound(f"no patient of record {resource_id or ref}")
        return found

    def patients(self, caller: Caller, limit: int = 1000) -> list[Patient]:
        self._may_read(caller)
        return self.repo.patients(limit)

    def put_patient(self, patient: Patient, caller: Caller, *, resource_id: str = "") -> tuple[Patient, bool]:
        """Create the patient of record, or replace its demographics (ADT A01/A04/A08,
        FHIR Patient); (patient, created). ``resource_id``: the id the resource is
        PUT at (FHIR update-as-create), which must then be this patient's."""
        created = [False]
        change: list[ArchivePatientChange | None] = [None]

        def run() -> Patient:
            self._may_write(caller, "change patients of record")
            checked = _checked_patient(patient)
            if resource_id:
                at = self.repo.patient_by_resource_id(resource_id)
                if at is not None and at.ref != checked.ref:
                    raise Conflict(
                        f"patient resource {resource_id} is Patient ID {at.ref}, not {checked.ref}"
                    )
                checked = dataclasses.replace(checked, resource_id=resource_id)
            change[0] = self.archive.update(checked, caller) if self.archive is not None else None
            stored, created[0] = self.repo.put_patient(checked, change[0])
            return stored

        detail: dict[str, object] = {"patient_id": patient.ref.patient_id,
                                     "issuer_of_patient_id": patient.ref.issuer_of_patient_id}  # fmt: skip
        result = self._audited(AuditAction.PATIENT_RECORD, caller, detail, run)
        assert isinstance(result, Patient)
        if self.archive is not None:
            self._record_archive(change[0], caller, detail)
        return result, created[0]

    def merge_patients(self, surviving: Patient, prior: PatientRef, caller: Caller, source: str) -> int:
        """ADT^A40: ``prior`` becomes ``surviving`` (created with these demographics when
        unknown); the prior patient's orders move, and with the archive wired its studies
        too. The merge is recorded when the prior patient has no record here but the
        archive's studies carry it; NotFound when neither knows it (with no archive
        wired, the merge is recorded regardless)."""

        change: list[ArchivePatientChange | None] = [None]

        def run() -> int:
            self._may_write(caller, "merge patients")
            checked = _checked_patient(surviving)
            if not prior.patient_id.strip():
                raise InvalidRequest("the prior patient needs a Patient ID")
            if prior == checked.ref:
                raise InvalidRequest(f"patient {prior} cannot be merged into itself")
            unknown = self.archive is not None and not self.archive.knows(prior)
            if unknown and self.repo.patient(prior) is None:
                raise NotFound(f"no patient {prior} to merge: not a patient of record, and no stored study")
            change[0] = self.archive.merge(checked, prior, caller) if self.archive is not None else None
            return self.repo.merge(PatientMerge(checked.ref, prior, source), checked, change[0])

        detail: dict[str, object] = {"merge": True, "patient_id": surviving.ref.patient_id,
                                     "prior_patient_id": prior.patient_id,
                                     "prior_issuer_of_patient_id": prior.issuer_of_patient_id}  # fmt: skip
        result = self._audited(AuditAction.PATIENT_RECORD, caller, detail, run)
        assert isinstance(result, int)
        if self.archive is not None:
            self._record_archive(change[0], caller, detail)
        return result

    def merges(self, caller: Caller) -> list[PatientMerge]:
        self._may_read(caller)
        return self.repo.merges()

    # ------------------------------------------------------------ orders

    def order(self, key: OrderKey, caller: Caller) -> Order:
        self._may_read(caller)
        found = self.repo.order(**key.find())
        if found is None:
            raise NotFound(f"no order {key}")
        return found

    def orders(
        self,
        caller: Caller,
        *,
        status: Sequence[StepStatus] = (),
        patient: PatientRef | None = None,
        limit: int = 1000,
    ) -> list[Order]:
        self._may_read(caller)
        return self.repo.orders(status=status, patient=patient, limit=limit)

    def _change(
        self,
        caller: Caller,
        what: str,
        key: OrderKey,
        change: Callable[[Order | None], Order],
        demographics: Patient | None = None,
        action_code: str = "U",
    ) -> Order:
        def run() -> Order:
            self._may_write(caller, what)
            if demographics is not None:
                _checked_patient(demographics)
            _before, after = self.repo.change_order(key.find(), change, demographics)
            return after

        detail: dict[str, object] = {"change": what, "key": str(key), "action_code": action_code}
        result = self._audited(AuditAction.ORDER_RECORD, caller, detail, run)
        assert isinstance(result, Order)
        return result

    def place_order(self, order: Order, caller: Caller, demographics: Patient | None = None) -> Order:
        """A new order (HL7 ORC-1 NW, FHIR create, ``dicomhub order add``): all its steps
        scheduled. Conflict when its Accession Number (or placer order number) is known."""
        key = OrderKey(accession_number=order.accession_number or "-")

        def change(before: Order | None) -> Order:
            if before is not None:
                raise Conflict(f"an order with Accession Number {order.accession_number} exists already")
            if order.placer_order_number and self.repo.order(placer=order.placer_order_number) is not None:
                raise Conflict(
                    f"an order with placer order number {order.placer_order_number} exists already"
                )
            fresh = dataclasses.replace(
                order,
                procedures=tuple(
                    dataclasses.replace(
                        p, steps=tuple(dataclasses.replace(s, status=StepStatus.SCHEDULED) for s in p.steps)
                    )
                    for p in order.procedures
                ),
            )
            return _checked_order(fresh)

        return self._notify(self._change(caller, "place order", key, change, demographics, action_code="C"))

    def replace_order(
        self,
        key: OrderKey,
        order: Order,
        caller: Caller,
        demographics: Patient | None = None,
        *,
        create: bool = False,
    ) -> Order:
        """Replace what is ordered (HL7 ORC-1 XO, FHIR update): the steps keep their
        states; an order that is over cannot change. ``create``: make it when missing
        (FHIR update-as-create), else NotFound."""

        def change(before: Order | None) -> Order:
            if before is None:
                if not create:
                    raise NotFound(f"no order {key}")
                return _checked_order(dataclasses.replace(order, order_id=key.order_id or order.order_id))
            if before.status.final:
                raise IllegalTransition(
                    f"order {before.accession_number} is {before.status.value}: it cannot change"
                )
            if order.accession_number != before.accession_number and self.repo.accession_taken(
                order.accession_number, before.order_id
            ):
                raise Conflict(f"Accession Number {order.accession_number} belongs to another order")
            merged = dataclasses.replace(
                _carry_states(before, order),
                order_id=before.order_id,
                source=before.source,
                placer_order_number=order.placer_order_number or before.placer_order_number,
            )
            return _checked_order(merged)

        return self._notify(self._change(caller, "replace order", key, change, demographics))

    def cancel_order(self, key: OrderKey, caller: Caller) -> Order:
        """Cancel before any step started (HL7 ORC-1 CA); IllegalTransition after."""
        return self._change(caller, "cancel order", key, lambda before: cancel(self._known(key, before)))

    def discontinue_order(self, key: OrderKey, caller: Caller, step_id: str | None = None) -> Order:
        """Stop the order's open steps, or one step (HL7 ORC-1 DC)."""
        return self._change(
            caller, "discontinue order", key, lambda before: discontinue(self._known(key, before), step_id)
        )

    def move_step(self, key: OrderKey, step_id: str | None, to: StepStatus, caller: Caller) -> Order:
        """Move one step (or, with ``step_id`` None, every step that can) to ``to``:
        HL7 ORC-1 SC with ORC-5, and the MPPS provider's N-CREATE / N-SET."""

        def change(before: Order | None) -> Order:
            order = self._known(key, before)
            if to is StepStatus.CANCELLED:
                return cancel(order)
            if to is StepStatus.DISCONTINUED:
                return discontinue(order, step_id)
            moves = {StepStatus.IN_PROGRESS: (start, StepStatus.SCHEDULED),
                     StepStatus.COMPLETED: (complete, StepStatus.IN_PROGRESS)}  # fmt: skip
            if to not in moves:
                raise InvalidRequest(f"a step cannot be set to {to.value}")
            move, source = moves[to]
            if step_id is not None:
                return move(order, step_id)
            ids = [s.step_id for s in order.steps if s.status is source]
            if not ids:
                raise IllegalTransition(
                    f"order {order.accession_number} has no step that can become {to.value}"
                )
            for sid in ids:
                order = move(order, sid)
            return order

        return self._change(caller, f"set {to.value.lower()}", key, change)

    @staticmethod
    def _known(key: OrderKey, before: Order | None) -> Order:
        if before is None:
            raise NotFound(f"no order {key}")
        return before
