"""The repository of the order context (see :mod:`dicomhub.model.orders`; tables in
:mod:`dicomhub.index.schema.orders`).

``patient_record`` holds the demographics of record, one row per Patient ID +
Issuer of Patient ID (the archive's own ``patient`` table stays what the
objects say); ``imaging_order`` one imaging service request (unique Accession
Number) with a snapshot of the demographics it carried; ``requested_procedure``
and ``scheduled_procedure_step`` below it, with the matching keys of the
Modality Worklist as typed columns (modality, station AE title, start,
status); ``patient_merge`` every ADT^A40 received, so that the archive can
apply it to its studies.

An order is saved whole: its procedures and steps are replaced in the same
transaction as the order row, so a reader never sees half an update. Several
changes that must stand or fall together (the ORC groups of one HL7 message)
run inside :meth:`OrderRepository.unit_of_work`: every read and write of the
calling thread then uses that one transaction, committed when the unit ends
and rolled back whole when it raises. Steps
are named by (Accession Number, Scheduled Procedure Step ID), never by their
row key, which a save may change.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from dicomhub.errors import Conflict
from dicomhub.index import engine as engines
from dicomhub.index.schema import (
    imaging_order,
    patient_merge,
    patient_record,
    requested_procedure,
    scheduled_procedure_step,
)
from dicomhub.model.orders import (
    CodedEntry,
    Order,
    Patient,
    PatientMerge,
    PatientRef,
    RequestedProcedure,
    ScheduledProcedureStep,
    StepStatus,
)
from dicomhub.model.timestamps import utc_now

__all__ = ["OrderRepository"]

def _inserted(result: Any) -> int:
    key = result.inserted_primary_key
    if key is None:  # pragma: no cover - every table here has an autoincrement key
        raise RuntimeError("the insert returned no key")
    return int(key[0])


def _patient(row: Any, merged_into: PatientRef | None = None) -> Patient:
    return Patient(
        ref=PatientRef(row.patient_id, row.issuer_of_patient_id),
        patient_name=row.patient_name,
        patient_birth_date=row.patient_birth_date,
        patient_sex=row.patient_sex,
        other_patient_ids=tuple(json.loads(row.other_patient_ids or "[]")),
        resource_id=row.resource_id,
        merged_into=merged_into,
        updated_at=row.updated_at,
    )


def _patient_values(p: Patient) -> dict[str, Any]:
    return {
        "patient_name": p.patient_name,
        "patient_birth_date": p.patient_birth_date,
        "patient_sex": p.patient_sex,
        "other_patient_ids": json.dumps(list(p.other_patient_ids)),
    }


class OrderRepository:
    """Patients of record, orders and merges in the index."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # The open unit of work of each thread (the HL7 listener, the web server
        # and the DIMSE providers call in from their own threads).
        self._unit = threading.local()

    @contextlib.contextmanager
    def unit_of_work(self) -> Iterator[None]:
        """Run the calls inside in one write transaction: all of them or none.

        Nested units join the outer one. An integrity error inside (two orders
        with one Accession Number) becomes :class:`Conflict`, as it does for a
        single change.
        """
        if getattr(self._unit, "conn", None) is not None:
            yield
            return
        try:
            with engines.write(self.engine) as conn:
                self._unit.conn = conn
                try:
                    yield
                finally:
                    self._unit.conn = None
        except IntegrityError as exc:
            raise Conflict(f"an order with this Accession Number exists already: {exc.orig}") from None

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        conn = getattr(self._unit, "conn", None)
        if conn is not None:
            yield conn
            return
        with engines.write(self.engine) as conn:
            yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        # Inside a unit, reads see its own uncommitted changes (an order placed by an
        # earlier group of the same message).
        conn = getattr(self._unit, "conn", None)
        if conn is not None:
            yield conn
            return
        with engines.read(self.engine) as conn:
            yield conn

    # ------------------------------------------------------------ patients

    def _patient_row(self, conn: Connection, ref: PatientRef) -> Any:
        return conn.execute(
            select(patient_record).where(
                patient_record.c.patient_id == ref.patient_id,
                patient_record.c.issuer_of_patient_id == ref.issuer_of_patient_id,
            )
        ).first()

    def _to_patient(self, conn: Connection, row: Any) -> Patient:
        merged = None
        if row.merged_into_pk is not None:
            target = conn.execute(
                select(patient_record.c.patient_id, patient_record.c.issuer_of_patient_id).where(
                    patient_record.c.pk == row.merged_into_pk
                )
            ).one()
            merged = PatientRef(target.patient_id, target.issuer_of_patient_id)
        return _patient(row, merged)

    def _ensure_patient(self, conn: Connection, p: Patient, *, overwrite: bool) -> int:
        """The key of ``p``'s row, inserted when missing (and its demographics replaced
        when ``overwrite``)."""
        row = self._patient_row(conn, p.ref)
        now = utc_now()
        if row is None:
            result = conn.execute(
                insert(patient_record).values(
                    resource_id=p.resource_id or uuid.uuid4().hex,
                    patient_id=p.ref.patient_id,
                    issuer_of_patient_id=p.ref.issuer_of_patient_id,
                    **_patient_values(p),
                    created_at=now,
                    updated_at=now,
                )
            )
            return _inserted(result)
        if overwrite:
            conn.execute(
                update(patient_record)
                .where(patient_record.c.pk == row.pk)
                .values(**_patient_values(p), updated_at=now)
            )
        return int(row.pk)

    def put_patient(
        self, p: Patient, also: Callable[[Connection], None] | None = None
    ) -> tuple[Patient, bool]:
        """Insert or update the demographics of ``p.ref``; (the stored patient, created).
        ``also``: more to change in the same transaction (the archive's studies)."""
        with self._write() as conn:
            existed = self._patient_row(conn, p.ref) is not None
            pk = self._ensure_patient(conn, p, overwrite=True)
            if also is not None:
                also(conn)
            row = conn.execute(select(patient_record).where(patient_record.c.pk == pk)).one()
            return self._to_patient(conn, row), not existed

    def patient(self, ref: PatientRef) -> Patient | None:
        with self._read() as conn:
            row = self._patient_row(conn, ref)
            return None if row is None else self._to_patient(conn, row)

    def patient_by_resource_id(self, resource_id: str) -> Patient | None:
        with self._read() as conn:
            row = conn.execute(
                select(patient_record).where(patient_record.c.resource_id == resource_id)
            ).first()
            return None if row is None else self._to_patient(conn, row)

    def patients(self, limit: int = 1000) -> list[Patient]:
        with self._read() as conn:
            rows = conn.execute(
                select(patient_record)
                .order_by(patient_record.c.patient_id, patient_record.c.issuer_of_patient_id)
                .limit(limit)
            ).all()
            return [self._to_patient(conn, r) for r in rows]

    def merge(
        self, m: PatientMerge, surviving: Patient, also: Callable[[Connection], None] | None = None
    ) -> int:
        """Record ``m``: the surviving patient exists afterwards (with ``surviving``'s
        demographics), the prior one (when known) points at it, and the orders of the
        prior patient move to it. Returns how many orders moved. ``also``: more to
        change in the same transaction (the archive's studies)."""
        with self._write() as conn:
            if also is not None:
                also(conn)
            target = self._ensure_patient(conn, surviving, overwrite=True)
            prior = self._patient_row(conn, m.prior)
            moved = 0
            if prior is not None:
                conn.execute(
                    update(patient_record)
                    .where(patient_record.c.pk == prior.pk)
                    .values(merged_into_pk=target, updated_at=utc_now())
                )
                moved = conn.execute(
                    update(imaging_order)
                    .where(imaging_order.c.patient_pk == prior.pk)
                    .values(patient_pk=target, updated_at=utc_now())
                ).rowcount
                # Patients merged into the prior one earlier now point at the survivor.
                conn.execute(
                    update(patient_record)
                    .where(patient_record.c.merged_into_pk == prior.pk)
                    .values(merged_into_pk=target)
                )
            conn.execute(
                insert(patient_merge).values(
                    surviving_patient_id=m.surviving.patient_id,
                    surviving_issuer=m.surviving.issuer_of_patient_id,
                    prior_patient_id=m.prior.patient_id,
                    prior_issuer=m.prior.issuer_of_patient_id,
                    orders_moved=moved,
                    source=m.source,
                    merged_at=utc_now(),
                )
            )
        return int(moved)

    def merges(self) -> list[PatientMerge]:
        with self._read() as conn:
            rows = conn.execute(select(patient_merge).order_by(patient_merge.c.pk)).all()
        return [
            PatientMerge(
                PatientRef(r.surviving_patient_id, r.surviving_issuer),
                PatientRef(r.prior_patient_id, r.prior_issuer),
                r.source,
                r.merged_at,
            )
            for r in rows
        ]

    # ------------------------------------------------------------ orders

    def _load(self, conn: Connection, row: Any) -> Order:
        patient = conn.execute(
            select(patient_record.c.patient_id, patient_record.c.issuer_of_patient_id).where(
                patient_record.c.pk == row.patient_pk
            )
        ).one()
        procedures = []
        for p in conn.execute(
            select(requested_procedure)
            .where(requested_procedure.c.order_pk == row.pk)
            .order_by(requested_procedure.c.pk)
        ).all():
            steps = tuple(
                ScheduledProcedureStep(
                    step_id=s.step_id,
                    modality=s.modality,
                    description=s.description,
                    station_ae_title=s.station_ae_title,
                    station_name=s.station_name,
                    location=s.location,
                    start=s.start_at,
                    performing_physician=s.performing_physician,
                    protocol_code=CodedEntry(s.protocol_value, s.protocol_scheme, s.protocol_meaning),
                    status=StepStatus(s.status),
                )
                for s in conn.execute(
                    select(scheduled_procedure_step)
                    .where(scheduled_procedure_step.c.procedure_pk == p.pk)
                    .order_by(scheduled_procedure_step.c.pk)
                ).all()
            )
            procedures.append(
                RequestedProcedure(
                    procedure_id=p.procedure_id,
                    description=p.description,
                    code=CodedEntry(p.code_value, p.code_scheme, p.code_meaning),
                    study_instance_uid=p.study_instance_uid,
                    priority=p.priority,
                    steps=steps,
                )
            )
        return Order(
            accession_number=row.accession_number,
            patient=PatientRef(patient.patient_id, patient.issuer_of_patient_id),
            placer_order_number=row.placer_order_number,
            filler_order_number=row.filler_order_number,
            referring_physician=row.referring_physician,
            reason=row.reason,
            patient_name=row.patient_name,
            patient_birth_date=row.patient_birth_date,
            patient_sex=row.patient_sex,
            procedures=tuple(procedures),
            order_id=row.order_id,
            source=row.source,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def _find(
        self,
        conn: Connection,
        *,
        order_id: str = "",
        accession_number: str = "",
        placer: str = "",
        lock: bool = False,
    ) -> Any:
        query = select(imaging_order)
        if order_id:
            query = query.where(imaging_order.c.order_id == order_id)
        elif accession_number:
            query = query.where(imaging_order.c.accession_number == accession_number)
        elif placer:
            query = query.where(imaging_order.c.placer_order_number == placer)
        else:
            return None
        if lock and engines.is_postgresql(conn):
            query = query.with_for_update()  # SQLite: the write transaction is BEGIN IMMEDIATE already
        return conn.execute(query.order_by(imaging_order.c.pk)).first()

    def order(self, *, order_id: str = "", accession_number: str = "", placer: str = "") -> Order | None:
        """The order with this id, else Accession Number, else placer order number."""
        with self._read() as conn:
            row = self._find(conn, order_id=order_id, accession_number=accession_number, placer=placer)
            return None if row is None else self._load(conn, row)

    def orders(
        self,
        *,
        status: Sequence[StepStatus] = (),
        patient: PatientRef | None = None,
        limit: int = 1000,
    ) -> list[Order]:
        query = select(imaging_order).order_by(imaging_order.c.pk).limit(limit)
        if status:
            query = query.where(imaging_order.c.status.in_([s.value for s in status]))
        with self._read() as conn:
            if patient is not None:
                row = self._patient_row(conn, patient)
                if row is None:
                    return []
                query = query.where(imaging_order.c.patient_pk == row.pk)
            return [self._load(conn, r) for r in conn.execute(query).all()]

    def _write_children(self, conn: Connection, order_pk: int, order: Order) -> None:
        conn.execute(delete(requested_procedure).where(requested_procedure.c.order_pk == order_pk))
        for p in order.procedures:
            procedure_pk = _inserted(
                conn.execute(
                    insert(requested_procedure).values(
                        order_pk=order_pk,
                        procedure_id=p.procedure_id,
                        description=p.description,
                        code_value=p.code.value,
                        code_scheme=p.code.scheme,
                        code_meaning=p.code.meaning,
                        study_instance_uid=p.study_instance_uid,
                        priority=p.priority,
                    )
                )
            )
            if p.steps:
                conn.execute(
                    insert(scheduled_procedure_step),
                    [
                        {
                            "procedure_pk": procedure_pk,
                            "step_id": s.step_id,
                            "modality": s.modality,
                            "description": s.description,
                            "station_ae_title": s.station_ae_title,
                            "station_name": s.station_name,
                            "location": s.location,
                            "start_at": s.start,
                            "performing_physician": s.performing_physician,
                            "protocol_value": s.protocol_code.value,
                            "protocol_scheme": s.protocol_code.scheme,
                            "protocol_meaning": s.protocol_code.meaning,
                            "status": s.status.value,
                        }
                        for s in p.steps
                    ],
                )

    def _order_values(self, order: Order, patient_pk: int) -> dict[str, Any]:
        return {
            "accession_number": order.accession_number,
            "placer_order_number": order.placer_order_number,
            "filler_order_number": order.filler_order_number,
            "patient_pk": patient_pk,
            "patient_name": order.patient_name,
            "patient_birth_date": order.patient_birth_date,
            "patient_sex": order.patient_sex,
            "referring_physician": order.referring_physician,
            "reason": order.reason,
            "status": order.status.value,
        }

    def change_order(
        self,
        find: dict[str, str],
        change: Callable[[Order | None], Order],
        demographics: Patient | None = None,
    ) -> tuple[Order | None, Order]:
        """Read the order ``find`` names (``order_id``, ``accession_number`` or ``placer``;
        None when there is none), write ``change(it)`` in the same transaction (inserted
        when it was new), and return (before, after).

        ``demographics``: the patient of record to create (or, when given with new
        values, update) alongside; without it the order's patient is created from
        the order's snapshot when missing.
        """
        try:
            return self._change_order(find, change, demographics)
        except IntegrityError as exc:
            # Two orders with one Accession Number (or a race that created it twice).
            raise Conflict(f"an order with this Accession Number exists already: {exc.orig}") from None

    def _change_order(
        self,
        find: dict[str, str],
        change: Callable[[Order | None], Order],
        demographics: Patient | None,
    ) -> tuple[Order | None, Order]:
        now = utc_now()
        with self._write() as conn:
            row = self._find(conn, lock=True, **find)
            before = None if row is None else self._load(conn, row)
            after = change(before)
            patient = demographics or Patient(
                after.patient, after.patient_name, after.patient_birth_date, after.patient_sex
            )
            patient_pk = self._ensure_patient(conn, patient, overwrite=demographics is not None)
            if row is None:
                order_id = after.order_id or uuid.uuid4().hex
                order_pk = _inserted(
                    conn.execute(
                        insert(imaging_order).values(
                            order_id=order_id,
                            **self._order_values(after, patient_pk),
                            source=after.source,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                )
            else:
                order_pk = row.pk
                conn.execute(
                    update(imaging_order)
                    .where(imaging_order.c.pk == order_pk)
                    .values(**self._order_values(after, patient_pk), updated_at=now)
                )
            self._write_children(conn, int(order_pk), after)
            stored = conn.execute(select(imaging_order).where(imaging_order.c.pk == order_pk)).one()
            return before, self._load(conn, stored)

    def accession_taken(self, accession_number: str, other_than: str = "") -> bool:
        with self._read() as conn:
            row = conn.execute(
                select(imaging_order.c.order_id).where(imaging_order.c.accession_number == accession_number)
            ).first()
        return row is not None and row.order_id != other_than
