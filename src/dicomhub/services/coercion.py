"""Patient updates and merges reach the archive; patient coercion on the way out.

*Which archive patient an update reaches.* The index files studies under a
Patient ID alone (it records no Issuer of Patient ID). A patient of record
(Patient ID + issuer) therefore reaches the archive patient with the same
Patient ID only when its issuer is empty or the configured
``patient_id_issuer`` (the issuer the archive's own Patient IDs belong to);
an update from another issuer's namespace changes the patient of record only,
since the same number may name someone else here.

*Same transaction.* The change runs inside the orders store's transaction
(:class:`ArchivePatientChange` handed to the order repository): updating the
archive patient row is one row, and the coercion records are one row per study
of that patient, which stays small for one patient. So the patient of record,
the index and the coercion records change together or not at all, and nothing
needs a job that survives a restart.

*On the way out.* :func:`coerce_part10` gives a copy of a stored object the
Patient module on record (:func:`dicomhub.model.coercion.coerce_patient`);
retrieval (C-GET, C-MOVE, WADO-RS, metadata) looks up the coercions of the
studies it sends once per request, so a study without one pays one indexed
lookup per request and its bytes leave untouched.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Iterable

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicomhub.errors import InvalidRequest, NotFound, StorageError
from dicomhub.index.coercion import ArchivePatientChange, PatientCoercionRepository
from dicomhub.index.orders import OrderRepository
from dicomhub.model.access import Action
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditEvent, AuditOutcome, AuditRecorder
from dicomhub.model.caller import Caller
from dicomhub.model.coercion import PatientCoercion, coerce_patient
from dicomhub.model.identifiers import require_uid
from dicomhub.model.orders import Patient, PatientRef, check_patient
from dicomhub.model.records import InstanceRow
from dicomhub.model.timestamps import utc_now
from dicomhub.services.access import Forbidden

__all__ = ["ArchivePatients", "coerce_part10"]

LOGGER = logging.getLogger("dicomhub.coercion")


def coerce_part10(data: bytes, coercion: PatientCoercion) -> bytes:
    """The Part 10 object ``data`` with the Patient module of ``coercion`` (same
    transfer syntax); ``data`` itself when it already carries those values."""
    try:
        ds = dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, ValueError, EOFError) as exc:
        raise StorageError(f"cannot read a stored object to correct its patient: {exc}") from exc
    if not coerce_patient(ds, coercion):
        return data
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _system(caller: Caller) -> str:
    return f"dicomhub {caller.channel.value} {caller.name}".strip()[:64]


class ArchivePatients:
    """The archive side of patient updates, merges and operator corrections."""

    def __init__(
        self,
        repo: PatientCoercionRepository,
        orders: OrderRepository | None = None,
        audit: AuditRecorder | None = None,
        *,
        issuer: str = "",
    ) -> None:
        self.repo = repo
        self.orders = orders
        self.audit = audit
        self.issuer = issuer

    def reaches(self, ref: PatientRef) -> bool:
        """True when a patient of record ``ref`` is the archive's patient with its Patient ID."""
        return ref.issuer_of_patient_id in ("", self.issuer)

    def _target(self, patient: Patient, reason: str, caller: Caller) -> PatientCoercion:
        return PatientCoercion(
            study_instance_uid="",
            patient_id=patient.ref.patient_id,
            issuer_of_patient_id=patient.ref.issuer_of_patient_id,
            patient_name=patient.patient_name,
            patient_birth_date=patient.patient_birth_date,
            patient_sex=patient.patient_sex,
            reason=reason,
            modifying_system=_system(caller),
            modified_at=utc_now(),
        )

    def knows(self, ref: PatientRef) -> bool:
        """True when the archive holds studies of ``ref`` (as :meth:`reaches` decides)."""
        return self.reaches(ref) and self.repo.patient_demographics(ref.patient_id) is not None

    def update(self, patient: Patient, caller: Caller) -> ArchivePatientChange | None:
        """The change an update of ``patient``'s demographics makes to the archive, or None."""
        if not self.reaches(patient.ref):
            return None
        return ArchivePatientChange(
            self.repo, self._target(patient, "update", caller), from_patient_id=patient.ref.patient_id
        )

    def merge(self, surviving: Patient, prior: PatientRef, caller: Caller) -> ArchivePatientChange | None:
        """The change a merge of ``prior`` into ``surviving`` makes to the archive, or None."""
        if not self.reaches(prior):
            return None
        return ArchivePatientChange(
            self.repo, self._target(surviving, "merge", caller), from_patient_id=prior.patient_id
        )

    @staticmethod
    def audited(
        change: ArchivePatientChange | None, detail: dict[str, object]
    ) -> tuple[dict[str, object], tuple[AuditedStudy, ...]] | None:
        """The detail and studies of the one audit record for the studies an update or
        merge reached; None when it reached none (no record)."""
        if change is None or not change.studies:
            return None
        studies = tuple(AuditedStudy(uid, change.target.patient_id) for uid in change.studies)
        return {**detail, "archive": change.target.reason, "studies": len(studies)}, studies

    def record(self, change: ArchivePatientChange | None, caller: Caller, detail: dict[str, object]) -> None:
        """Write the audit record of :meth:`audited`, when there is one."""
        found = self.audited(change, detail)
        if found is not None and self.audit is not None:
            self.audit.record(
                AuditEvent(AuditAction.PATIENT_RECORD, AuditOutcome.SUCCESS, caller, found[1], found[0])
            )

    def set_patient(
        self,
        study_instance_uid: str,
        ref: PatientRef,
        caller: Caller,
        *,
        patient_name: str | None = None,
        patient_birth_date: str | None = None,
        patient_sex: str | None = None,
    ) -> PatientCoercion:
        """File a study under another patient (it arrived under the wrong one).

        Demographics: the ones given, else the patient of record's, else the
        archive patient's with that Patient ID, else empty. Needs ``administer``.
        """
        require_uid(study_instance_uid, "StudyInstanceUID")
        detail: dict[str, object] = {"set_patient": study_instance_uid, "patient_id": ref.patient_id,
                                     "issuer_of_patient_id": ref.issuer_of_patient_id}  # fmt: skip
        try:
            if not caller.access.may(Action.ADMINISTER):
                raise Forbidden(f"{caller.who} may not move studies between patients (needs administer)")
            known = self.orders.patient(ref) if self.orders is not None else None
            base = self.repo.patient_demographics(ref.patient_id) or {}
            of_record = known.public() if known is not None else {}
            given = {"patient_name": patient_name, "patient_birth_date": patient_birth_date,
                     "patient_sex": patient_sex}  # fmt: skip
            value = {k: _first(v, str(of_record.get(k) or ""), base.get(k)) for k, v in given.items()}
            patient = Patient(
                ref,
                patient_name=value["patient_name"],
                patient_birth_date=value["patient_birth_date"],
                patient_sex=value["patient_sex"],
            )
            try:
                patient = check_patient(patient)
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from exc
            target = self._target(patient, "set-patient", caller)
            change = ArchivePatientChange(self.repo, target, study_uids=[study_instance_uid])
            if not self.repo.run(change):
                raise NotFound(f"no study {study_instance_uid}")
        except (Forbidden, InvalidRequest, NotFound) as exc:
            if self.audit is not None:
                outcome = (
                    AuditOutcome.SERIOUS_FAILURE if isinstance(exc, Forbidden) else AuditOutcome.MINOR_FAILURE
                )
                self.audit.record(
                    AuditEvent(
                        AuditAction.PATIENT_RECORD, outcome, caller, (), {**detail, "reason": str(exc)[:500]}
                    )
                )
            raise
        self.record(change, caller, detail)
        return dataclasses.replace(target, study_instance_uid=study_instance_uid)

    def coercions(self, rows: Iterable[InstanceRow]) -> dict[str, PatientCoercion]:
        """The coercions of the studies of ``rows`` (one lookup for them all)."""
        return self.repo.coercions(r.study_instance_uid for r in rows if r.study_instance_uid)


def _first(*values: str | None) -> str:
    for value in values:
        if value is not None and value != "":
            return value
    return ""
