"""DIMSE requests -> service calls -> statuses.

One ``handle_<service>`` per DIMSE service, called by the association code in
:mod:`dicomhub.dimse.providers` on the association's thread. Each translates
errors through :mod:`dicomhub.dimse.status`; none lets an exception escape.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
from collections.abc import Callable, Iterator

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from dicomhub.config import DeidExport, Settings
from dicomhub.config.checks import tls_client_context
from dicomhub.dimse import status
from dicomhub.dimse.commitment import report_dataset
from dicomhub.dimse.identifiers import encode_match
from dicomhub.dimse.requests import (
    FileRegion,
    Identifier,
    NActionOutcome,
    NActionRequest,
    QueryRequest,
    RetrievePlan,
    Sendable,
)
from dicomhub.dimse.session import AssociationSession
from dicomhub.errors import DicomhubError, InvalidIdentifier, UnknownDestination
from dicomhub.model.access import Access, Action
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditOutcome
from dicomhub.model.caller import Caller
from dicomhub.model.coercion import PatientCoercion
from dicomhub.model.commitment import CommitmentItem, CommitmentRequest, CommitmentResult
from dicomhub.model.encoding import little_endian_alternatives, reencode
from dicomhub.model.identifiers import Level
from dicomhub.model.ingest import InstanceOrigin, StoreRequest, StoreResponse
from dicomhub.model.match import Match
from dicomhub.model.peer import Peer, Role
from dicomhub.model.query import Query, Single, UidList, query_from_identifier
from dicomhub.model.records import InstanceRow
from dicomhub.model.structure import dataset_offset
from dicomhub.services.archive import Archive

__all__ = ["handle_find", "handle_n_action", "handle_retrieve", "handle_store"]

LOGGER = logging.getLogger("dicomhub.dimse")

# Objects above this are sent from their file rather than read into memory.
_SEND_FROM_FILE = 16 << 20
# Enough to hold any File Meta group.
_HEAD = 64 * 1024

_STUDY_ROOT = {
    "1.2.840.10008.5.1.4.1.2.2.1",
    "1.2.840.10008.5.1.4.1.2.2.2",
    "1.2.840.10008.5.1.4.1.2.2.3",
}
_GET_MODELS = {"1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3"}
_UNIQUE_KEY = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}


def handle_store(archive: Archive, req: StoreRequest, session: AssociationSession) -> StoreResponse:
    """C-STORE: one call of the one ingest path; the status says what happened.

    Validation, the duplicate decision and the transaction are the ingest
    service's; this only translates its outcome: a refusal through the
    status table, a stored object whose IOD validation (policy ``warn``)
    found errors as 0xB007.
    """
    caller = session.caller
    try:
        session.require(Role.STORE)
        result = archive.ingest.store(req.received(), InstanceOrigin.c_store(req), caller)
    except DicomhubError as exc:
        code = status.store_status(exc)
        if code == status.NOT_AUTHORIZED:
            # Counted for the association's STORE audit event (the study is not named:
            # the caller may not know it exists).
            session.stored("", "", ok=False)
        LOGGER.warning(
            "C-STORE of %s from %s refused (0x%04X): %s",
            req.sop_instance_uid[:80],
            caller.name,
            code,
            exc,
        )
        return StoreResponse(code, str(exc)[:64])
    except Exception as exc:
        LOGGER.exception("C-STORE of %s from %s failed", req.sop_instance_uid[:80], caller.name)
        comment = f"processing failure: {type(exc).__name__}"[:64]
        return StoreResponse(status.STORE_PROCESSING_FAILURE, comment)
    LOGGER.debug("stored %s (%s)", result.sop_instance_uid, result.outcome.value)
    session.stored(result.study_instance_uid, result.series_instance_uid, ok=True)
    if result.warning is not None:
        return StoreResponse(status.STORE_DOES_NOT_MATCH_SOP_CLASS, f"IOD: {result.warning}"[:64])
    return StoreResponse(status.SUCCESS)


def _query(identifier: Dataset, model: str) -> Query:
    level_text = str(identifier.get("QueryRetrieveLevel", "") or "")
    if not level_text:
        raise InvalidIdentifier("Query/Retrieve Level is missing")
    level = Level.parse(level_text)
    if level is Level.PATIENT and model in _STUDY_ROOT:
        raise InvalidIdentifier("the Study Root model has no PATIENT level")
    return query_from_identifier(identifier, level)


def handle_find(
    archive: Archive, settings: Settings, req: QueryRequest, session: AssociationSession
) -> Iterator[tuple[int, Identifier | None]]:
    """C-FIND: one pending response per match, then the final status.

    The index filters the matches by the caller's grants inside the query;
    one QUERY audit event per request."""
    caller = session.caller
    count = 0
    detail: dict[str, object] = {"sop_class_uid": req.sop_class_uid}
    try:
        session.require(Role.QUERY)
        query = _query(req.identifier, req.sop_class_uid)
        detail["level"] = query.level.value
        detail["keys"] = _query_keys(req.identifier)
        for match in archive.search.search(query, caller):
            match.set("QueryRetrieveLevel", query.level.value)
            if "RetrieveAETitle" in query.return_keys:
                match.set("RetrieveAETitle", settings.aet)
            if "InstanceAvailability" in query.return_keys:
                match.set("InstanceAvailability", "ONLINE")
            _set_character_set(match)
            count += 1
            yield status.PENDING, functools.partial(encode_match, match)
    except DicomhubError as exc:
        code = status.find_status(exc)
        LOGGER.warning("C-FIND from %s failed (0x%04X): %s", caller.name, code, exc)
        session.audit_later(
            AuditAction.QUERY, AuditOutcome.MAJOR_FAILURE, detail={**detail, "reason": str(exc)}
        )
        yield code, None
        return
    except GeneratorExit:
        # C-CANCEL (or the association ended) between two matches.
        session.audit_later(
            AuditAction.QUERY, AuditOutcome.SUCCESS, detail={**detail, "matches": count, "cancelled": True}
        )
        raise
    LOGGER.debug("C-FIND %s from %s: %d matches", query.level.value, caller.name, count)
    session.audit_later(
        AuditAction.QUERY, AuditOutcome.SUCCESS, _queried_study(req.identifier), {**detail, "matches": count}
    )
    yield status.SUCCESS, None


def _query_keys(identifier: Dataset) -> dict[str, str]:
    """The matching keys of a query (those with a value), for the audit log."""
    keys: dict[str, str] = {}
    for element in identifier:
        if element.tag.group in (0x0000, 0x0002) or element.VR == "SQ" or element.value in (None, ""):
            continue
        keys[element.keyword or str(element.tag)] = str(element.value)[:128]
    return keys


def _queried_study(identifier: Dataset) -> tuple[AuditedStudy, ...]:
    uid = str(identifier.get("StudyInstanceUID", "") or "")
    return (AuditedStudy(uid),) if uid and "\\" not in uid and "*" not in uid else ()


def _set_character_set(match: Match) -> None:
    # Values come from the index as Python str: they are sent as UTF-8, and
    # announced as such whenever anything is outside ASCII.
    for _vr, value in match.values.values():
        if isinstance(value, DataElement):
            value = value.value
        texts = value if isinstance(value, list) else (value,)
        if any(t is not None and not str(t).isascii() for t in texts):
            match.set("SpecificCharacterSet", "ISO_IR 192")
            return


def _retrieve_query(identifier: Dataset, model: str) -> Query:
    query = _query(identifier, model)
    # PS3.4 C.4.2.2.1 / C.4.3.2.1: a retrieve names the entities by their
    # unique keys; an identifier without the level's unique key would
    # otherwise retrieve the whole archive.
    key = _UNIQUE_KEY[query.level]
    cond = query.condition(key)
    if cond is None or not isinstance(cond.matcher, (Single, UidList)):
        raise InvalidIdentifier(f"a {query.level.value} level retrieve needs {key}")
    return query


def _sendable(archive: Archive, row: InstanceRow, coercion: PatientCoercion | None = None) -> Sendable:
    """One C-GET/C-MOVE sub-operation: the stored data set, or a transcoded copy.

    Small objects are read whole (the fastest path for the common case);
    large ones are sent from their file. Transcoded copies are temporary
    files that the sender removes once sent. With a patient ``coercion`` the
    copy sent carries the corrected Patient module (read whole, or spooled).
    """

    def read() -> memoryview | FileRegion:
        if row.size > _SEND_FROM_FILE:
            path = archive.retrieve.local_path(row, coercion)
            # A store without files (S3) or a corrected copy: spooled, sent the same way and removed after.
            spooled = path is None
            if path is None:
                path = archive.retrieve.spooled_copy(row, coercion)
            with open(path, "rb") as fh:
                offset = dataset_offset(fh.read(_HEAD))
            return FileRegion(path, offset, os.path.getsize(path) - offset, delete_after=spooled)
        raw = archive.retrieve.read(row, coercion)
        return memoryview(raw)[dataset_offset(raw) :]

    def convert(transfer_syntax_uid: str) -> bytes | FileRegion:
        if transfer_syntax_uid in little_endian_alternatives(row.transfer_syntax_uid) and (
            row.size <= _SEND_FROM_FILE
        ):
            return reencode(archive.retrieve.read(row, coercion), transfer_syntax_uid)
        copy = archive.transcode.transcode(row, transfer_syntax_uid)
        if coercion is not None:
            data = archive.retrieve.coerce_file(copy.path, coercion)
            return data[dataset_offset(data) :]
        return FileRegion(copy.path, copy.dataset_offset, copy.size - copy.dataset_offset, delete_after=True)

    return Sendable(
        row.sop_class_uid,
        row.sop_instance_uid,
        row.transfer_syntax_uid,
        read,
        alternatives=archive.transcode.alternatives(row.transfer_syntax_uid),
        convert=convert,
    )


def handle_retrieve(
    archive: Archive, settings: Settings, req: QueryRequest, session: AssociationSession
) -> RetrievePlan | tuple[int, str | None]:
    """C-GET and C-MOVE: what to send, and where (C-MOVE to configured or registered AEs).

    Only studies the caller may RETRIEVE exist for it. A C-MOVE to another AE
    than the caller's own also needs EXPORT on each study, and the destination's
    principal must itself hold RETRIEVE on it: a destination receives only what
    it may see. One RETRIEVE (C-GET) or EXPORT (C-MOVE) audit event per request.
    """
    caller = session.caller
    is_get = req.sop_class_uid in _GET_MODELS
    verb = "C-GET" if is_get else "C-MOVE"
    action = AuditAction.RETRIEVE if is_get else AuditAction.EXPORT
    detail: dict[str, object] = {"sop_class_uid": req.sop_class_uid}
    if not is_get:
        detail["destination"] = req.move_destination or ""
    try:
        session.require(Role.RETRIEVE)
        peer = None if is_get else _move_destination(archive, settings, req.move_destination or "")
        destination = None if peer is None else (peer.host, peer.port or 0, peer.ae_title)
        destination_tls = _destination_tls(settings, peer)
        query = _retrieve_query(req.identifier, req.sop_class_uid)
        detail["level"] = query.level.value
        rows = archive.retrieve.instances(query, caller)
    except DicomhubError as exc:
        code = status.retrieve_status(exc)
        LOGGER.warning("%s from %s refused (0x%04X): %s", verb, caller.name, code, exc)
        session.audit(action, AuditOutcome.MAJOR_FAILURE, detail={**detail, "reason": str(exc)})
        return code, str(exc)[:64]
    withheld = 0
    if destination is not None and destination[2] != caller.name:
        allowed = _permitted(session, rows, Action.EXPORT)
        allowed = _permitted(
            session, allowed, Action.RETRIEVE, _destination_access(archive, session, destination[2])
        )
        withheld, rows = len(rows) - len(allowed), allowed
    LOGGER.info(
        "%s %s from %s%s: %d instances%s",
        verb,
        query.level.value,
        caller.name,
        f" to {req.move_destination}" if destination else "",
        len(rows),
        f" ({withheld} withheld: not permitted for export to it)" if withheld else "",
    )
    session.audit(
        action,
        AuditOutcome.SERIOUS_FAILURE
        if withheld and not rows
        else AuditOutcome.MINOR_FAILURE
        if withheld
        else AuditOutcome.SUCCESS,
        _audited_studies(rows),
        {**detail, "instances": len(rows), "withheld": withheld or None},
    )
    profile = None if is_get else settings.deid_export_for(req.move_destination or "")
    if profile is not None and rows:
        return _deidentified_plan(archive, profile, rows, caller, destination, destination_tls)
    coerced = archive.retrieve.coercions(rows)
    return RetrievePlan(
        [_sendable(archive, row, coerced.get(row.study_instance_uid)) for row in rows],
        destination,
        destination_tls,
    )


def _move_destination(archive: Archive, settings: Settings, ae_title: str) -> Peer:
    """A peer with the role move-destination (config, --remote-ae or the registry)."""
    peer = archive.peers.move_destination(ae_title)
    if peer is None:
        raise UnknownDestination(f"move destination {ae_title!r} is not a peer with move-destination")
    return peer


def _destination_tls(settings: Settings, peer: Peer | None) -> ssl.SSLContext | None:
    """The DICOM TLS client context for a move destination whose peer has ``tls``
    set, else None (plain TCP). Raises ConfigurationError when our CA bundle,
    certificate or key cannot be loaded: the C-MOVE fails rather than fall back
    to plain TCP."""
    if peer is None or not peer.tls:
        return None
    return tls_client_context(settings)


def _destination_access(archive: Archive, session: AssociationSession, ae_title: str) -> Access:
    """The grants of a move destination: those of its peer's principal, else of its AE title."""
    peer = archive.peers.by_ae_title(ae_title)
    return session.access_for(peer.principal_name if peer is not None else ae_title)


