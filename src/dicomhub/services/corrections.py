"""Corrections of stored studies by an operator: modify, split, merge (studies
and patients), each recorded with the original and new values and audited.

*In place or under new UIDs.* Without new UIDs the stored bytes stay: Patient
module changes go through the patient coercion of :mod:`dicomhub.services.coercion`,
study attributes into the study row and its study coercion
(:meth:`~dicomhub.index.corrections.CorrectionRepository.modify_in_place`); copies
leave with the corrected values and the old ones in Original Attributes Sequence.
With new UIDs (and for split and merge) the objects are written again, as IHE
IOCM "move" does: each object is read, given its new
Study/Series/SOP Instance UIDs and values (:func:`dicomhub.model.correction.reissue`),
and stored through the one ingest path (durable and indexed before it counts);
then the originals are rejected with an IOCM rejection note (Incorrect Modality
Worklist Entry), or kept when the operator asks.

*Order.* New copies first, the rejection of the originals next, the record
last: a failure part-way leaves the originals visible (nothing is lost) and no
record; the copies already stored are listed in the audit record of the failure.

*The record.* One ``correction`` row per correction (who, when, why, original
and new values, old -> new UID map) with ``updated`` entries in the change log
for the studies it touched, and one audit event (``correction``).
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicomhub.errors import Conflict, InvalidRequest, NotFound, StorageError
from dicomhub.index.corrections import CorrectionRepository
from dicomhub.model.access import Access, Action
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditEvent, AuditOutcome, AuditRecorder
from dicomhub.model.caller import Caller
from dicomhub.model.coercion import PATIENT_KEYWORDS, coerce_patient
from dicomhub.model.correction import (
    STUDY_KEYWORDS,
    CorrectionKind,
    Reissue,
    SourceDisposition,
    new_uid,
    parse_assignments,
    reissue,
)
from dicomhub.model.identifiers import require_uid
from dicomhub.model.ingest import InstanceOrigin, OriginKind
from dicomhub.model.orders import Patient, PatientRef
from dicomhub.model.records import InstanceRow
from dicomhub.model.rejection import KEY_OBJECT_SELECTION_DOCUMENT, RejectionReason, read_rejection_note
from dicomhub.model.timestamps import utc_now
from dicomhub.services.access import Forbidden
from dicomhub.services.coercion import ArchivePatients, coerce_part10
from dicomhub.services.ingest import IngestService
from dicomhub.services.orders import OrderService
from dicomhub.services.rejection import RejectionService
from dicomhub.services.wado import WadoService

__all__ = ["CorrectionService"]

LOGGER = logging.getLogger("dicomhub.corrections")

_CORRECTED = (*STUDY_KEYWORDS, *PATIENT_KEYWORDS)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)


def _system(caller: Caller) -> str:
    return f"dicomhub {caller.channel.value} {caller.name}".strip()[:64]


class CorrectionService:
    """Modify, split and merge stored studies; merge archive patients; list the records."""

    def __init__(
        self,
        repo: CorrectionRepository,
        wado: WadoService,
        ingest: IngestService,
        rejection: RejectionService,
        patients: ArchivePatients,
        orders: OrderService,
        audit: AuditRecorder | None = None,
    ) -> None:
        self.repo = repo
        self.wado = wado
        self.ingest = ingest
        self.rejection = rejection
        self.patients = patients
        self.orders = orders
        self.audit = audit

    # ------------------------------------------------------------ use cases

    def modify(
        self,
        caller: Caller,
        study: str,
        assignments: Iterable[str] | Mapping[str, str],
        *,
        new_uids: bool = False,
        source: str = "reject",
        reason: str = "",
    ) -> dict[str, Any]:
        """Set study and Patient module attributes of a study.

        Without ``new_uids`` in place: the Patient module by patient coercion, study
        attributes in the study row and its study coercion (the stored bytes stay);
        with it, every object is written again under new UIDs and the originals are
        rejected or kept (``source``).
        """
        detail: dict[str, Any] = {"modify": study, "new_uids": new_uids, "source": source}

        def run() -> dict[str, Any]:
            values = parse_assignments(assignments)
            if not values:
                raise InvalidRequest("nothing to modify: give at least one Keyword=Value")
            disposition = SourceDisposition.parse(source)
            if not new_uids and disposition is not SourceDisposition.REJECT:
                raise InvalidRequest("source keep applies to a modify with new UIDs only")
            rows, header = self._study(caller, study)
            before = {k: _text(header, k) for k in values}
            if not new_uids:
                return self._modify_in_place(caller, study, values, before, header, reason)
            target = new_uid()
            uid_map = self._write(caller, rows, target, values)
            if disposition is SourceDisposition.REJECT:
                self._reject(caller, study)
            return self._record(
                caller, CorrectionKind.MODIFY, study, target, reason, disposition, before, values, uid_map
            )

        return self._audited(caller, detail, run)

    def split(
        self,
        caller: Caller,
        study: str,
        series: Sequence[str],
        assignments: Iterable[str] | Mapping[str, str] = (),
        *,
        reason: str = "",
    ) -> dict[str, Any]:
        """Move ``series`` of ``study`` to a new study (new UIDs throughout); the
        originals are rejected. Returns the record, with the new study's UID."""
        detail: dict[str, Any] = {"split": study, "series": list(series)}

        def run() -> dict[str, Any]:
            values = parse_assignments(assignments)
            if not series:
                raise InvalidRequest("name at least one series to split off")
            rows, header = self._study(caller, study)
            present = {r.series_instance_uid for r in rows}
            for uid in series:
                require_uid(uid, "SeriesInstanceUID")
                if uid not in present:
                    raise NotFound(f"series {uid} is not in study {study}")
            if present <= set(series):
                raise InvalidRequest("splitting off every series of a study is a modify with --new-uids")
            moved = [r for r in rows if r.series_instance_uid in set(series)]
            before = {k: _text(header, k) for k in values}
            target = new_uid()
            uid_map = self._write(caller, moved, target, values)
            for uid in dict.fromkeys(series):
                self._reject(caller, study, uid)
            return self._record(
                caller, CorrectionKind.SPLIT, study, target, reason, SourceDisposition.REJECT, before, values,
                uid_map,
            )  # fmt: skip

        return self._audited(caller, detail, run)

    def merge_studies(
        self, caller: Caller, target: str, sources: Sequence[str], *, force: bool = False, reason: str = ""
    ) -> dict[str, Any]:
        """Copy the instances of ``sources`` into ``target`` with the target's patient
        and study attributes (new series and SOP UIDs); the sources are rejected.

        Studies of different patients are refused unless ``force``: filing one
        patient's images under another is the error corrections exist to undo.
        """
        detail: dict[str, Any] = {"merge_into": target, "sources": list(sources), "force": force}

        def run() -> dict[str, Any]:
            if not sources:
                raise InvalidRequest("name at least one source study")
            if target in sources:
                raise InvalidRequest("a study cannot be merged into itself")
            _rows, header = self._study(caller, target)
            values = {k: _text(header, k) for k in _CORRECTED if k in header}
            found = [(uid, *self._study(caller, uid)) for uid in dict.fromkeys(sources)]
            for uid, _r, h in found:
                if not force and _text(h, "PatientID") != values.get("PatientID", ""):
                    raise Conflict(
                        f"study {uid} is of patient {_text(h, 'PatientID')!r}, the target of "
                        f"{values.get('PatientID', '')!r}: merging would file one patient's images under "
                        "another (give --force if that is the correction)"
                    )
            before: dict[str, Any] = {}
            uid_map: dict[str, str] = {}
            for uid, rows, h in found:
                before[uid] = {k: _text(h, k) for k in values}
                uid_map.update(self._write(caller, rows, target, values))
            for uid, _r, _h in found:
                self._reject(caller, uid)
            return self._record(
                caller, CorrectionKind.MERGE_STUDIES, found[0][0], target, reason, SourceDisposition.REJECT,
                before, values, uid_map, [s for s, _r, _h in found],
            )  # fmt: skip

        return self._audited(caller, detail, run)

    def merge_patients(self, caller: Caller, into: str, prior: str, *, reason: str = "") -> dict[str, Any]:
        """``prior``'s studies are filed under ``into``, through the same path as an
        HL7 ADT^A40 merge (patients of record and archive change together)."""
        detail: dict[str, Any] = {"merge_patient_into": into, "prior_patient_id": prior}

        def run() -> dict[str, Any]:
            if not into.strip() or not prior.strip():
                raise InvalidRequest("give both Patient IDs")
            if into == prior:
                raise InvalidRequest("a patient cannot be merged into itself")
            studies = self.patients.repo.studies_of(prior)
            if not studies:
                raise NotFound(f"the archive holds no study of patient {prior!r}")
            surviving = self._patient(into)
            old = self.patients.repo.patient_demographics(prior) or {}
            self.orders.merge_patients(surviving, PatientRef(prior), caller, "correction")
            public = surviving.public()
            keys = ("patient_id", "issuer_of_patient_id", "patient_name", "patient_birth_date", "patient_sex")
            new = {k: str(public.get(k) or "") for k in keys}
            return self._record(
                caller, CorrectionKind.MERGE_PATIENTS, studies[0], "", reason, SourceDisposition.KEEP,
                {"patient_id": prior, **old, "studies": studies}, new, {}, studies,
            )  # fmt: skip

        return self._audited(caller, detail, run)

    def records(self, caller: Caller, study: str | None = None) -> list[dict[str, Any]]:
        """The correction records (newest first), or those of one study."""
        self._may(caller)
        if study:
            require_uid(study, "StudyInstanceUID")
        return self.repo.records(study)

    # ------------------------------------------------------------ helpers

    def _may(self, caller: Caller) -> None:
        if not caller.access.may(Action.ADMINISTER):
            raise Forbidden(f"{caller.who} may not correct stored studies (needs administer)")

    def _audited(
        self, caller: Caller, detail: dict[str, Any], run: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        try:
            self._may(caller)
            done = run()
        except (Forbidden, InvalidRequest, NotFound, Conflict, StorageError) as exc:
            if self.audit is not None:
                outcome = (
                    AuditOutcome.SERIOUS_FAILURE if isinstance(exc, Forbidden) else AuditOutcome.MINOR_FAILURE
                )
                self.audit.record(
                    AuditEvent(
                        AuditAction.CORRECTION, outcome, caller, (), {**detail, "reason": str(exc)[:500]}
                    )
                )
            raise
        if self.audit is not None:
            studies = {*done["studies"], done["new_study_instance_uid"]} - {""}
            self.audit.record(
                AuditEvent(
                    AuditAction.CORRECTION, AuditOutcome.SUCCESS, caller,
                    tuple(AuditedStudy(u) for u in sorted(studies)),
                    {**detail, "correction": done["id"], "kind": done["kind"]},
                )
            )  # fmt: skip
        return done

    def _study(self, caller: Caller, study: str) -> tuple[list[InstanceRow], Dataset]:
        """The study's instances (rejection notes left out) and the header of one,
        as it leaves the archive (patient coercion applied)."""
        require_uid(study, "StudyInstanceUID")
        rows = self.wado.instances(caller, study)
        kept: list[InstanceRow] = []
        header: Dataset | None = None
        for row in rows:
            # Only a Key Object Selection document can be a rejection note: the other
            # objects are read for the header alone, and only the first of them.
            if row.sop_class_uid == KEY_OBJECT_SELECTION_DOCUMENT:
                ds = self._read(row, stop_before_pixels=True)
                if read_rejection_note(ds) is not None:
                    continue
                header = header or ds
            elif header is None:
                header = self._read(row, stop_before_pixels=True)
            kept.append(row)
        if header is None:
            raise NotFound(f"no study {study}")
        coercion = self.wado.coercions(kept).get(study)
        if coercion is not None:
            coerce_patient(header, coercion)
        return kept, header

    def _read(self, row: InstanceRow, *, stop_before_pixels: bool = False) -> Dataset:
        data = b"".join(self.wado.stream(row))
        try:
            return dcmread(io.BytesIO(data), force=True, stop_before_pixels=stop_before_pixels)
        except (InvalidDicomError, ValueError, EOFError) as exc:
            raise StorageError(f"cannot read stored instance {row.sop_instance_uid}: {exc}") from exc

    def _write(
        self, caller: Caller, rows: Sequence[InstanceRow], study: str, values: Mapping[str, str]
    ) -> dict[str, str]:
        """Store each of ``rows`` again in ``study`` with ``values``; the UID map."""
        how = Reissue(study, dict(values), _system(caller), utc_now())
        coercions = self.wado.coercions(rows)
        origin = InstanceOrigin(OriginKind.CORRECTION, principal=caller.principal)
        # The archive stores on the operator's behalf: ADMINISTER was checked.
        on_behalf = dataclasses.replace(caller, access=Access.UNRESTRICTED)
        uid_map: dict[str, str] = {}
        for row in rows:
            data = b"".join(self.wado.stream(row))
            coercion = coercions.get(row.study_instance_uid)
            if coercion is not None:
                data = coerce_part10(data, coercion)
            try:
                ds = dcmread(io.BytesIO(data), force=True)
            except (InvalidDicomError, ValueError, EOFError) as exc:
                raise StorageError(f"cannot read stored instance {row.sop_instance_uid}: {exc}") from exc
            reissue(ds, how, uid_map)
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            self.ingest.store_part10(out.getvalue(), on_behalf, origin=origin)
        return uid_map

    def _reject(self, caller: Caller, study: str, series: str | None = None) -> None:
        on_behalf = dataclasses.replace(caller, access=Access.UNRESTRICTED)
        self.rejection.reject(on_behalf, RejectionReason.WORKLIST, study, series)

    def _modify_in_place(
        self,
        caller: Caller,
        study: str,
        values: Mapping[str, str],
        before: Mapping[str, str],
        header: Dataset,
        reason: str,
    ) -> dict[str, Any]:
        """Patient module values through the patient coercion; study values into the
        study row (queries) and its study coercion (the way out), with the record."""
        after = dict(values)
        if any(k in PATIENT_KEYWORDS for k in values):
            ref = PatientRef(
                values.get("PatientID", _text(header, "PatientID")),
                values.get(
                    "IssuerOfPatientID", "" if "PatientID" in values else _text(header, "IssuerOfPatientID")
                ),
            )
            done = self.patients.set_patient(
                study,
                ref,
                caller,
                patient_name=values.get("PatientName", _text(header, "PatientName")),
                patient_birth_date=values.get("PatientBirthDate", _text(header, "PatientBirthDate")),
                patient_sex=values.get("PatientSex", _text(header, "PatientSex")),
            )
            after.update({k: v for k, v in done.values().items() if k in values})
        record: dict[str, Any] = {
            "kind": CorrectionKind.MODIFY.value, "study_instance_uid": study, "new_study_instance_uid": study,
            "made_by": caller.who, "reason": reason, "source": SourceDisposition.KEEP.value,
            "original_values": dict(before), "new_values": after, "uid_map": {},
        }  # fmt: skip
        study_values = {k: v for k, v in values.items() if k in STUDY_KEYWORDS}
        if study_values:
            pk = self.repo.modify_in_place(study, study_values, _system(caller), **record)
            if pk is None:
                raise NotFound(f"no study {study}")
        else:
            pk = self.repo.add(**record)
        return {"id": pk, **{k: v for k, v in record.items() if k != "made_by" and k != "reason"},
                "studies": [study]}  # fmt: skip

    def _patient(self, patient_id: str) -> Patient:
        known = self.orders.repo.patient(PatientRef(patient_id))
        if known is not None:
            return known
        found = self.patients.repo.patient_demographics(patient_id)
        if found is None:
            raise NotFound(f"no patient {patient_id!r} in the archive or of record")
        return Patient(
            PatientRef(patient_id),
            patient_name=found["patient_name"],
            patient_birth_date=found["patient_birth_date"],
            patient_sex=found["patient_sex"],
        )

    def _record(
        self,
        caller: Caller,
        kind: CorrectionKind,
        study: str,
        new_study: str,
        reason: str,
        source: SourceDisposition,
        before: Mapping[str, Any],
        after: Mapping[str, Any],
        uid_map: Mapping[str, str],
        studies: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Write the record; ``studies``: every study read (``study`` alone when empty)."""
        pk = self.repo.add(
            kind=kind.value, study_instance_uid=study, new_study_instance_uid=new_study, made_by=caller.who,
            reason=reason, source=source.value, original_values=before, new_values=after, uid_map=uid_map,
        )  # fmt: skip
        return {"id": pk, "kind": kind.value, "study_instance_uid": study,
                "new_study_instance_uid": new_study, "source": source.value, "original_values": dict(before),
                "new_values": dict(after), "uid_map": dict(uid_map),
                "studies": list(studies or [study])}  # fmt: skip
