"""pynetdicom event handlers: DIMSE requests -> service calls -> statuses.

One ``handle_<service>`` per event. Each translates errors through
:mod:`dicomhub.dimse.status` and never lets an exception reach pynetdicom
(which would answer with its own generic code).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.presentation import build_context

from dicomhub.bootstrap import Archive
from dicomhub.dimse import status
from dicomhub.dimse.contexts import QUERY_RETRIEVE_FIND
from dicomhub.errors import DicomhubError, InvalidIdentifier, UnknownDestination
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.identifiers import Level
from dicomhub.model.query import Query, Single, UidList, query_from_identifier
from dicomhub.services.ingest import StoreResult

__all__ = ["event_handlers", "store_received"]

LOGGER = logging.getLogger("dicomhub.dimse")

_STUDY_ROOT = {
    "1.2.840.10008.5.1.4.1.2.2.1",
    "1.2.840.10008.5.1.4.1.2.2.2",
    "1.2.840.10008.5.1.4.1.2.2.3",
}
_UNIQUE_KEY = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}
_MAX_MOVE_CONTEXTS = 128


def _caller(event: evt.Event) -> Caller:
    requestor = event.assoc.requestor
    return Caller(Channel.DIMSE, requestor.ae_title.strip(), requestor.address)


def store_received(
    archive: Archive,
    dataset: bytes,
    transfer_syntax_uid: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    caller: Caller,
) -> tuple[int, str | None]:
    """Store one received data set; return (status, error comment)."""
    try:
        result: StoreResult = archive.ingest.store_received(
            dataset, transfer_syntax_uid, sop_class_uid, sop_instance_uid, caller
        )
    except DicomhubError as exc:
        code = status.store_status(exc)
        LOGGER.warning(
            "C-STORE of %s from %s refused (0x%04X): %s",
            sop_instance_uid[:80],
            caller.name,
            code,
            exc,
        )
        return code, str(exc)[:64]
    except Exception as exc:
        LOGGER.exception("C-STORE of %s from %s failed", sop_instance_uid[:80], caller.name)
        return status.STORE_PROCESSING_FAILURE, f"processing failure: {type(exc).__name__}"[:64]
    LOGGER.debug("stored %s (%s)", result.sop_instance_uid, result.outcome.value)
    return status.SUCCESS, None


def handle_store(event: evt.Event, archive: Archive) -> Dataset | int:
    """C-STORE on a pynetdicom association (those that also ask for Q/R)."""
    req = event.request
    raw = req.DataSet.getvalue() if req.DataSet is not None else b""
    code, comment = store_received(
        archive,
        raw,
        str(event.context.transfer_syntax),
        str(req.AffectedSOPClassUID or ""),
        str(req.AffectedSOPInstanceUID or ""),
        _caller(event),
    )
    rsp = Dataset()
    rsp.Status = code
    if comment and code != status.SUCCESS:
        rsp.ErrorComment = comment
    return rsp


def _decode_request(event: evt.Event, model: str) -> Query:
    try:
        identifier = event.identifier
    except Exception as exc:
        raise InvalidIdentifier(f"cannot decode the identifier: {exc}") from exc
    level_text = str(identifier.get("QueryRetrieveLevel", "") or "")
    if not level_text:
        raise InvalidIdentifier("Query/Retrieve Level is missing")
    level = Level.parse(level_text)
    if level is Level.PATIENT and model in _STUDY_ROOT:
        raise InvalidIdentifier("the Study Root model has no PATIENT level")
    return query_from_identifier(identifier, level)


def handle_find(event: evt.Event, archive: Archive) -> Iterator[tuple[int, Dataset | None]]:
    """C-FIND: stream one pending response per match; honour C-CANCEL."""
    caller = _caller(event)
    try:
        query = _decode_request(event, str(event.request.AffectedSOPClassUID))
        matches = archive.search.search(query, caller)
        count = 0
        for identifier in matches:
            if event.is_cancelled:
                yield status.CANCEL, None
                return
            identifier.QueryRetrieveLevel = query.level.value
            if "RetrieveAETitle" in query.return_keys:
                identifier.RetrieveAETitle = archive.settings.aet
            if "InstanceAvailability" in query.return_keys:
                identifier.InstanceAvailability = "ONLINE"
            _set_character_set(identifier)
            count += 1
            yield status.PENDING, identifier
    except DicomhubError as exc:
        code = status.find_status(exc)
        LOGGER.warning("C-FIND from %s failed (0x%04X): %s", caller.name, code, exc)
        yield code, None
        return
    except Exception:
        LOGGER.exception("C-FIND from %s failed", caller.name)
        yield status.QR_UNABLE_TO_PROCESS, None
        return
    LOGGER.info("C-FIND %s from %s: %d matches", query.level.value, caller.name, count)
    yield status.SUCCESS, None


def _set_character_set(ds: Dataset) -> None:
    # Values come from the index as Python str: send them as UTF-8 when
    # anything is outside ASCII, so nothing is mangled on the way.
    for elem in ds:
        if isinstance(elem.value, str) and not elem.value.isascii():
            ds.SpecificCharacterSet = "ISO_IR 192"
            return


def _retrieve_query(event: evt.Event) -> Query:
    query = _decode_request(event, str(event.request.AffectedSOPClassUID))
    # PS3.4 C.4.2.2.1 / C.4.3.2.1: a retrieve names the entities by their
    # unique keys; an identifier without the level's unique key would
    # otherwise retrieve the whole archive.
    key = _UNIQUE_KEY[query.level]
    cond = query.condition(key)
    if cond is None or not isinstance(cond.matcher, (Single, UidList)):
        raise InvalidIdentifier(f"a {query.level.value} level retrieve needs {key}")
    return query


def handle_get(event: evt.Event, archive: Archive) -> Iterator[Any]:
    """C-GET: send the matches as C-STORE sub-operations on this association."""
    caller = _caller(event)
    try:
        query = _retrieve_query(event)
        rows = archive.retrieve.instances(query, caller)
    except DicomhubError as exc:
        code = status.retrieve_status(exc)
        LOGGER.warning("C-GET from %s failed (0x%04X): %s", caller.name, code, exc)
        # pynetdicom takes a final status only after a sub-operation count.
        yield 1
        yield code, None
        return
    LOGGER.info("C-GET %s from %s: %d instances", query.level.value, caller.name, len(rows))
    yield len(rows)
    for row in rows:
        if event.is_cancelled:
            yield status.CANCEL, None
            return
        yield status.PENDING, _sendable(archive, row)


def _sendable(archive: Archive, row: Any) -> Dataset:
    # pynetdicom's C-GET/C-MOVE service classes only take a Dataset. Read it
    # lazily: unmodified raw elements are written back as they were stored.
    return pydicom.dcmread(BytesIO(archive.retrieve.read(row)))


def handle_move(event: evt.Event, archive: Archive) -> Iterator[Any]:
    """C-MOVE: open an association to a configured destination and send the matches."""
    caller = _caller(event)
    destination = str(event.move_destination or "").strip()
    remote = archive.settings.remote_ae(destination)
    try:
        if remote is None:
            raise UnknownDestination(f"move destination {destination!r} is not configured")
        query = _retrieve_query(event)
        rows = archive.retrieve.instances(query, caller)
    except UnknownDestination as exc:
        LOGGER.warning("C-MOVE from %s refused: %s", caller.name, exc)
        yield None, None
        return
    except DicomhubError as exc:
        code = status.retrieve_status(exc)
        LOGGER.warning("C-MOVE from %s failed (0x%04X): %s", caller.name, code, exc)
        # pynetdicom takes a final status only after the destination and a
        # sub-operation count.
        yield remote.host, remote.port  # type: ignore[union-attr]
        yield 1
        yield code, None
        return
    pairs = sorted({(r.sop_class_uid, r.transfer_syntax_uid) for r in rows})
    contexts = [build_context(sop, ts) for sop, ts in pairs[:_MAX_MOVE_CONTEXTS]]
    if not contexts:
        contexts = [build_context(QUERY_RETRIEVE_FIND[0])]
    LOGGER.info(
        "C-MOVE %s from %s to %s: %d instances",
        query.level.value,
        caller.name,
        destination,
        len(rows),
    )
    yield remote.host, remote.port, {"contexts": contexts, "ae_title": remote.ae_title}
    yield len(rows)
    for row in rows:
        if event.is_cancelled:
            yield status.CANCEL, None
            return
        yield status.PENDING, _sendable(archive, row)


def event_handlers(archive: Archive) -> list[tuple[Any, Any, list[Any]]]:
    """The (event, handler, args) bindings for a pynetdicom server."""
    return [
        (evt.EVT_C_STORE, handle_store, [archive]),
        (evt.EVT_C_FIND, handle_find, [archive]),
        (evt.EVT_C_GET, handle_get, [archive]),
        (evt.EVT_C_MOVE, handle_move, [archive]),
    ]