def _permitted(
    session: AssociationSession, rows: list[InstanceRow], action: Action, access: Access | None = None
) -> list[InstanceRow]:
    """The rows of the studies ``access`` (default: the caller's) permits ``action`` on."""
    decided: dict[str, bool] = {}
    kept = []
    for row in rows:
        study = row.study_instance_uid
        if study not in decided:
            decided[study] = session.permits(action, study, access)
        if decided[study]:
            kept.append(row)
    return kept


def _audited_studies(rows: list[InstanceRow]) -> tuple[AuditedStudy, ...]:
    """The studies of ``rows`` with their series and instance counts (the audit log
    fills in each study's Patient ID from the index)."""
    series: dict[str, set[str]] = {}
    counts: dict[str, int] = {}
    for row in rows:
        series.setdefault(row.study_instance_uid, set()).add(row.series_instance_uid)
        counts[row.study_instance_uid] = counts.get(row.study_instance_uid, 0) + 1
    return tuple(
        AuditedStudy(study, "", tuple(sorted(s for s in series[study] if s)), counts[study])
        for study in series
    )


def _deidentified_plan(
    archive: Archive,
    profile: DeidExport,
    rows: list[InstanceRow],
    caller: Caller,
    destination: tuple[str, int, str] | None,
    destination_tls: ssl.SSLContext | None,
) -> RetrievePlan | tuple[int, str | None]:
    """A C-MOVE to a destination with a de-identification profile: every object goes
    through the profile as it is sent; none can go out as stored."""
    try:
        items = archive.deid.export_items(profile.project, profile.options, profile.ae_title, rows, caller)
    except DicomhubError as exc:
        # No secret, a changed one, a bad option: nothing at all is sent.
        LOGGER.warning("C-MOVE to %s (de-identifying) refused: %s", profile.ae_title, exc)
        return status.QR_UNABLE_TO_PROCESS, str(exc)[:64]
    return RetrievePlan(
        [
            Sendable(
                i.sop_class_uid,
                i.sop_instance_uid,
                i.transfer_syntax_uid,
                i.read,
                alternatives=little_endian_alternatives(i.transfer_syntax_uid),
                convert=functools.partial(_reencoded, i.part10),
            )
            for i in items
        ],
        destination,
        destination_tls,
    )


