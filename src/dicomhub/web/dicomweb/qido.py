"""QIDO-RS: search for studies, series and instances (PS3.18 10.6).

Query parameters become the same :class:`~dicomhub.model.query.Query` that a
C-FIND identifier becomes, so QIDO-RS and C-FIND match by the same rules
(PS3.4 C.2.2.2): single value, list of UID (comma or backslash), wildcard,
DA/TM/DT range, universal and one level of sequence matching
(``RequestAttributesSequence.RequestedProcedureID=...``).

References
----------
PS3.18 8.3.4 (query parameters), 10.6 (Search transaction), Tables
10.6.3-3/4/5 (default return attributes).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomhub.config import Settings
from dicomhub.errors import DicomhubError, InvalidRequest
from dicomhub.model.access import Action
from dicomhub.model.attributes import BY_KEYWORD, COMPUTED
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditOutcome
from dicomhub.model.caller import Caller
from dicomhub.model.identifiers import Level
from dicomhub.model.match import Match, vr_of
from dicomhub.model.query import (
    Condition,
    OrderKey,
    Query,
    SequenceMatch,
    Single,
    UidList,
    Universal,
    parse_matcher,
    parse_order_by,
)
from dicomhub.services.access import require_label
from dicomhub.services.archive import Archive
from dicomhub.web.auth import audit_after_response, caller_of, outcome_of
from dicomhub.web.dicomweb.dicomjson import match_to_xml, matches_to_json_bytes
from dicomhub.web.dicomweb.rejection import INCLUDE_REJECTED, include_rejected_value
from dicomhub.web.dicomweb.urls import dicomweb_base
from dicomhub.web.errors import NotAcceptable

__all__ = [
    "QidoRequest",
    "Representation",
    "negotiate",
    "parse_qido_params",
    "routes",
]

LOGGER = logging.getLogger("dicomhub.web.qido")

JSON_MEDIA_TYPE = "application/dicom+json"
XML_MEDIA_TYPE = "application/dicom+xml"

_STUDY_DEFAULTS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstanceAvailability",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "RetrieveURL",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
_SERIES_DEFAULTS = (
    "Modality",
    "TimezoneOffsetFromUTC",
    "SeriesDescription",
    "RetrieveURL",
    "SeriesInstanceUID",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
    "StudyInstanceUID",
)
# dicomhub's patient resource (not in PS3.18, whose QIDO-RS has no patient level;
# dcm4chee-arc has the same ``/patients``): the patient level of C-FIND's Patient Root
# model, so patients with no study the caller may see are not found, and the counts
# are of the studies it may see.
_PATIENT_DEFAULTS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
)
_INSTANCE_DEFAULTS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceAvailability",
    "TimezoneOffsetFromUTC",
    "RetrieveURL",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
    "StudyInstanceUID",
    "SeriesInstanceUID",
)
# Returned only when the instance has them (or when asked for explicitly).
_IF_PRESENT = frozenset(
    {
        "TimezoneOffsetFromUTC",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "RequestAttributesSequence",
        "NumberOfFrames",
    }
)
# Filled in here rather than by the search (they are not in any header).
_WEB_COMPUTED = frozenset({"RetrieveURL", "InstanceAvailability"})
_UNIQUE_KEY = {
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}
# dicomhub's extensions (not in PS3.18): ``label`` (studies carrying any of the
# labels), ``orderby`` (sort key list) and ``count=true`` (an X-Total-Count header).
_EXTENSIONS = frozenset({"label", "orderby", "count"})
_RESERVED = (
    frozenset({"limit", "offset", "fuzzymatching", "includefield", "accept", "charset", INCLUDE_REJECTED})
    | _EXTENSIONS
)
TOTAL_COUNT_HEADER = "X-Total-Count"
_TAG_RE = re.compile(r"^[0-9A-Fa-f]{8}$")
_DIGITS_RE = re.compile(r"^[0-9]{1,18}$")


@dataclass(frozen=True, slots=True)
class QidoRequest:
    """A parsed QIDO-RS request.

    ``query.limit`` is one more than ``limit`` so that the handler can tell
    whether more results exist; ``warnings`` go into ``Warning`` headers.
    """

    query: Query
    limit: int
    include_all: bool = False
    explicit: frozenset[str] = frozenset()
    warnings: tuple[str, ...] = ()
    accept: str | None = None
    count: bool = False


def _true_or_false(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text not in ("true", "false"):
        raise InvalidRequest(f"{name} must be true or false, not {value!r}")
    return text == "true"


@dataclass
class _Keys:
    return_keys: list[str] = field(default_factory=list)

    def add(self, keyword: str) -> None:
        if keyword not in self.return_keys:
            self.return_keys.append(keyword)


def _keyword_of(key: str) -> str:
    """The dictionary keyword of a QIDO attribute ID (keyword or 8 hex digit tag)."""
    key = key.strip()
    if _TAG_RE.match(key):
        keyword = keyword_for_tag(int(key, 16))
        if not keyword:
            raise InvalidRequest(f"attribute {key} is not a public DICOM attribute")
        return str(keyword)
    if vr_of(key) is None:
        raise InvalidRequest(f"unknown attribute {key!r} (expected a DICOM keyword or tag)")
    return key


def _vr(keyword: str) -> str:
    found = vr_of(keyword)
    if found is None:  # pragma: no cover - checked by _keyword_of
        raise InvalidRequest(f"unknown attribute {keyword!r}")
    return found[1]


def _check_level(keyword: str, level: Level) -> None:
    attr = BY_KEYWORD.get(keyword)
    below = None
    if attr is not None and attr.level.depth > level.depth:
        below = attr.level
    elif keyword in COMPUTED and COMPUTED[keyword][1].depth > level.depth:
        below = COMPUTED[keyword][1]
    if below is not None:
        raise InvalidRequest(
            f"{keyword} is a {below.value.lower()}-level attribute and cannot be matched "
            f"in a {level.value.lower()}-level search"
        )


def _matcher_value(vr: str, values: Sequence[str]) -> str:
    joined = "\\".join(values)
    if vr == "UI":
        # PS3.18 8.3.4.1: a list of UIDs may be separated by commas.
        joined = joined.replace(",", "\\")
    return joined


def _non_negative(name: str, text: str) -> int:
    text = text.strip()
    if not _DIGITS_RE.match(text):
        raise InvalidRequest(f"{name} must be a non-negative integer, not {text!r}")
    return int(text)


def parse_qido_params(
    level: Level,
    params: Iterable[tuple[str, str]],
    scope: Mapping[str, str],
    *,
    default_limit: int,
    max_limit: int,
    defaults: Sequence[str] = (),
) -> QidoRequest:
    """Turn QIDO-RS query parameters into a :class:`QidoRequest`.

    Parameters
    ----------
    level : Level
        The level searched (PATIENT, STUDY, SERIES or IMAGE).
    params : iterable of (name, value)
        The query parameters in request order (names may repeat).
    scope : mapping
        UIDs from the path (``StudyInstanceUID``, ``SeriesInstanceUID``).
    default_limit, max_limit : int
        ``limit`` when none is given, and the largest one honoured.
    defaults : sequence of str
        The default return attributes of the resource.

    Raises
    ------
    InvalidRequest
        Unknown attribute, malformed value, limit or offset.

    References
    ----------
    PS3.18 8.3.4 (query parameters) and 10.6.1.2.
    """
    values: dict[str, list[str]] = {}
    sequence_values: dict[str, dict[str, list[str]]] = {}
    includes: list[str] = []
    include_all = False
    limit_text: str | None = None
    offset_text: str | None = None
    fuzzy = False
    include_rejected = False
    accept: str | None = None
    labels: list[str] = []
    order_by: tuple[OrderKey, ...] = ()
    count = False
    for name, value in params:
        lname = name.lower()
        if lname in _RESERVED:
            if lname == "label":
                labels += _labels(value, level)
            elif lname == "orderby":
                order_by = parse_order_by(value)
            elif lname == "count":
                count = _true_or_false("count", value)
            elif lname == "limit":
                limit_text = value
            elif lname == "offset":
                offset_text = value
            elif lname == "fuzzymatching":
                fuzzy = _true_or_false("fuzzymatching", value)
            elif lname == INCLUDE_REJECTED:
                include_rejected = include_rejected_value(value)
            elif lname == "includefield":
                for item in value.split(","):
                    item = item.strip()
                    if not item:
                        continue
                    if item.lower() == "all":
                        include_all = True
                    else:
                        includes.append(_keyword_of(item.split(".")[0]))
            elif lname == "accept":
                accept = value
            continue  # charset: responses are always UTF-8
        if "." in name:
            parts = name.split(".")
            if len(parts) != 2:
                raise InvalidRequest(f"{name!r}: only one level of sequence matching is supported")
            outer, inner = _keyword_of(parts[0]), _keyword_of(parts[1])
            if _vr(outer) != "SQ":
                raise InvalidRequest(f"{outer} is not a sequence")
            sequence_values.setdefault(outer, {}).setdefault(inner, []).append(value)
            continue
        values.setdefault(_keyword_of(name), []).append(value)

    keys = _Keys()
    for keyword in defaults:
        keys.add(keyword)
    conditions: list[Condition] = []
    for keyword, uid in scope.items():
        conditions.append(Condition(keyword, "UI", Single(uid)))
    for keyword, texts in values.items():
        if keyword in _WEB_COMPUTED:
            raise InvalidRequest(f"{keyword} cannot be used as a matching key")
        _check_level(keyword, level)
        vr = _vr(keyword)
        if vr == "SQ":
            raise InvalidRequest(f"{keyword} is a sequence: match on one of its attributes")
        matcher = parse_matcher(vr, _matcher_value(vr, texts))
        keys.add(keyword)
        if not isinstance(matcher, Universal):
            conditions.append(Condition(keyword, vr, matcher))
    for outer, inner_values in sequence_values.items():
        inner_conditions = []
        for inner, texts in inner_values.items():
            vr = _vr(inner)
            matcher = parse_matcher(vr, _matcher_value(vr, texts))
            if not isinstance(matcher, Universal):
                inner_conditions.append(Condition(inner, vr, matcher))
        keys.add(outer)
        if inner_conditions:
            conditions.append(Condition(outer, "SQ", SequenceMatch(tuple(inner_conditions))))
    for keyword in includes:
        keys.add(keyword)

    limit = default_limit
    warnings: list[str] = []
    if limit_text is not None:
        limit = _non_negative("limit", limit_text)
        if limit == 0:
            raise InvalidRequest("limit must be at least 1")
    if limit > max_limit:
        warnings.append(
            f"The limit {limit} exceeds the maximum supported by the server; "
            f"at most {max_limit} results are returned"
        )
        limit = max_limit
    offset = 0 if offset_text is None else _non_negative("offset", offset_text)

    explicit = frozenset(values) | frozenset(sequence_values) | frozenset(includes)
    query = Query(
        level=level,
        conditions=tuple(conditions),
        return_keys=tuple(k for k in keys.return_keys if k not in _WEB_COMPUTED),
        limit=limit + 1,
        offset=offset,
        fuzzy_person_names=fuzzy,
        include_rejected=include_rejected,
        labels=tuple(dict.fromkeys(labels)),
        order_by=order_by,
    )
    return QidoRequest(
        query=query,
        limit=limit,
        include_all=include_all,
        explicit=explicit | (frozenset(keys.return_keys) & _WEB_COMPUTED),
        warnings=tuple(warnings),
        accept=accept,
        count=count,
    )


def _labels(value: str, level: Level) -> list[str]:
    """The labels of one ``label`` parameter (comma-separated), checked as label names."""
    if level is Level.PATIENT:
        raise InvalidRequest("label filters studies, not patients")
    out = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        out.append(require_label(item))
    return out


# ---------------------------------------------------------------- content negotiation


class Representation:
    """The response representations of QIDO-RS."""

    JSON = "json"
    XML = "xml"


def negotiate(accept: str | None) -> str:
    """Pick JSON or multipart XML for an Accept header (PS3.18 8.7.3).

    Raises
    ------
    NotAcceptable
        When neither representation is acceptable.
    """
    if accept is None or not accept.strip():
        return Representation.JSON
    best: tuple[float, int, str] | None = None
    for index, item in enumerate(accept.split(",")):
        parts = [p.strip() for p in item.split(";")]
        media = parts[0].lower()
        params: dict[str, str] = {}
        for p in parts[1:]:
            if "=" in p:
                k, v = p.split("=", 1)
                params[k.strip().lower()] = v.strip().strip('"').lower()
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        if q <= 0:
            continue
        rep: str | None = None
        if media in (JSON_MEDIA_TYPE, "application/json", "application/*", "*/*"):
            rep = Representation.JSON
        elif (
            media in ("multipart/related", "multipart/*")
            and params.get("type", XML_MEDIA_TYPE) == XML_MEDIA_TYPE
        ):
            rep = Representation.XML
        if rep is not None and (best is None or q > best[0]):
            best = (q, -index, rep)
    if best is None:
        raise NotAcceptable(
            f"cannot produce any of {accept!r}; QIDO-RS answers {JSON_MEDIA_TYPE} or "
            f'multipart/related; type="{XML_MEDIA_TYPE}"'
        )
    return best[2]


# ---------------------------------------------------------------- includefield=all

# Approximate level of header attributes for includefield=all: the header is
# that of the first instance below each match, so attributes that belong to a
# lower level are left out (PS3.3 modules by information entity).
_INSTANCE_KEYWORDS = frozenset(
    {
        "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "ImageType", "InstanceCreationDate",
        "InstanceCreationTime", "InstanceCreatorUID", "AcquisitionDate", "AcquisitionTime",
        "AcquisitionDateTime", "AcquisitionNumber", "ContentDate", "ContentTime",
        "ImagePositionPatient", "ImageOrientationPatient", "SliceLocation", "ImageComments",
        "PatientOrientation", "ImageLaterality", "TemporalPositionIdentifier",
        "ReferencedImageSequence", "SourceImageSequence", "DerivationDescription",
        "NumberOfFrames", "SpecificCharacterSet",
    }
)  # fmt: skip
_SERIES_KEYWORDS = frozenset(
    {
        "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDate", "SeriesTime",
        "SeriesDescription", "Laterality", "FrameOfReferenceUID", "PositionReferenceIndicator",
        "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
        "PerformedProcedureStepID", "PerformedProcedureStepDescription",
        "RequestAttributesSequence", "BodyPartExamined", "ProtocolName", "PatientPosition",
        "OperatorsName", "PerformingPhysicianName",
    }
)  # fmt: skip
_STUDY_KEEP_IN_LOWER_GROUPS = frozenset({"StudyInstanceUID", "StudyID", "OtherStudyNumbers"})


def _at_level(level: Level, elem: DataElement) -> bool:
    group = elem.tag.group
    keyword = elem.keyword
    if group in (0x0002, 0x7FE0) or keyword == "SpecificCharacterSet":
        return False
    if level is Level.IMAGE:
        return True
    if elem.tag.is_private or group == 0x0028 or keyword in _INSTANCE_KEYWORDS:
        return False
    if level is Level.SERIES:
        return (
            group not in (0x0018, 0x0020)
            or keyword in _SERIES_KEYWORDS
            or (keyword in _STUDY_KEEP_IN_LOWER_GROUPS)
        )
    if keyword in _SERIES_KEYWORDS:
        return False
    if group in (0x0018, 0x0020, 0x0040, 0x0054):
        return keyword in _STUDY_KEEP_IN_LOWER_GROUPS
    return True


def _representative_headers(
    archive: Archive, level: Level, matches: Sequence[Match], caller: Caller
) -> dict[str, Dataset]:
    """Header of the first instance below each match, by the match's unique UID."""
    key = _UNIQUE_KEY[level]
    uids = [str(m.get(key)) for m in matches if m.get(key)]
    first: dict[str, int] = {}
    for start in range(0, len(uids), 500):
        chunk = tuple(uids[start : start + 500])
        matcher = Single(chunk[0]) if len(chunk) == 1 else UidList(chunk)
        rows = archive.search.instances(
            Query(level=level, conditions=(Condition(key, "UI", matcher),)), caller, Action.QUERY
        )
        for row in rows:
            uid = {
                Level.STUDY: row.study_instance_uid,
                Level.SERIES: row.series_instance_uid,
                Level.IMAGE: row.sop_instance_uid,
            }[level]
            if uid not in first or row.pk < first[uid]:
                first[uid] = row.pk
    headers = archive.headers.headers(list(first.values()))
    return {uid: headers[pk] for uid, pk in first.items() if pk in headers}


