"""Source archives: what they hold (C-FIND / QIDO-RS / a folder walk) and how
their objects are fetched (C-MOVE to dicomhub's own AE, C-GET, WADO-RS, files).

A source hands each fetched object to a :class:`Sink` (the migration runner,
which stores it through the one store path); with C-MOVE the peer sends the
objects to the running ``dicomhub serve`` instead, which stores them itself.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom.status import code_to_category

from dicomhub.codec import transfer_syntaxes
from dicomhub.dimse.requestor import Association, AssociationError, IncomingStore, Responses, StoreHandler
from dicomhub.errors import DicomhubError
from dicomhub.model.identifiers import is_valid_uid
from dicomhub.model.migration import (
    InventoryInstance,
    InventorySeries,
    InventoryStudy,
    RemoteArchive,
    RemoteKind,
)
from dicomhub.model.structure import dataset_offset

__all__ = [
    "DicomwebSource",
    "FIND_CONTEXT",
    "DimseSource",
    "FolderSource",
    "MoveRefused",
    "RemoteError",
    "Sink",
    "Source",
    "open_source",
]

LOGGER = logging.getLogger("dicomhub.migrate")

_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
_GET = "1.2.840.10008.5.1.4.1.2.2.3"
_QUERY_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # Explicit, Implicit VR Little Endian
#: The C-FIND presentation context, for a caller that asks on an association of its own.
FIND_CONTEXT = (_FIND, _QUERY_SYNTAXES)
_STUDY_KEYS = ("PatientID", "PatientName", "StudyDate", "AccessionNumber")
# Studies asked about together by list of UID matching, and the instances their
# counts may add up to: one IMAGE-level answer stays small enough to hold.
_LIST_STUDIES = 32
_LIST_INSTANCES = 2000


class RemoteError(DicomhubError):
    """The remote archive could not be reached or answered with a failure."""


class MoveRefused(RemoteError):
    """The peer refuses C-MOVE to dicomhub (unknown destination, not allowed, no context)."""


class Sink(Protocol):
    """Where a source delivers what it fetches; each returns the bytes stored."""

    def store_dataset(
        self, dataset: bytes, transfer_syntax_uid: str, sop_class_uid: str, sop_instance_uid: str
    ) -> int: ...

    def store_part10(self, data: bytes) -> int: ...

    def store_file(self, path: Path) -> int: ...


class Source(Protocol):
    remote: RemoteArchive

    def find_studies(self, date_from: str | None, date_to: str | None) -> tuple[list[InventoryStudy], bool]:
        """Studies of a StudyDate window (both ``None``: all), and whether the answer
        was cut short by the peer (a limit or a warning status)."""
        ...

    def study_content(self, study_uid: str) -> list[InventorySeries]: ...

    def retrieve_series(self, study_uid: str, series: InventorySeries, sink: Sink) -> int:
        """Fetch a series; return the number of objects delivered (or moved)."""
        ...


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _uid(value: str, what: str) -> str:
    """A UID from the peer, checked: it goes into queries and WADO-RS URLs."""
    if not is_valid_uid(value):
        raise RemoteError(f"the peer answered with an invalid {what}: {value[:80]!r}")
    return value


def _study(ds: Dataset) -> InventoryStudy | None:
    uid = _text(ds, "StudyInstanceUID")
    if not uid:
        return None
    return InventoryStudy(
        _uid(uid, "Study Instance UID"),
        patient_id=_text(ds, "PatientID"),
        patient_name=_text(ds, "PatientName"),
        study_date=_text(ds, "StudyDate"),
        accession_number=_text(ds, "AccessionNumber"),
    )


# --------------------------------------------------------------------------- DIMSE


@dataclass
class DimseSource:
    """A DIMSE archive: C-FIND for the inventory, C-MOVE or C-GET for the objects."""

    remote: RemoteArchive
    calling_ae_title: str
    move_destination: str
    timeout: float = 60.0
    tls: ssl.SSLContext | None = None  # DICOM TLS client context (the peer has tls); None: plain TCP

    def _associate(
        self,
        contexts: Sequence[str | tuple[str, Sequence[str]]],
        roles: dict[str, tuple[bool, bool]] | None = None,
        on_c_store: StoreHandler | None = None,
    ) -> Association:
        """An association with the peer; a bare SOP Class in `contexts` is proposed
        in the query syntaxes (Explicit and Implicit VR Little Endian)."""
        proposed = [(c, _QUERY_SYNTAXES) if isinstance(c, str) else c for c in contexts]
        try:
            return Association.open(
                self.remote.host,
                self.remote.port,
                self.remote.ae_title,
                self.calling_ae_title,
                proposed,
                roles=roles,
                connect_timeout=min(self.timeout, 10.0),
                acse_timeout=self.timeout,
                dimse_timeout=self.timeout,
                tls=self.tls,
                on_c_store=on_c_store,
            )
        except AssociationError as exc:
            over = "" if self.tls is None else " over TLS (handshake or certificate)"
            raise RemoteError(
                f"{self.remote.ae_title}@{self.remote.host}:{self.remote.port} "
                f"refused or did not answer the association{over}: {exc}"
            ) from exc

    def __post_init__(self) -> None:
        self._find_assoc: Association | None = None
        # The peer answered SERIES/IMAGE queries over a list of studies wrongly or not
        # at all: every study is then asked on its own (its queries are baseline).
        self._no_study_lists = False

    def _finder(self) -> Association:
        """One association for all the C-FINDs of a walk (set-up costs more than a query)."""
        if self._find_assoc is None or not self._find_assoc.is_open:
            self._find_assoc = self._associate([(_FIND, _QUERY_SYNTAXES)])
        return self._find_assoc

    def share(self, assoc: Association) -> None:
        """Ask on ``assoc`` (the caller's, e.g. a push target's storage association, on
        which the peer accepted :data:`FIND_CONTEXT`) instead of on one of its own.

        A peer serves a fixed number of associations at a time (Orthanc: four
        threads by default, each one waits up to a second on an idle association
        it polls); a query association per worker next to the storage one held
        each C-STORE up to that second.
        """
        if not any(abstract == _FIND for abstract, _ts in assoc.accepted_contexts):
            return
        if self._find_assoc is not None and self._find_assoc is not assoc and self._find_assoc.is_open:
            with contextlib.suppress(AssociationError, OSError):
                self._find_assoc.release()
        self._find_assoc = assoc

    def close(self) -> None:
        if self._find_assoc is not None and self._find_assoc.is_open:
            self._find_assoc.release()
        self._find_assoc = None

    def _find(self, assoc: Association, query: Dataset) -> tuple[list[Dataset], bool]:
        answers: list[Dataset] = []
        cut = False
        try:
            for response in assoc.send_c_find(_FIND, query):
                code = response.status
                category = code_to_category(code)
                if category == "Pending":
                    try:
                        identifier = response.dataset
                    except Exception as exc:  # noqa: BLE001 - pydicom raises anything on garbage
                        raise RemoteError(f"C-FIND: an undecodable answer from the peer: {exc}") from exc
                    if identifier is None:
                        raise RemoteError("C-FIND: a pending answer without an identifier")
                    answers.append(identifier)
                elif category in ("Cancel", "Warning"):
                    cut = True
                elif category != "Success":
                    comment = response.error_comment or ""
                    raise RemoteError(f"C-FIND failed with status 0x{code:04X} {comment}".strip())
        except AssociationError as exc:
            raise RemoteError(f"C-FIND: {exc}") from exc
        limit = self.remote.find_limit
        return answers, cut or (limit > 0 and len(answers) >= limit)

    def find_studies(self, date_from: str | None, date_to: str | None) -> tuple[list[InventoryStudy], bool]:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        for keyword in _STUDY_KEYS:
            setattr(query, keyword, "")
        if date_from or date_to:
            query.StudyDate = f"{date_from or ''}-{date_to or ''}"
        # No count to check a study list against: it is asked for until two answers agree.
        previous: set[str] | None = None
        for _attempt in range(4):
            answers, cut = self._find(self._finder(), query)
            studies = [s for s in map(_study, answers) if s is not None]
            uids = {s.study_instance_uid for s in studies}
            if uids == previous:
                return studies, cut
            previous = uids
        raise RemoteError("the peer's study lists for one query keep changing")

    def study_content(self, study_uid: str) -> list[InventorySeries]:
        """The study's series and instances, checked against the counts the peer gives
        for the study (asked again when they disagree: an answer lost on the way must
        not become a gap in the inventory)."""
        expected = self._study_counts(study_uid)
        for attempt in range(3):
            found = self._study_content(study_uid)
            counts = (len(found), sum(len(s.instances) for s in found))
            if expected is None or counts == expected:
                return found
            LOGGER.warning(
                "study %s: %d series / %d instances found, the peer counts %d / %d (attempt %d)",
                study_uid, *counts, *expected, attempt + 1,
            )  # fmt: skip
            self.close()  # a new association for the next attempt
        raise RemoteError(f"study {study_uid}: the peer's answers do not add up to its own counts")

    def studies_content(self, study_uids: Sequence[str]) -> dict[str, list[InventorySeries]]:
        """The series and instances of several studies, mostly in three C-FINDs a batch.

        The studies' counts, their series and their instances are each asked for a
        list of Study Instance UIDs (List of UID Matching, PS3.4 C.2.2.2.2); three
        round trips then do the work of three per study. A hierarchical SERIES or
        IMAGE query may insist on one study UID (PS3.4 C.4.1.2.1), so the answers of
        a study count only when they add up to the counts the peer gives for it; any
        other study is asked on its own, as :meth:`study_content` does.
        """
        out: dict[str, list[InventorySeries]] = {}
        if not self._no_study_lists and len(study_uids) > 1:
            for batch in self._batches(study_uids):
                out.update(self._listed_content(batch))
        for study_uid in study_uids:
            if study_uid not in out:
                out[study_uid] = self.study_content(study_uid)
        return out

    def _batches(self, study_uids: Sequence[str]) -> Iterator[dict[str, tuple[int, int]]]:
        """Studies with the counts the peer gives for them, in batches of bounded size."""
        for start in range(0, len(study_uids), _LIST_STUDIES):
            if self._no_study_lists:
                return
            chunk = study_uids[start : start + _LIST_STUDIES]
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = list(chunk)
            query.NumberOfStudyRelatedSeries = None
            query.NumberOfStudyRelatedInstances = None
            answers, cut = self._find(self._finder(), query)
            counts: dict[str, tuple[int, int]] = {}
            for answer in answers:
                uid = _text(answer, "StudyInstanceUID")
                try:
                    counts[uid] = (
                        int(answer.get("NumberOfStudyRelatedSeries")),
                        int(answer.get("NumberOfStudyRelatedInstances")),
                    )
                except (TypeError, ValueError):
                    continue
            if cut or not counts:
                continue  # no counts to check a listed answer against: study by study
            batch: dict[str, tuple[int, int]] = {}
            for uid, (series, instances) in counts.items():
                if uid not in chunk:
                    continue
                if batch and sum(n for _s, n in batch.values()) + instances > _LIST_INSTANCES:
                    yield batch
                    batch = {}
                batch[uid] = (series, instances)
            if batch:
                yield batch

    def _listed_content(self, expected: dict[str, tuple[int, int]]) -> dict[str, list[InventorySeries]]:
        """The studies of ``expected`` whose listed SERIES and IMAGE answers add up to
        their counts; the others are left out (to be asked on their own)."""
        if len(expected) == 1:
            return {}  # one study: its own queries cost the same
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = list(expected)
        query.SeriesInstanceUID = ""
        query.Modality = ""
        try:
            series_answers, cut = self._find(self._finder(), query)
            if cut:
                return {}
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID = list(expected)
            query.SeriesInstanceUID = ""
            query.SOPInstanceUID = ""
            query.SOPClassUID = ""
            image_answers, cut = self._find(self._finder(), query)
            if cut:
                return {}
        except RemoteError as exc:
            if self._find_assoc is None or not self._find_assoc.is_open:
                raise  # the association broke: not a refusal
            LOGGER.debug("no SERIES/IMAGE query over a list of studies: %s", exc)
            self._no_study_lists = True
            return {}
        found: dict[str, dict[str, InventorySeries]] = {uid: {} for uid in expected}
        for answer in series_answers:
            study_uid, uid = _text(answer, "StudyInstanceUID"), _text(answer, "SeriesInstanceUID")
            if study_uid in found and uid:
                series = InventorySeries(_uid(uid, "Series Instance UID"), _text(answer, "Modality"))
                found[study_uid][uid] = series
        owner = {series: study for study, all_series in found.items() for series in all_series}
        for answer in image_answers:
            series_uid, sop = _text(answer, "SeriesInstanceUID"), _text(answer, "SOPInstanceUID")
            at = owner.get(series_uid)
            if at is not None and sop:
                found[at][series_uid].instances[sop] = InventoryInstance(
                    _uid(sop, "SOP Instance UID"), _text(answer, "SOPClassUID")
                )
        out: dict[str, list[InventorySeries]] = {}
        for study, all_series in found.items():
            content = list(all_series.values())
            if (len(content), sum(len(s.instances) for s in content)) == expected[study]:
                out[study] = content
        if not out and any(n for _s, n in expected.values()):
            # Nothing added up: the peer does not match lists below the study level.
            self._no_study_lists = True
        return out

    def _study_counts(self, study_uid: str) -> tuple[int, int] | None:
        """(NumberOfStudyRelatedSeries, NumberOfStudyRelatedInstances), when the peer gives them."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        query.NumberOfStudyRelatedSeries = None
        query.NumberOfStudyRelatedInstances = None
        answers, _cut = self._find(self._finder(), query)
        if len(answers) != 1:
            return None
        series, instances = (
            answers[0].get(k) for k in ("NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
        )
        try:
            return (
                (int(series), int(instances))
                if series not in (None, "") and instances not in (None, "")
                else None
            )
        except (TypeError, ValueError):
            return None

    def _study_content(self, study_uid: str) -> list[InventorySeries]:
        assoc = self._finder()
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = ""
        query.Modality = ""
        answers, cut = self._find(assoc, query)
        if cut:
            raise RemoteError(f"the peer's answer for the series of study {study_uid} is incomplete")
        out = []
        for answer in answers:
            uid = _text(answer, "SeriesInstanceUID")
            if uid:
                out.append(InventorySeries(_uid(uid, "Series Instance UID"), _text(answer, "Modality")))
        # The instances of all series in one query when the peer answers it (a C-FIND
        # round trip costs more than its answers); series by series otherwise.
        whole = self._study_instances(study_uid, with_class=True) if len(out) > 1 else None
        for series in out:
            if whole is not None:
                found = whole.get(series.series_instance_uid, [])
            else:
                query = Dataset()
                query.QueryRetrieveLevel = "IMAGE"
                query.StudyInstanceUID = study_uid
                query.SeriesInstanceUID = series.series_instance_uid
                query.SOPInstanceUID = ""
                query.SOPClassUID = ""
                found, cut = self._find(assoc, query)
                if cut:
                    raise RemoteError(
                        f"the peer's answer for the instances of series "
                        f"{series.series_instance_uid} is incomplete"
                    )
            for i in found:
                sop = _text(i, "SOPInstanceUID")
                if sop:
                    series.instances[sop] = InventoryInstance(
                        _uid(sop, "SOP Instance UID"), _text(i, "SOPClassUID")
                    )
        return out

    def _study_instances(
        self, study_uid: str, *, with_class: bool = False
    ) -> dict[str, list[Dataset]] | None:
        """The IMAGE-level answers of a whole study by Series Instance UID, in one C-FIND;
        None when the peer refuses such a query (PS3.4 C.4.1.2.1 lets it insist on the
        series UID), cuts its answer short, or leaves the series UID out of its answers."""
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = ""
        query.SOPInstanceUID = ""
        if with_class:
            query.SOPClassUID = ""
        try:
            answers, cut = self._find(self._finder(), query)
        except RemoteError as exc:
            if self._find_assoc is None or not self._find_assoc.is_open:
                raise  # the association broke: not a refusal
            LOGGER.debug("study %s: no IMAGE-level query over the whole study: %s", study_uid, exc)
            return None
        if cut:
            return None  # a find limit or a warning: asked series by series instead
        out: dict[str, list[Dataset]] = {}
        for answer in answers:
            series_uid = _text(answer, "SeriesInstanceUID")
            if not series_uid:
                return None
            out.setdefault(series_uid, []).append(answer)
        return out

    def study_instances(self, study_uid: str) -> dict[str, set[str]] | None:
        """Series Instance UID -> the SOP Instance UIDs the peer holds, for a whole study
        in one query (a push target is checked so); None if the peer refuses it."""
        found = self._study_instances(study_uid)
        if found is None:
            return None
        return {
            series: {sop for sop in (_text(a, "SOPInstanceUID") for a in answers) if sop}
            for series, answers in found.items()
        }

    def series_instances(self, study_uid: str, series_uid: str) -> set[str]:
        """The SOP Instance UIDs the peer holds in a series (a push target is checked so)."""
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = series_uid
        query.SOPInstanceUID = ""
        answers, cut = self._find(self._finder(), query)
        if cut:
            raise RemoteError(f"the peer's answer for the instances of series {series_uid} is incomplete")
        return {sop for sop in (_text(a, "SOPInstanceUID") for a in answers) if sop}

    def _identifier(self, study_uid: str, series_uid: str) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        return ds

    def move_series(self, study_uid: str, series: InventorySeries) -> int:
        """C-MOVE the series to dicomhub's own AE; return the completed sub-operations."""
        try:
            assoc = self._associate([(_MOVE, _QUERY_SYNTAXES)])
        except RemoteError as exc:
            raise MoveRefused(str(exc)) from exc
        if not assoc.accepted_contexts:
            assoc.release()
            raise MoveRefused("the peer does not accept C-MOVE (Study Root)")
        completed = 0
        try:
            responses = assoc.send_c_move(
                _MOVE, self._identifier(study_uid, series.series_instance_uid), self.move_destination
            )
            completed = _drain(responses, "C-MOVE")
        finally:
            assoc.release()
        assert responses.final is not None
        code = responses.final.status
        if code_to_category(code) in ("Success", "Warning"):
            return completed
        if completed == 0:
            # 0xA801: move destination unknown; any other failure with nothing
            # sent means the peer will not send to us either.
            raise MoveRefused(f"C-MOVE to {self.move_destination} failed with status 0x{code:04X}")
        raise RemoteError(f"C-MOVE failed with status 0x{code:04X} after {completed} objects")

    def get_series(self, study_uid: str, series: InventorySeries, sink: Sink) -> int:
        """C-GET the series on one association (we take the Storage SCP role)."""
        classes = sorted({i.sop_class_uid for i in series.instances.values() if i.sop_class_uid})
        if not classes:
            raise RemoteError(f"no SOP Class known for series {series.series_instance_uid}")
        syntaxes = [ts.uid for ts in transfer_syntaxes()]
        if len(classes) > 127:
            raise RemoteError("more than 127 SOP Classes in one series")
        received = [0]
        failures: list[str] = []

        def on_store(request: IncomingStore) -> int:
            try:
                sink.store_dataset(
                    request.data, request.transfer_syntax_uid, request.sop_class_uid, request.sop_instance_uid
                )
            except DicomhubError as exc:
                failures.append(f"{request.sop_instance_uid}: {exc}")
                return 0xA700 if "storage" in str(exc).lower() else 0xC000
            received[0] += 1
            return 0x0000

        assoc = self._associate(
            [(_GET, _QUERY_SYNTAXES), *[(c, syntaxes) for c in classes]],
            roles={c: (False, True) for c in classes},
            on_c_store=on_store,
        )
        try:
            responses = assoc.send_c_get(_GET, self._identifier(study_uid, series.series_instance_uid))
            _drain(responses, "C-GET")
        finally:
            assoc.release()
        if failures:
            raise RemoteError(f"{len(failures)} objects not stored: {failures[0]}")
        final = responses.final
        if final is None or code_to_category(final.status) not in ("Success", "Warning"):
            code = -1 if final is None else final.status
            raise RemoteError(f"C-GET failed with status 0x{code:04X}")
        return received[0]

    def retrieve_series(self, study_uid: str, series: InventorySeries, sink: Sink) -> int:
        if self.remote.retrieve == "move":
            return self.move_series(study_uid, series)
        return self.get_series(study_uid, series, sink)


def _drain(responses: Responses, what: str) -> int:
    """Read a C-MOVE/C-GET's responses to the final one; its completed sub-operations."""
    completed = 0
    try:
        for response in responses:
            completed = response.command.completed if response.command.completed is not None else completed
    except AssociationError as exc:
        raise RemoteError(f"{what}: {exc}") from exc
    return completed


# --------------------------------------------------------------------------- DICOMweb


def _multipart_parts(body: bytes, content_type: str) -> Iterator[bytes]:
    """The contents of a multipart/related body's parts (RFC 2046 5.1)."""
    match = re.search(r'boundary="?([^";,]+)"?', content_type)
    if not match:
        raise RemoteError(f"multipart response without a boundary: {content_type!r}")
    delimiter = b"--" + match.group(1).encode("latin-1")
    pos = body.find(delimiter)
    while pos >= 0:
        start = pos + len(delimiter)
        if body[start : start + 2] == b"--":
            return
        head_end = body.find(b"\r\n\r\n", start)
        if head_end < 0:
            raise RemoteError("malformed multipart response (part headers)")
        nxt = body.find(b"\r\n" + delimiter, head_end + 4)
        if nxt < 0:
            raise RemoteError("malformed multipart response (no closing delimiter)")
        yield body[head_end + 4 : nxt]
        pos = nxt + 2


def _json_value(item: dict[str, Any], tag: str) -> str:
    element = item.get(tag) or {}
    values = element.get("Value") or []
    if not values:
        return ""
    value = values[0]
    if isinstance(value, dict):  # PN
        return str(value.get("Alphabetic", ""))
    return str(value)


@dataclass
class DicomwebSource:
    """A DICOMweb archive: QIDO-RS for the inventory, WADO-RS for the objects."""

    remote: RemoteArchive
    timeout: float = 120.0

    def __post_init__(self) -> None:
        headers = {}
        auth = self.remote.auth
        if auth.startswith("bearer:"):
            headers["Authorization"] = f"Bearer {auth[7:]}"
        elif auth.startswith("basic:"):
            token = base64.b64encode(auth[6:].encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self.client = httpx.Client(
            base_url=self.remote.url.rstrip("/"), headers=headers, timeout=self.timeout
        )

    def _qido(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        try:
            r = self.client.get(path, params=params, headers={"Accept": "application/dicom+json"})
        except httpx.HTTPError as exc:
            raise RemoteError(f"QIDO-RS {path}: {exc}") from exc
        if r.status_code == 204:
            return []
        if r.status_code != 200:
            raise RemoteError(f"QIDO-RS {path}: HTTP {r.status_code} {r.text[:200]}")
        return list(r.json())

    def find_studies(self, date_from: str | None, date_to: str | None) -> tuple[list[InventoryStudy], bool]:
        params = {"includefield": "00100010,00100020,00080020,00080050"}
        if date_from or date_to:
            params["StudyDate"] = f"{date_from or ''}-{date_to or ''}"
        if self.remote.find_limit:
            params["limit"] = str(self.remote.find_limit)
        studies = []
        answers = self._qido("/studies", params)
        for item in answers:
            uid = _json_value(item, "0020000D")
            if uid:
                studies.append(
                    InventoryStudy(
                        _uid(uid, "Study Instance UID"),
                        patient_id=_json_value(item, "00100020"),
                        patient_name=_json_value(item, "00100010"),
                        study_date=_json_value(item, "00080020"),
                        accession_number=_json_value(item, "00080050"),
                    )
                )
        limit = self.remote.find_limit
        return studies, limit > 0 and len(answers) >= limit

    def study_content(self, study_uid: str) -> list[InventorySeries]:
        out = []
        for item in self._qido(f"/studies/{study_uid}/series", {"includefield": "00080060"}):
            uid = _json_value(item, "0020000E")
            if not uid:
                continue
            series = InventorySeries(_uid(uid, "Series Instance UID"), _json_value(item, "00080060"))
            for inst in self._qido(
                f"/studies/{study_uid}/series/{uid}/instances", {"includefield": "00080016"}
            ):
                sop = _json_value(inst, "00080018")
                if sop:
                    series.instances[sop] = InventoryInstance(
                        _uid(sop, "SOP Instance UID"), _json_value(inst, "00080016")
                    )
            out.append(series)
        return out

    def series_instances(self, study_uid: str, series_uid: str) -> set[str]:
        """The SOP Instance UIDs the peer holds in a series (a push target is checked so)."""
        study, series = _uid(study_uid, "Study Instance UID"), _uid(series_uid, "Series Instance UID")
        path = f"/studies/{study}/series/{series}"
        try:
            answers = self._qido(f"{path}/instances", {})
        except RemoteError as exc:
            if "HTTP 404" in str(exc):  # nothing of the series yet
                return set()
            raise
        return {sop for sop in (_json_value(a, "00080018") for a in answers) if sop}

    def study_instances(self, study_uid: str) -> dict[str, set[str]] | None:
        """Series Instance UID -> the SOP Instance UIDs the peer holds, for a whole study
        in one QIDO-RS request; None if the answers do not name their series."""
        path = f"/studies/{_uid(study_uid, 'Study Instance UID')}/instances"
        try:
            answers = self._qido(path, {"includefield": "0020000E"})
        except RemoteError as exc:
            if "HTTP 404" in str(exc):  # nothing of the study yet
                return {}
            raise
        out: dict[str, set[str]] = {}
        for answer in answers:
            series, sop = _json_value(answer, "0020000E"), _json_value(answer, "00080018")
            if not series:
                return None
            if sop:
                out.setdefault(series, set()).add(sop)
        return out

    def retrieve_series(self, study_uid: str, series: InventorySeries, sink: Sink) -> int:
        path = f"/studies/{study_uid}/series/{series.series_instance_uid}"
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        try:
            r = self.client.get(path, headers={"Accept": accept})
        except httpx.HTTPError as exc:
            raise RemoteError(f"WADO-RS {path}: {exc}") from exc
        if r.status_code != 200:
            raise RemoteError(f"WADO-RS {path}: HTTP {r.status_code}")
        count = 0
        for part in _multipart_parts(r.content, r.headers.get("content-type", "")):
            sink.store_part10(part)
            count += 1
        return count

    def close(self) -> None:
        self.client.close()


# --------------------------------------------------------------------------- folder


@dataclass
class FolderSource:
    """A folder of Part 10 files (recursive): read once, with each data set's SHA-256."""

    remote: RemoteArchive

    def __post_init__(self) -> None:
        self._studies: dict[str, InventoryStudy] | None = None
        self._paths: dict[str, Path] = {}

    def _scan(self) -> dict[str, InventoryStudy]:
        if self._studies is not None:
            return self._studies
        studies: dict[str, InventoryStudy] = {}
        root = Path(self.remote.path)
        if not root.is_dir():
            raise RemoteError(f"{root} is not a folder")
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                try:
                    data = path.read_bytes()
                    ds = dcmread(path, stop_before_pixels=True)
                    offset = dataset_offset(data)
                except (OSError, InvalidDicomError, DicomhubError, ValueError) as exc:
                    LOGGER.warning("skipped %s: %s", path, exc)
                    continue
                found = _study(ds)
                series_uid, sop = _text(ds, "SeriesInstanceUID"), _text(ds, "SOPInstanceUID")
                if found is None or not series_uid or not sop:
                    continue
                study = studies.setdefault(found.study_instance_uid, found)
                series = study.series.setdefault(
                    series_uid, InventorySeries(series_uid, _text(ds, "Modality"))
                )
                digest = hashlib.sha256(memoryview(data)[offset:]).hexdigest()
                series.instances[sop] = InventoryInstance(sop, _text(ds, "SOPClassUID"), digest)
                self._paths[sop] = path
        self._studies = studies
        return studies

    def find_studies(self, date_from: str | None, date_to: str | None) -> tuple[list[InventoryStudy], bool]:
        found = [
            s
            for s in self._scan().values()
            if (not date_from or s.study_date >= date_from) and (not date_to or s.study_date <= date_to)
        ]
        return found, False

    def study_content(self, study_uid: str) -> list[InventorySeries]:
        study = self._scan().get(study_uid)
        return list(study.series.values()) if study else []

    def close(self) -> None:
        self._studies = None

    def retrieve_series(self, study_uid: str, series: InventorySeries, sink: Sink) -> int:
        self._scan()
        count = 0
        for sop in series.instances:
            path = self._paths.get(sop)
            if path is not None:
                sink.store_file(path)
                count += 1
        return count


def open_source(
    remote: RemoteArchive,
    calling_ae_title: str,
    move_destination: str,
    timeout: float = 60.0,
    tls: ssl.SSLContext | None = None,
) -> DimseSource | DicomwebSource | FolderSource:
    """The source ``remote`` is; ``tls``: the DICOM TLS client context a DIMSE one
    associates through (None: plain TCP)."""
    if remote.kind is RemoteKind.DIMSE:
        return DimseSource(remote, calling_ae_title, move_destination, timeout, tls)
    if remote.kind is RemoteKind.DICOMWEB:
        return DicomwebSource(remote, max(timeout, 120.0))
    return FolderSource(remote)
