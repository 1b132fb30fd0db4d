"""The Modality Worklist query: a :class:`~dicomhub.model.worklist.WorklistQuery` as SQL.

One row per scheduled procedure step, joined with its requested procedure,
order and patient of record, filtered in SQL on the typed columns of
:mod:`dicomhub.index.schema.orders` (``ix_sps_worklist`` covers status +
modality + start, ``ix_sps_station`` the station AE title). Only a time of
day without a date is checked in Python, as its SQL differs per dialect.

The patient's demographics are those of record (an ADT update reaches the
worklist), falling back to the order's snapshot where the record has none.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, func, literal, select

from dicomhub.index import engine as engines
from dicomhub.index.compile import like_pattern
from dicomhub.index.schema import (
    imaging_order,
    patient_record,
    requested_procedure,
    scheduled_procedure_step,
)
from dicomhub.model.orders import CodedEntry, StepStatus
from dicomhub.model.query import Matcher, Single, UidList, ValueList, Wildcard
from dicomhub.model.worklist import OFFERED_STATES, WorklistEntry, WorklistQuery

__all__ = ["WorklistRepository"]

_ESCAPE = "!"  # as index.compile.like_pattern escapes
_sps = scheduled_procedure_step
_rp = requested_procedure
_order = imaging_order
_patient = patient_record


def _prefer_record(record: Any, snapshot: Any) -> Any:
    return func.coalesce(func.nullif(record, ""), snapshot)


_PATIENT_NAME = _prefer_record(_patient.c.patient_name, _order.c.patient_name)
_BIRTH_DATE = _prefer_record(_patient.c.patient_birth_date, _order.c.patient_birth_date)
_SEX = _prefer_record(_patient.c.patient_sex, _order.c.patient_sex)

_COLUMNS: dict[str, Any] = {
    "PatientName": _PATIENT_NAME,
    "PatientID": _patient.c.patient_id,
    "IssuerOfPatientID": _patient.c.issuer_of_patient_id,
    "AccessionNumber": _order.c.accession_number,
    "RequestedProcedureID": _rp.c.procedure_id,
    "StudyInstanceUID": _rp.c.study_instance_uid,
    "step.Modality": _sps.c.modality,
    "step.ScheduledStationAETitle": _sps.c.station_ae_title,
    "step.ScheduledPerformingPhysicianName": _sps.c.performing_physician,
    "step.ScheduledProcedureStepID": _sps.c.step_id,
    "step.ScheduledProcedureStepStatus": _sps.c.status,
}
_PERSON_NAMES = frozenset({"PatientName", "step.ScheduledPerformingPhysicianName"})


def _clause(key: str, matcher: Matcher) -> ColumnElement[bool]:
    column = _COLUMNS[key]
    fold = key in _PERSON_NAMES
    if fold:
        # PS3.4 C.2.2.2.1 leaves case for PN to the SCP: insensitive, as the archive's C-FIND.
        column = func.upper(column)

    def norm(value: str) -> str:
        return value.upper() if fold else value

    if isinstance(matcher, Single):
        return column == norm(matcher.value)  # type: ignore[no-any-return]
    if isinstance(matcher, (ValueList, UidList)):
        return column.in_([norm(v) for v in matcher.values])  # type: ignore[no-any-return]
    if isinstance(matcher, Wildcard):
        return column.like(like_pattern(norm(matcher.pattern)), escape=_ESCAPE)  # type: ignore[no-any-return]
    return literal(False)  # pragma: no cover - worklist_query admits no other matcher


def _entry(row: Any) -> WorklistEntry:
    return WorklistEntry(
        patient_name=row.patient_name or "",
        patient_id=row.patient_id,
        issuer_of_patient_id=row.issuer_of_patient_id,
        patient_birth_date=row.patient_birth_date or "",
        patient_sex=row.patient_sex or "",
        accession_number=row.accession_number,
        placer_order_number=row.placer_order_number,
        filler_order_number=row.filler_order_number,
        referring_physician=row.referring_physician,
        reason=row.reason,
        procedure_id=row.procedure_id,
        procedure_description=row.procedure_description,
        procedure_code=CodedEntry(row.code_value, row.code_scheme, row.code_meaning),
        study_instance_uid=row.study_instance_uid,
        priority=row.priority,
        step_id=row.step_id,
        modality=row.modality,
        step_description=row.step_description,
        station_ae_title=row.station_ae_title,
        station_name=row.station_name,
        location=row.location,
        start=row.start_at,
        performing_physician=row.performing_physician,
        protocol_code=CodedEntry(row.protocol_value, row.protocol_scheme, row.protocol_meaning),
        status=StepStatus(row.status),
    )


class WorklistRepository:
    """Scheduled procedure steps as Modality Worklist entries."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @staticmethod
    def statement(query: WorklistQuery) -> Any:
        """The SELECT for ``query`` (exposed for tests and EXPLAIN)."""
        where: list[ColumnElement[bool]] = [_sps.c.status.in_(sorted(s.value for s in OFFERED_STATES))]
        for key, matcher in query.conditions.items():
            where.append(_clause(key, matcher))
        start = query.start
        if start is not None:
            where.append(_sps.c.start_at.is_not(None))
            if start.lower is not None:
                where.append(_sps.c.start_at >= start.lower)
            if start.upper is not None:
                where.append(_sps.c.start_at <= start.upper)
        return (
            select(
                _PATIENT_NAME.label("patient_name"),
                _patient.c.patient_id,
                _patient.c.issuer_of_patient_id,
                _BIRTH_DATE.label("patient_birth_date"),
                _SEX.label("patient_sex"),
                _order.c.accession_number,
                _order.c.placer_order_number,
                _order.c.filler_order_number,
                _order.c.referring_physician,
                _order.c.reason,
                _rp.c.procedure_id,
                _rp.c.description.label("procedure_description"),
                _rp.c.code_value,
                _rp.c.code_scheme,
                _rp.c.code_meaning,
                _rp.c.study_instance_uid,
                _rp.c.priority,
                _sps.c.step_id,
                _sps.c.modality,
                _sps.c.description.label("step_description"),
                _sps.c.station_ae_title,
                _sps.c.station_name,
                _sps.c.location,
                _sps.c.start_at,
                _sps.c.performing_physician,
                _sps.c.protocol_value,
                _sps.c.protocol_scheme,
                _sps.c.protocol_meaning,
                _sps.c.status,
            )
            .select_from(
                _sps.join(_rp, _rp.c.pk == _sps.c.procedure_pk)
                .join(_order, _order.c.pk == _rp.c.order_pk)
                .join(_patient, _patient.c.pk == _order.c.patient_pk)
            )
            .where(and_(*where) if len(where) > 1 else where[0])
            # Earliest first; steps without a start last (NULLs sort differently per dialect).
            .order_by(_sps.c.start_at.is_(None), _sps.c.start_at, _sps.c.pk)
        )

    def find(self, query: WorklistQuery) -> Iterator[WorklistEntry]:
        """The entries matching ``query``, earliest start first.

        Read in one statement and released before the caller sends answers, so a slow
        requestor holds no read transaction open."""
        with engines.read(self.engine) as conn:
            rows = conn.execute(self.statement(query)).all()
        start = query.start
        time_only = start is not None and (start.time_lower is not None or start.time_upper is not None)
        for row in rows:
            entry = _entry(row)
            if time_only and start is not None and not start.contains(entry.start):
                continue
            yield entry