def _reencoded(part10: Callable[[], bytes], transfer_syntax_uid: str) -> bytes:
    return reencode(part10(), transfer_syntax_uid)


def handle_n_action(archive: Archive, req: NActionRequest, session: AssociationSession) -> NActionOutcome:
    """Storage Commitment request: record it durably, then report on this association.

    The report commits only instances the caller may RETRIEVE; the others are
    failures (No Such Object Instance), as if they were not held."""
    try:
        items = tuple(
            CommitmentItem(
                str(i.get("ReferencedSOPClassUID", "")), str(i.get("ReferencedSOPInstanceUID", ""))
            )
            for i in req.dataset.get("ReferencedSOPSequence", [])
        )
        request = CommitmentRequest(
            str(req.dataset.get("TransactionUID", "")), items, req.calling_ae_title, req.peer_host
        )
        archive.commitment.request(request)
    except DicomhubError as exc:
        LOGGER.warning("storage commitment request from %s refused: %s", req.calling_ae_title, exc)
        # PS3.4 J.3.2.1.2 / PS3.7 C.4.2: invalid or missing Action Information.
        code = status.N_INVALID_ARGUMENT_VALUE if _has_action_information(req) else status.N_MISSING_ATTRIBUTE
        return NActionOutcome(code)
    result: list[CommitmentResult] = []

    def report() -> tuple[int, Dataset]:
        evaluated = archive.commitment.evaluate(request.transaction_uid)
        if session.restricted(Action.RETRIEVE):
            evaluated = archive.commitment.withhold(
                evaluated,
                _retrievable(archive, session.caller, [i.sop_instance_uid for i in evaluated.successes]),
            )
        result.append(evaluated)
        return report_dataset(result[0])

    def delivered() -> None:
        archive.commitment.delivered(result[0])

    return NActionOutcome(status.SUCCESS, report=report, delivered=delivered)


def _retrievable(archive: Archive, caller: Caller, sop_instance_uids: list[str]) -> set[str]:
    """The instances among ``sop_instance_uids`` that ``caller`` may retrieve (the index
    filters by the caller's grants)."""
    if not sop_instance_uids:
        return set()
    identifier = Dataset()
    identifier.QueryRetrieveLevel = Level.IMAGE.value
    identifier.SOPInstanceUID = sop_instance_uids
    rows = archive.retrieve.instances(query_from_identifier(identifier, Level.IMAGE), caller)
    return {row.sop_instance_uid for row in rows}


def _has_action_information(req: NActionRequest) -> bool:
    """True when the Action Information has its two required attributes (values aside)."""
    return "TransactionUID" in req.dataset and "ReferencedSOPSequence" in req.dataset