def _include_all(archive: Archive, level: Level, matches: Sequence[Match], caller: Caller) -> None:
    if level not in _UNIQUE_KEY:
        # A patient's attributes are those of the index (corrections included), not
        # of one instance's header, which may predate a patient update.
        return
    headers = _representative_headers(archive, level, matches, caller)
    key = _UNIQUE_KEY[level]
    for match in matches:
        ds = headers.get(str(match.get(key)))
        if ds is None:
            continue
        for elem in ds:
            if int(elem.tag) not in match.values and _at_level(level, elem):
                match.values[int(elem.tag)] = (elem.VR, elem)


# ---------------------------------------------------------------- handlers


@dataclass(frozen=True, slots=True)
class _Resource:
    level: Level
    defaults: tuple[str, ...]
    scope: tuple[tuple[str, str], ...]  # (path parameter, keyword)


def _dedup(*groups: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for group in groups:
        out += [k for k in group if k not in out]
    return tuple(out)


_STUDY = ("study", "StudyInstanceUID")
_SERIES = ("series", "SeriesInstanceUID")
_RESOURCES = {
    "/patients": _Resource(Level.PATIENT, _PATIENT_DEFAULTS, ()),
    "/studies": _Resource(Level.STUDY, _STUDY_DEFAULTS, ()),
    "/studies/{study}/series": _Resource(Level.SERIES, _SERIES_DEFAULTS, (_STUDY,)),
    "/series": _Resource(Level.SERIES, _dedup(_STUDY_DEFAULTS, _SERIES_DEFAULTS), ()),
    "/studies/{study}/series/{series}/instances": _Resource(
        Level.IMAGE, _INSTANCE_DEFAULTS, (_STUDY, _SERIES)
    ),
    "/studies/{study}/instances": _Resource(
        Level.IMAGE, _dedup(_SERIES_DEFAULTS, _INSTANCE_DEFAULTS), (_STUDY,)
    ),
    "/instances": _Resource(Level.IMAGE, _dedup(_STUDY_DEFAULTS, _SERIES_DEFAULTS, _INSTANCE_DEFAULTS), ()),
}


def _retrieve_url(base: str, level: Level, match: Match) -> str | None:
    study = match.get("StudyInstanceUID")
    if not study:
        return None
    url = f"{base}/studies/{study}"
    if level is Level.STUDY:
        return url
    series = match.get("SeriesInstanceUID")
    if not series:
        return None
    url += f"/series/{series}"
    if level is Level.SERIES:
        return url
    sop = match.get("SOPInstanceUID")
    return f"{url}/instances/{sop}" if sop else None


def _finish(match: Match, req: QidoRequest, level: Level, base: str, all_keys: Sequence[str]) -> None:
    if "RetrieveURL" in all_keys:
        match.set("RetrieveURL", _retrieve_url(base, level, match))
    if "InstanceAvailability" in all_keys:
        match.set("InstanceAvailability", "ONLINE")
    for keyword in _IF_PRESENT:
        if keyword in req.explicit:
            continue
        found = vr_of(keyword)
        if found is None:  # pragma: no cover - static names
            continue
        entry = match.values.get(found[0])
        if entry is not None and entry[1] is None:
            del match.values[found[0]]


def _multipart_xml(matches: Sequence[Match]) -> tuple[bytes, str]:
    boundary = secrets.token_hex(16)
    chunks: list[bytes] = []
    for match in matches:
        chunks.append(
            f"--{boundary}\r\nContent-Type: {XML_MEDIA_TYPE}\r\n\r\n".encode("ascii")
            + match_to_xml(match)
            + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    media = f'multipart/related; type="{XML_MEDIA_TYPE}"; boundary={boundary}'
    return b"".join(chunks), media


def _warning_header(warnings: Sequence[str]) -> dict[str, str]:
    if not warnings:
        return {}
    text = ", ".join(
        '299 dicomhub "' + w.replace('"', "'").encode("latin-1", "replace").decode("latin-1") + '"'
        for w in warnings
    )
    return {"Warning": text}


def _audit_query(
    archive: Archive,
    request: Request,
    caller: Caller,
    scope: Mapping[str, str],
    outcome: AuditOutcome,
    matches: int,
) -> None:
    """The one QUERY record of a QIDO-RS request: its keys, and the study its path names."""
    study = scope.get("StudyInstanceUID")
    audit_after_response(
        request,
        archive,
        caller,
        AuditAction.QUERY,
        outcome,
        [AuditedStudy(study[:64])] if study else [],
        {"path": request.url.path[:256], "query": str(request.url.query)[:1024], "matches": matches},
    )


def _search_endpoint(archive: Archive, settings: Settings, resource: _Resource) -> Route:
    def search(request: Request) -> Response:
        scope = {keyword: str(request.path_params[name]) for name, keyword in resource.scope}
        req = parse_qido_params(
            resource.level,
            request.query_params.multi_items(),
            scope,
            default_limit=settings.qido_default_limit,
            max_limit=settings.qido_max_limit,
            defaults=resource.defaults,
        )
        representation = negotiate(req.accept or request.headers.get("accept"))
        caller = caller_of(request)
        try:
            matches = list(archive.search.search(req.query, caller))
        except DicomhubError as exc:
            _audit_query(archive, request, caller, scope, outcome_of(exc), 0)
            raise
        total = archive.search.count(req.query, caller) if req.count else None
        _audit_query(archive, request, caller, scope, AuditOutcome.SUCCESS, len(matches))
        warnings = list(req.warnings)
        if len(matches) > req.limit:
            matches = matches[: req.limit]
            warnings.append(
                "The number of results exceeded the limit; additional results can be "
                f"requested with offset={req.query.offset + req.limit}"
            )
        if req.include_all:
            _include_all(archive, resource.level, matches, caller)
        base = dicomweb_base(request, settings.public_base_url)
        all_keys = _dedup(resource.defaults, tuple(req.explicit))
        for match in matches:
            _finish(match, req, resource.level, base, all_keys)
        LOGGER.info("QIDO-RS %s from %s: %d matches", request.url.path, caller.address, len(matches))
        headers = _warning_header(warnings)
        if total is not None:
            headers[TOTAL_COUNT_HEADER] = str(total)
        if not matches:
            return Response(status_code=204, headers=headers)
        if representation == Representation.XML:
            body, media = _multipart_xml(matches)
            return Response(body, media_type=media, headers=headers)
        return Response(matches_to_json_bytes(matches), media_type=JSON_MEDIA_TYPE, headers=headers)

    return Route(_path(resource), search, methods=["GET"])


def _path(resource: _Resource) -> str:
    for path, res in _RESOURCES.items():
        if res is resource:
            return path
    raise KeyError(resource)  # pragma: no cover


def routes(archive: Archive, settings: Settings) -> list[BaseRoute]:
    """The QIDO-RS routes, relative to the ``/dicomweb`` mount."""
    return [_search_endpoint(archive, settings, resource) for resource in _RESOURCES.values()]
