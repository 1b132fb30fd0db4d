"""``/fhir/ImagingStudy``: the stored studies as FHIR R4 ImagingStudy resources (read and
search), built from :class:`~dicomhub.services.imagingstudy.ImagingStudyService`.

Each resource is validated with the R4B models of ``fhir.resources`` (ImagingStudy
did not change between R4 and R4B in any element used here). The id is the Study
Instance UID, which is a valid FHIR id (digits and dots, at most 64). Search
parameters (FHIR R4 ImagingStudy search): ``patient`` (``Patient/<id>`` or ``<id>``,
a patient of record), ``patient.identifier`` (``[system|]value``: the Patient ID),
``identifier`` (``urn:dicom:uid|urn:oid:<Study Instance UID>``, else the Accession
Number), ``basedon`` (``ServiceRequest/<id>``: the studies linked to that order),
``_id``; paging with ``_count`` (1-100, default 20) and ``_offset``. Any other
parameter, or one given twice, is a 400 OperationOutcome rather than being ignored:
a client that thinks it filtered must not get everything.

References
----------
HL7 FHIR R4 ImagingStudy, Endpoint (connection type ``dicom-wado-rs``), Bundle
(searchset, 3.1.1.4 paging); DICOM PS3.17 Annex "DICOM-FHIR mapping" (the
``urn:dicom:uid`` identifier system).
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomhub.config import Settings
from dicomhub.errors import InvalidRequest
from dicomhub.model.caller import Caller
from dicomhub.services.archive import Archive
from dicomhub.services.imagingstudy import ImagingStudyService, StudyView
from dicomhub.web.auth import caller_of
from dicomhub.web.fhir.resources import FHIR_ID, fhir_model
from dicomhub.web.fhir.routes import FhirResponse, answering_outcomes

__all__ = ["imaging_study_to_fhir", "routes"]

DICOM_UID_SYSTEM = "urn:dicom:uid"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
_PARAMETERS = {"patient", "patient.identifier", "identifier", "basedon", "_id", "_count", "_offset"}
_MAX_COUNT = 100


def _started(date: str, time: str) -> str | None:
    """DICOM DA + TM as a FHIR dateTime: a time needs a zone in FHIR, and DICOM's is the
    acquiring site's local time, taken here as the server's (as for ServiceRequest)."""
    if len(date) != 8 or not date.isdigit():
        return None
    digits = time.split(".", 1)[0]
    if not (len(digits) >= 4 and digits.isdigit()):
        return f"{date[:4]}-{date[4:6]}-{date[6:]}"
    try:
        local = dt.datetime(
            int(date[:4]), int(date[4:6]), int(date[6:]), int(digits[:2]), int(digits[2:4]),
            int(digits[4:6] or 0) if len(digits) >= 6 else 0,
        )  # fmt: skip
    except ValueError:
        return None
    return local.astimezone().isoformat()


def _subject(study: StudyView) -> dict[str, Any]:
    if study.patient_resource_id:
        return {"reference": f"Patient/{study.patient_resource_id}"}
    # Not a patient of record (or not readable by the caller): a logical reference.
    reference: dict[str, Any] = {"identifier": {"value": study.patient_id or "unknown"}}
    if study.patient_name:
        reference["display"] = study.patient_name.replace("^", " ").strip()
    return reference


def imaging_study_to_fhir(study: StudyView, dicomweb: str) -> dict[str, Any]:
    """The ImagingStudy of ``study``, validated; ``dicomweb``: the DICOMweb base URL."""
    identifiers: list[dict[str, Any]] = [
        {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study.study_instance_uid}"}
    ]
    if study.accession_number:
        identifiers.append(
            {"type": {"coding": [{"system": _V2_0203, "code": "ACSN"}]}, "value": study.accession_number}
        )
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": study.study_instance_uid,
        "contained": [
            {
                "resourceType": "Endpoint",
                "id": "dicomweb",
                "status": "active",
                "connectionType": {"system": _CONNECTION_TYPE, "code": "dicom-wado-rs"},
                "payloadType": [{"text": "DICOM"}],
                "payloadMimeType": ["application/dicom"],
                "address": dicomweb,
            }
        ],
        "identifier": identifiers,
        "status": "available",
        "subject": _subject(study),
        "endpoint": [{"reference": "#dicomweb"}],
        "numberOfSeries": study.number_of_series,
        "numberOfInstances": study.number_of_instances,
        "series": [],
    }
    started = _started(study.study_date, study.study_time)
    if started:
        resource["started"] = started
    if study.description:
        resource["description"] = study.description
    if study.order_id:
        resource["basedOn"] = [{"reference": f"ServiceRequest/{study.order_id}"}]
    for s in study.series:
        series: dict[str, Any] = {"uid": s.series_instance_uid, "numberOfInstances": s.number_of_instances}
        if s.number is not None and s.number >= 0:
            series["number"] = s.number
        series["modality"] = {"system": _DCM, "code": s.modality or "OT"}
        if s.description:
            series["description"] = s.description
        series["instance"] = [
            {
                "uid": i.sop_instance_uid,
                "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{i.sop_class_uid}"},
                **({"number": i.number} if i.number is not None and i.number >= 0 else {}),
            }
            for i in s.instances
        ]
        resource["series"].append(series)
    if not resource["series"]:
        del resource["series"]
    out: dict[str, Any] = (
        fhir_model("ImagingStudy")
        .model_validate(resource)
        .model_dump(mode="json", exclude_none=True, by_alias=True)
    )
    return out


def _one(params: dict[str, list[str]], name: str) -> str:
    values = params.get(name, [])
    if len(values) > 1:
        raise InvalidRequest(f"search parameter {name!r} is given {len(values)} times")
    return values[0] if values else ""


def _integer(params: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    raw = _one(params, name)
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidRequest(f"{name} must be an integer from {low} to {high}, not {raw[:40]!r}")
    return int(raw)


def _reference(value: str, kind: str) -> str:
    """The id of a reference parameter (``Kind/id`` or ``id``)."""
    rid = value[len(kind) + 1 :] if value.startswith(f"{kind}/") else value
    if not FHIR_ID.match(rid):
        raise InvalidRequest(f"{value[:80]!r} is not a reference to a {kind}")
    return rid


def _token(value: str) -> tuple[str | None, str]:
    """A token parameter: (system or None when none was given, value)."""
    if "|" in value:
        system, _, code = value.partition("|")
        return system, code
    return None, value


class _Search:
    """The blocking half: criteria from the parameters, then the page."""

    def __init__(self, service: ImagingStudyService) -> None:
        self.service = service

    def run(self, params: dict[str, list[str]], caller: Caller) -> tuple[list[StudyView], bool, int, int]:
        unknown = sorted(set(params) - _PARAMETERS)
        if unknown:
            raise InvalidRequest(
                f"unknown search parameter(s) {', '.join(unknown)} (known: {', '.join(sorted(_PARAMETERS))})"
            )
        count = _integer(params, "_count", 20, 1, _MAX_COUNT)
        offset = _integer(params, "_offset", 0, 0, 10**9)
        uids: list[str] | None = None
        accession = patient_id = ""
        if value := _one(params, "_id"):
            uids = [_reference(value, "ImagingStudy")]
        if value := _one(params, "identifier"):
            system, code = _token(value)
            if system == DICOM_UID_SYSTEM or (system is None and code.startswith("urn:oid:")):
                uid = code.removeprefix("urn:oid:")
                uids = [u for u in uids if u == uid] if uids is not None else [uid]
            elif system in (None, ""):
                accession = code
            else:
                raise InvalidRequest(
                    f"identifier system {system[:80]!r}: search urn:dicom:uid|urn:oid:<Study Instance UID> "
                    "or an Accession Number without a system"
                )
        if value := _one(params, "patient"):
            patient_id = self.service.patient_id_of(_reference(value, "Patient"), caller)
        if value := _one(params, "patient.identifier"):
            _system, code = _token(value)
            if patient_id and code != patient_id:
                return [], False, offset, count
            patient_id = code
        if value := _one(params, "basedon"):
            linked = self.service.studies_of_order(_reference(value, "ServiceRequest"), caller)
            uids = [u for u in uids if u in linked] if uids is not None else linked
        studies, more = self.service.studies(
            caller,
            study_instance_uids=uids,
            accession_number=accession,
            patient_id=patient_id,
            offset=offset,
            count=count,
        )
        return studies, more, offset, count


def routes(archive: Archive, settings: Settings) -> list[BaseRoute]:
    """The ImagingStudy routes mounted at ``/fhir``."""
    service = archive.imaging_studies
    search = _Search(service)

    def dicomweb(request: Request) -> str:
        if settings.public_base_url:
            return settings.public_base_url.rstrip("/")
        url = request.url
        root = str(request.scope.get("root_path", "")).removesuffix("/fhir")
        return f"{url.scheme}://{url.netloc}{root}/dicomweb"

    def fhir_base(request: Request) -> str:
        url = request.url
        return f"{url.scheme}://{url.netloc}{request.scope.get('root_path', '')}"

    async def read(request: Request) -> Response:
        rid = str(request.path_params["study"])
        if not FHIR_ID.match(rid):
            raise InvalidRequest(f"{rid[:80]!r} is not a FHIR id ([A-Za-z0-9-.], at most 64 characters)")
        study = await run_in_threadpool(service.study, rid, caller_of(request))
        return FhirResponse(imaging_study_to_fhir(study, dicomweb(request)))

    async def search_studies(request: Request) -> Response:
        params: dict[str, list[str]] = {}
        for name, value in request.query_params.multi_items():
            params.setdefault(name, []).append(value)
        studies, more, offset, count = await run_in_threadpool(search.run, params, caller_of(request))
        base, endpoint = fhir_base(request), dicomweb(request)
        kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("_offset", "_count")]

        def page(at: int) -> str:
            return f"{base}/ImagingStudy?{urlencode([*kept, ('_count', str(count)), ('_offset', str(at))])}"

        links = [{"relation": "self", "url": page(offset)}]
        if more:
            links.append({"relation": "next", "url": page(offset + count)})
        if offset > 0:
            links.append({"relation": "previous", "url": page(max(offset - count, 0))})
        bundle = fhir_model("Bundle").model_validate(
            {
                "resourceType": "Bundle",
                "type": "searchset",
                "link": links,
                "entry": [
                    {
                        "fullUrl": f"{base}/ImagingStudy/{s.study_instance_uid}",
                        "resource": imaging_study_to_fhir(s, endpoint),
                        "search": {"mode": "match"},
                    }
                    for s in studies
                ],
            }
        )
        return FhirResponse(bundle.model_dump(mode="json", exclude_none=True, by_alias=True))

    return [
        Route("/ImagingStudy", answering_outcomes(search_studies), methods=["GET"]),
        Route("/ImagingStudy/{study}", answering_outcomes(read), methods=["GET"]),
    ]
