"""Stored studies as FHIR ImagingStudy sees them: each study with its series and
instances, the order it is linked to, and the patient of record it belongs to.

The studies come from :meth:`~dicomhub.services.search.SearchService.search`, the
call QIDO-RS and C-FIND make, so the same study-level access control holds: a
caller sees only the studies it may ``query``. The patient of record and the order
are looked up only when the caller may read orders; otherwise the study names its
patient by Patient ID alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dicomhub.errors import InvalidRequest, NotFound
from dicomhub.model.caller import Caller
from dicomhub.model.identifiers import Level
from dicomhub.model.match import Match
from dicomhub.model.orders import PatientRef
from dicomhub.model.query import Condition, Query, Single, UidList
from dicomhub.services.access import Forbidden
from dicomhub.services.links import StudyLinkService
from dicomhub.services.orders import OrderKey, OrderService
from dicomhub.services.search import SearchService

__all__ = ["ImagingStudyService", "InstanceView", "SeriesView", "StudyView", "exact"]

_STUDY_KEYS = ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "StudyTime", "AccessionNumber",
               "StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")  # fmt: skip
_SERIES_KEYS = ("SeriesInstanceUID", "SeriesNumber", "Modality", "SeriesDescription",
                "NumberOfSeriesRelatedInstances")  # fmt: skip
_INSTANCE_KEYS = ("SOPInstanceUID", "SOPClassUID", "InstanceNumber", "SeriesInstanceUID")
# Characters that make a DICOM match a wildcard or a list: a FHIR token is exact.
_NOT_EXACT = set("*?\\")


@dataclass(frozen=True, slots=True)
class InstanceView:
    sop_instance_uid: str
    sop_class_uid: str
    number: int | None


@dataclass(frozen=True, slots=True)
class SeriesView:
    series_instance_uid: str
    number: int | None
    modality: str
    description: str
    number_of_instances: int
    instances: tuple[InstanceView, ...]


@dataclass(frozen=True, slots=True)
class StudyView:
    """One study. ``patient_resource_id``: its patient of record ("" when unknown or
    not readable by the caller); ``order_id``: the order it is linked to, or ""."""

    study_instance_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    study_date: str
    study_time: str
    description: str
    number_of_series: int
    number_of_instances: int
    series: tuple[SeriesView, ...]
    patient_resource_id: str = ""
    order_id: str = ""


def _text(m: Match, keyword: str) -> str:
    value = m.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list):
        return "\\".join(str(v) for v in value)
    return str(value)


def _int(m: Match, keyword: str) -> int | None:
    text = _text(m, keyword).strip()
    try:
        return int(text) if text else None
    except ValueError:
        return None


def exact(value: str, what: str) -> str:
    """``value`` if it can be matched exactly; InvalidRequest otherwise."""
    value = value.strip()
    if not value or len(value) > 64 or _NOT_EXACT & set(value):
        raise InvalidRequest(f"{what} {value[:80]!r} is not a value to match exactly")
    return value


class ImagingStudyService:
    """Reads studies for FHIR ImagingStudy; see the module docstring."""

    def __init__(self, search: SearchService, links: StudyLinkService, orders: OrderService) -> None:
        self.search_service = search
        self.links = links
        self.orders = orders

    def _may_read_orders(self, caller: Caller) -> bool:
        try:
            self.orders.check_read(caller)
        except Forbidden:
            return False
        return True

    def patient_id_of(self, resource_id: str, caller: Caller) -> str:
        """The Patient ID of the patient of record ``resource_id`` (NotFound, Forbidden)."""
        return self.orders.patient(caller, resource_id=resource_id).ref.patient_id

    def studies_of_order(self, order_id: str, caller: Caller) -> list[str]:
        return [s.study_instance_uid for s in self.links.linked_studies(OrderKey(order_id=order_id), caller)]

    def study(self, study_instance_uid: str, caller: Caller) -> StudyView:
        """One study the caller may query; NotFound otherwise (not Forbidden: a study
        the caller may not see does not exist for it, as in QIDO-RS)."""
        found, _more = self.studies(caller, study_instance_uids=[exact(study_instance_uid, "id")], count=1)
        if not found:
            raise NotFound(f"no ImagingStudy {study_instance_uid}")
        return found[0]

    def studies(
        self,
        caller: Caller,
        *,
        study_instance_uids: Sequence[str] | None = None,
        accession_number: str = "",
        patient_id: str = "",
        offset: int = 0,
        count: int = 20,
    ) -> tuple[list[StudyView], bool]:
        """One page of the studies matching every criterion given, oldest first, and
        whether there are more. ``study_instance_uids`` empty: no study matches."""
        if study_instance_uids is not None and not study_instance_uids:
            return [], False
        conditions: list[Condition] = []
        if study_instance_uids:
            uids = tuple(exact(u, "Study Instance UID") for u in study_instance_uids)
            conditions.append(Condition("StudyInstanceUID", "UI", UidList(uids)))
        if accession_number:
            conditions.append(
                Condition("AccessionNumber", "SH", Single(exact(accession_number, "accession number")))
            )
        if patient_id:
            conditions.append(Condition("PatientID", "LO", Single(exact(patient_id, "patient identifier"))))
        query = Query(Level.STUDY, tuple(conditions), _STUDY_KEYS, limit=count + 1, offset=offset)
        matches = list(self.search_service.search(query, caller))
        more = len(matches) > count
        matches = matches[:count]
        readable = self._may_read_orders(caller)
        orders = self.links.order_ids_of([_text(m, "StudyInstanceUID") for m in matches]) if readable else {}
        return [self._view(m, caller, readable, orders) for m in matches], more

    def _patient_resource(self, patient_id: str, order_id: str, caller: Caller) -> str:
        try:
            if order_id:
                ref = self.orders.order(OrderKey(order_id=order_id), caller).patient
                return self.orders.patient(caller, ref=ref).resource_id
            return self.orders.patient(caller, ref=PatientRef(patient_id)).resource_id
        except (NotFound, Forbidden):
            return ""

    def _view(self, m: Match, caller: Caller, readable: bool, orders: dict[str, str]) -> StudyView:
        uid = _text(m, "StudyInstanceUID")
        study_uid = Condition("StudyInstanceUID", "UI", UidList((uid,)))
        instances: dict[str, list[InstanceView]] = {}
        image_query = Query(Level.IMAGE, (study_uid,), _INSTANCE_KEYS)
        for i in self.search_service.search(image_query, caller):
            view = InstanceView(
                _text(i, "SOPInstanceUID"), _text(i, "SOPClassUID"), _int(i, "InstanceNumber")
            )
            instances.setdefault(_text(i, "SeriesInstanceUID"), []).append(view)
        series = tuple(
            SeriesView(
                _text(s, "SeriesInstanceUID"),
                _int(s, "SeriesNumber"),
                _text(s, "Modality"),
                _text(s, "SeriesDescription"),
                _int(s, "NumberOfSeriesRelatedInstances") or 0,
                tuple(
                    sorted(
                        instances.get(_text(s, "SeriesInstanceUID"), []),
                        key=lambda v: (v.number is None, v.number or 0),
                    )
                ),
            )
            for s in self.search_service.search(Query(Level.SERIES, (study_uid,), _SERIES_KEYS), caller)
        )
        patient_id = _text(m, "PatientID")
        order_id = orders.get(uid, "")
        return StudyView(
            study_instance_uid=uid,
            patient_id=patient_id,
            patient_name=_text(m, "PatientName"),
            accession_number=_text(m, "AccessionNumber"),
            study_date=_text(m, "StudyDate"),
            study_time=_text(m, "StudyTime"),
            description=_text(m, "StudyDescription"),
            number_of_series=_int(m, "NumberOfStudyRelatedSeries") or len(series),
            number_of_instances=_int(m, "NumberOfStudyRelatedInstances") or 0,
            series=series,
            patient_resource_id=self._patient_resource(patient_id, order_id, caller) if readable else "",
            order_id=order_id,
        )
