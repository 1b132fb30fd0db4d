"""SQL for the use cases: add an instance, search, list for retrieval.

The repository speaks in model terms (InstanceHeader, Query, Level) and hides
SQLAlchemy; exceptions from the driver are translated here or in
:mod:`dicomhub.index.engine`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    String,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from dicomhub.errors import Conflict, IndexUnavailable, PatientMismatch
from dicomhub.index import engine as engines
from dicomhub.index.groupcommit import GroupCommitter
from dicomhub.index.links import StudyLinkWrite
from dicomhub.index.pgstore import insert_instance_row
from dicomhub.index.rejection import RejectionWrite
from dicomhub.index.schema import (
    change,
    conflict,
    instance,
    patient,
    patient_coercion,
    rejected_instance,
    series,
    study,
)
from dicomhub.index.search import INSTANCE_COLUMNS, IndexSearch, SearchRow, instance_row
from dicomhub.index.security import insert_labels
from dicomhub.index.validation import ValidationRecord, insert_validation_records
from dicomhub.model.identifiers import Level
from dicomhub.model.records import InstanceHeader, InstanceRow
from dicomhub.model.timestamps import utc_now

__all__ = ["AddOutcome", "AddResult", "Alongside", "IndexRepository", "SearchRow", "StoredBlob"]

_ATTEMPTS = 5


class _NotAllNew(Exception):
    """Internal: a batch that the multi-row insert does not handle (see add_instances)."""


class AddResult(enum.Enum):
    CREATED = "created"
    EXISTS = "exists"
    REPLACED = "replaced"


@dataclass(frozen=True, slots=True)
class AddOutcome:
    result: AddResult
    existing: InstanceRow | None = None
    replaced_blob_key: str | None = None


@dataclass(frozen=True, slots=True)
class Alongside:
    """What ingest writes with an instance row, in the row's transaction: the labels
    of its study and the findings of its IOD validation.

    Written only when the row is (created or replaced): an object that is
    already held keeps what it had. A failure of any of them rolls back the
    row too, so a stored object never lacks its labels (which access control
    reads) or its findings.
    """

    labels: tuple[str, ...] = ()
    validation: ValidationRecord | None = None
    study_link: StudyLinkWrite | None = None  # the study's link to its order (index/links.py)
    # The rejections of a rejection note (index/rejection.py): a note that cannot
    # reject what it references is refused with them.
    rejection: RejectionWrite | None = None

    def write(self, conn: Connection, study_instance_uid: str) -> None:
        if self.labels:
            insert_labels(conn, study_instance_uid, self.labels)
        if self.study_link is not None:
            self.study_link.write(conn)
        if self.validation is not None:
            insert_validation_records(conn, [self.validation])
        if self.rejection is not None:
            self.rejection.write(conn)


def _corrected(conn: Connection, study_instance_uid: str) -> bool:
    """Whether the study was filed under its patient by a correction (index/coercion.py)."""
    found = conn.execute(
        select(patient_coercion.c.study_instance_uid).where(
            patient_coercion.c.study_instance_uid == study_instance_uid
        )
    ).first()
    return found is not None


# Statements built once: SQLAlchemy compiles and caches a constant statement
# object cheaply, while a statement built per call costs ~50 us to key and
# compile. The ingest path runs about ten of them per instance.
_SELECT_INSTANCE = select(*INSTANCE_COLUMNS).where(instance.c.sop_instance_uid == bindparam("b_uid"))
# What every store asks first, in one statement: the row held under the UID and its
# rejection (either may exist without the other: a rejection note may come first).
_ASKED = select(cast(bindparam("b_uid"), String).label("uid")).subquery("asked")
_REJECTION_COLUMNS = tuple(c.label(f"rejection_{c.name}") for c in rejected_instance.c)
_SELECT_INSTANCE_AND_REJECTION = select(*INSTANCE_COLUMNS, *_REJECTION_COLUMNS).select_from(
    _ASKED.outerjoin(instance, instance.c.sop_instance_uid == _ASKED.c.uid).outerjoin(
        rejected_instance, rejected_instance.c.sop_instance_uid == _ASKED.c.uid
    )
)
_SELECT_PATIENT = select(patient.c.pk).where(patient.c.patient_id == bindparam("b_pid"))
_INSERT_PATIENT = insert(patient).returning(patient.c.pk)
_SELECT_STUDY = select(study.c.pk, study.c.patient_pk, study.c.modalities_in_study).where(
    study.c.study_instance_uid == bindparam("b_uid")
)
_INSERT_STUDY = insert(study).returning(study.c.pk)
_SELECT_SERIES = select(series.c.pk, series.c.study_pk).where(
    series.c.series_instance_uid == bindparam("b_uid")
)
_INSERT_SERIES = insert(series).returning(series.c.pk)
_INSERT_INSTANCE = insert(instance)
_SERIES_ADDED = (
    update(study)
    .where(study.c.pk == bindparam("b_pk"))
    # A new series makes its study unstable: cleared here, not by a statement of its own.
    .values(
        number_of_series=study.c.number_of_series + 1, modalities_in_study=bindparam("b_mods"), stable_at=None
    )
)
_SERIES_BUMP = (
    update(series)
    .where(series.c.pk == bindparam("b_pk"))
    .values(number_of_instances=series.c.number_of_instances + bindparam("b_n"))
)
_STUDY_BUMP = (
    update(study)
    .where(study.c.pk == bindparam("b_pk"))
    .values(
        number_of_instances=study.c.number_of_instances + bindparam("b_n"),
        updated_at=bindparam("b_now"),
    )
)
# A store also makes the study and series unstable again: the stability detector
# (dicomhub.index.stability) announces them once no store has come for a while. The
# clearing is a statement of its own that writes only when ``stable_at`` is set (once
# per study that was announced), so a store's updates leave ``stable_at``'s index alone.
_SERIES_STORED = (
    update(series)
    .where(series.c.pk == bindparam("b_pk"))
    .values(
        number_of_instances=series.c.number_of_instances + bindparam("b_n"),
        updated_at=bindparam("b_now"),
    )
)
_STUDY_STORED = _STUDY_BUMP
_SERIES_UNSTABLE = (
    update(series)
    .where(series.c.pk == bindparam("b_pk"), series.c.stable_at.is_not(None))
    .values(stable_at=None)
)
_STUDY_UNSTABLE = (
    update(study)
    .where(study.c.pk == bindparam("b_pk"), study.c.stable_at.is_not(None))
    .values(stable_at=None)
)
_INSERT_CHANGE = insert(change)


def _change(change_type: str, level: Level, uid: str, at: dt.datetime) -> dict[str, Any]:
    return {"change_type": change_type, "level": level.value, "uid": uid, "at": at}


class StoredBlob(Protocol):
    """What the index records of a blob (the index never imports the blob store)."""

    @property
    def key(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...


@dataclass(frozen=True, slots=True)
class _Parents:
    patient_id: str
    study_uid: str
    study_pk: int
    series_pk: int
    # When (time.monotonic) a committed store of this process cleared the series'
    # and study's stable_at: see IndexRepository.unstable_for.
    cleared_at: float = -math.inf

    def take(self, h: InstanceHeader) -> bool:
        """Whether ``h`` belongs under these parents: the same study and Patient ID
        (else the store goes the long way, which finds or refuses its parents)."""
        return self.study_uid == h.study_instance_uid and self.patient_id == h.patient_id


K = TypeVar("K")
V = TypeVar("V")


class _LRU(Generic[K, V]):
    """A small thread-safe least-recently-used map."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class IndexRepository(IndexSearch):
    """The index of one archive, on one SQLAlchemy engine (its queries: :class:`IndexSearch`)."""

    def __init__(self, engine: Engine, unstable_for: float = 0.0) -> None:
        """``unstable_for``: seconds during which a store need not clear ``stable_at``
        again after this process's last store into the same series cleared it. The
        stability detector announces a study only once no store came for its
        ``stable_age``; every store writes ``updated_at``, so within a fraction of that
        age the detector cannot have set ``stable_at`` since (half of it leaves room for
        clock skew between nodes). 0: every store clears."""
        self.engine = engine
        self.unstable_for = unstable_for
        self._writer = GroupCommitter(engine)
        # Series UID -> keys of its parents, for the stores that fill a
        # series one instance at a time (most of them).
        self._parents: _LRU[str, _Parents] = _LRU(4096)

    # ------------------------------------------------------------ ingest

    def get_instance(self, sop_instance_uid: str) -> InstanceRow | None:
        with engines.read_statements(self.engine) as conn:
            return self._get_instance(conn, sop_instance_uid)

    def get_instance_and_rejection(
        self, sop_instance_uid: str
    ) -> tuple[InstanceRow | None, dict[str, Any] | None]:
        """The instance's row and its rejection (IHE IOCM): what a store asks before it
        writes anything, in one statement without BEGIN and COMMIT. A store that found
        nothing tells :meth:`add_instance` (``absent``), whose transaction then does not
        look again."""
        with engines.read_statements(self.engine) as conn:
            r = conn.execute(_SELECT_INSTANCE_AND_REJECTION, {"b_uid": sop_instance_uid}).mappings().one()
        held = instance_row(r) if r["pk"] is not None else None
        if r["rejection_pk"] is None:
            return held, None
        return held, {c.name: r[f"rejection_{c.name}"] for c in rejected_instance.c}

    def _get_instance(self, conn: Connection, sop_instance_uid: str) -> InstanceRow | None:
        r = conn.execute(_SELECT_INSTANCE, {"b_uid": sop_instance_uid}).mappings().first()
        return instance_row(r) if r is not None else None

    def add_instance(
        self,
        header: InstanceHeader,
        blob: StoredBlob,
        content_sha256: str,
        source_ae_title: str | None,
        overwrite: bool,
        alongside: Alongside | None = None,
        *,
        absent: bool = False,
    ) -> AddOutcome:
        """Index an instance whose blob is already durable, in one transaction
        (with what goes ``alongside`` it, when the row is written).

        ``absent``: the caller found nothing under the UID just before, so the
        transaction inserts without looking again. Should another writer have
        stored the UID since, the insert violates its unique key, and the
        retry below looks.

        Returns EXISTS (with the existing row) when the SOP Instance UID is
        already indexed and ``overwrite`` is false or the bytes are the same.

        Raises
        ------
        PatientMismatch
            The study is indexed under another PatientID.
        Conflict
            The series is indexed under another study.
        """
        job = self._add_job(header, blob, content_sha256, source_ae_title, overwrite, alongside, absent)
        for attempt in range(_ATTEMPTS):
            if attempt:
                job = self._add_job(header, blob, content_sha256, source_ae_title, overwrite, alongside)
            try:
                outcome, parents = self._writer.run(job)
                if parents is not None:
                    # Remembered only once committed: keys of a rolled-back
                    # transaction must never be reused from here.
                    self._parents.put(header.series_instance_uid, parents)
                return outcome
            except IntegrityError as exc:
                # A remembered parent may have been deleted meanwhile.
                self._parents.clear()
                # Another writer (another node on PostgreSQL) created the same
                # patient, study, series or instance between our read and
                # our insert: retry, and the reads will now see it.
                if attempt == _ATTEMPTS - 1:
                    raise IndexUnavailable(f"index write kept conflicting: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def add_instances(
        self,
        items: Sequence[tuple[InstanceHeader, StoredBlob, str, str | None]],
        overwrite: bool,
        alongside: Sequence[Alongside | None] | None = None,
    ) -> list[AddOutcome | BaseException]:
        """Index several instances (header, blob, content digest, source AE) in shared
        transactions; each item gets its outcome or its error, as from :meth:`add_instance`.
        ``alongside`` has one entry per item."""
        extras = list(alongside) if alongside is not None else [None] * len(items)
        jobs = [
            self._add_job(h, b, c, ae, overwrite, extra)
            for (h, b, c, ae), extra in zip(items, extras, strict=True)
        ]
        results = self._writer.run_all(jobs)
        out: list[AddOutcome | BaseException] = []
        for (header, blob, content, ae), extra, result in zip(items, extras, results, strict=True):
            if isinstance(result, IntegrityError):
                # Lost a race with another writer: the one-by-one path retries.
                self._parents.clear()
                try:
                    out.append(self.add_instance(header, blob, content, ae, overwrite, extra))
                except BaseException as exc:
                    out.append(exc)
            elif isinstance(result, BaseException):
                out.append(result)
            else:
                outcome, parents = result
                if parents is not None:
                    self._parents.put(header.series_instance_uid, parents)
                out.append(outcome)
        return out

    def add_new_instances(
        self,
        items: Sequence[tuple[InstanceHeader, StoredBlob, str, str | None]],
        alongside: Sequence[Alongside | None] | None = None,
    ) -> list[AddOutcome] | None:
        """Index instances that are all new, in one transaction of a few multi-row statements.

        The usual batch of a STOW-RS request (new instances of a few series)
        costs a handful of statements instead of several per instance.
        Returns None, having written nothing, when the batch is not that:
        an instance already indexed (by now or by a concurrent writer), the
        same UID twice, or a conflict between parents. The caller then goes
        item by item (:meth:`add_instances`), which gives each its own answer.
        """
        try:
            created, parents = self._writer.run(functools.partial(self._insert_new, items, alongside))
        except (_NotAllNew, PatientMismatch, Conflict, IntegrityError):
            self._parents.clear()  # a remembered parent may be gone: the per-item path finds out
            return None
        for uid, known in parents.items():
            self._parents.put(uid, known)
        return created

    def _insert_new(
        self,
        items: Sequence[tuple[InstanceHeader, StoredBlob, str, str | None]],
        alongside: Sequence[Alongside | None] | None,
        conn: Connection,
    ) -> tuple[list[AddOutcome], dict[str, _Parents]]:
        """Index ``items`` when all are new and unique, with multi-row statements.

        Writes what :meth:`_insert` writes for each item, in the same order
        (change log included); the instance rows, counts and change rows go
        in one statement each.

        Raises
        ------
        _NotAllNew
            An item is already indexed, or two items disagree about a series'
            study or patient: nothing is written, the caller goes item by item.
        """
        uids = [h.sop_instance_uid for h, _b, _c, _ae in items]
        if len(set(uids)) != len(uids):
            raise _NotAllNew
        if conn.execute(select(instance.c.pk).where(instance.c.sop_instance_uid.in_(uids)).limit(1)).first():
            raise _NotAllNew
        engines.serialize_appends(conn)
        now = utc_now()
        changes: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        parents: dict[str, _Parents] = {}
        per_series: dict[int, int] = {}
        per_study: dict[int, int] = {}
        fresh: set[int] = set()  # series inserted here: neither it nor its study needs clearing
        for h, blob, content_sha256, source_ae_title in items:
            known = parents.get(h.series_instance_uid) or self._parents.get(h.series_instance_uid)
            if known is None or not known.take(h):
                if h.series_instance_uid in parents:
                    raise _NotAllNew  # the per-item path reports the conflict for this item only
                series_pk, study_pk, created = self._insert_parents(conn, h, now, changes)
                known = _Parents(h.patient_id, h.study_instance_uid, study_pk, series_pk)
                if created:
                    fresh.add(series_pk)
            parents[h.series_instance_uid] = known
            rows.append(self._instance_row(h, blob, content_sha256, source_ae_title, now, known.series_pk))
            per_series[known.series_pk] = per_series.get(known.series_pk, 0) + 1
            per_study[known.study_pk] = per_study.get(known.study_pk, 0) + 1
            changes.append(_change("created", Level.IMAGE, h.sop_instance_uid, now))
        conn.execute(_INSERT_INSTANCE, rows)
        conn.execute(_SERIES_STORED, [{"b_pk": pk, "b_n": n, "b_now": now} for pk, n in per_series.items()])
        conn.execute(_STUDY_STORED, [{"b_pk": pk, "b_n": n, "b_now": now} for pk, n in per_study.items()])
        stale = [pk for pk in per_series if pk not in fresh]
        if stale:
            conn.execute(_SERIES_UNSTABLE, [{"b_pk": pk} for pk in stale])
            stale_studies = {p.study_pk for p in parents.values() if p.series_pk in stale}
            conn.execute(_STUDY_UNSTABLE, [{"b_pk": pk} for pk in sorted(stale_studies)])
        conn.execute(_INSERT_CHANGE, changes)
        if alongside is not None:
            for (h, _b, _c, _ae), extra in zip(items, alongside, strict=True):
                if extra is not None:
                    extra.write(conn, h.study_instance_uid)
        ticks = time.monotonic()
        parents = {uid: dataclasses.replace(known, cleared_at=ticks) for uid, known in parents.items()}
        return [AddOutcome(AddResult.CREATED) for _ in items], parents

    def _add_job(
        self,
        header: InstanceHeader,
        blob: StoredBlob,
        content_sha256: str,
        source_ae_title: str | None,
        overwrite: bool,
        alongside: Alongside | None = None,
        absent: bool = False,
    ) -> Callable[[Connection], tuple[AddOutcome, _Parents | None]]:
        def job(conn: Connection) -> tuple[AddOutcome, _Parents | None]:
            inserted = self._insert_known(conn, header, blob, content_sha256, source_ae_title)
            if inserted is not None:
                if alongside is not None:
                    alongside.write(conn, header.study_instance_uid)
                return AddOutcome(AddResult.CREATED), inserted
            existing = None if absent else self._get_instance(conn, header.sop_instance_uid)
            if existing is not None:
                if existing.content_sha256 == content_sha256 or not overwrite:
                    return AddOutcome(AddResult.EXISTS, existing), None
                engines.serialize_appends(conn)
                self._remove_instance(conn, existing.pk)
                parents = self._insert(conn, header, blob, content_sha256, source_ae_title)
                outcome = AddOutcome(AddResult.REPLACED, existing, existing.blob_key)
            else:
                engines.serialize_appends(conn)
                parents = self._insert(conn, header, blob, content_sha256, source_ae_title)
                outcome = AddOutcome(AddResult.CREATED)
            if alongside is not None:
                alongside.write(conn, header.study_instance_uid)
            return outcome, parents

        return job

    def _insert_known(
        self,
        conn: Connection,
        h: InstanceHeader,
        blob: StoredBlob,
        content_sha256: str,
        source_ae_title: str | None,
    ) -> _Parents | None:
        """On PostgreSQL, index a new instance of a series this process knows in one
        statement (:mod:`dicomhub.index.pgstore`); None, having written nothing, when
        that does not apply (SQLite, parents not known) or its UID is held already."""
        if not engines.is_postgresql(conn):
            return None
        known = self._parents.get(h.series_instance_uid)
        if known is None or not known.take(h):
            return None
        engines.serialize_appends(conn)
        now = utc_now()
        row = self._instance_row(h, blob, content_sha256, source_ae_title, now, known.series_pk)
        if insert_instance_row(conn, row, known.series_pk, known.study_pk, now) is None:
            return None
        return dataclasses.replace(known, cleared_at=time.monotonic())

    def _insert(
        self,
        conn: Connection,
        h: InstanceHeader,
        blob: StoredBlob,
        content_sha256: str,
        source_ae_title: str | None,
    ) -> _Parents:
        """Index one instance under its (found or created) parents."""
        now = utc_now()
        changes: list[dict[str, Any]] = []
        known = self._parents.get(h.series_instance_uid)
        cleared_at = -math.inf
        created = False
        if known is not None and known.take(h):
            series_pk, study_pk, cleared_at = known.series_pk, known.study_pk, known.cleared_at
        else:
            series_pk, study_pk, created = self._insert_parents(conn, h, now, changes)
        conn.execute(
            _INSERT_INSTANCE, self._instance_row(h, blob, content_sha256, source_ae_title, now, series_pk)
        )
        conn.execute(_SERIES_STORED, {"b_pk": series_pk, "b_n": 1, "b_now": now})
        conn.execute(_STUDY_STORED, {"b_pk": study_pk, "b_n": 1, "b_now": now})
        ticks = time.monotonic()
        if created:
            cleared_at = ticks  # a new series has no stable_at, and _SERIES_ADDED cleared its study's
        elif ticks - cleared_at >= self.unstable_for:
            conn.execute(_SERIES_UNSTABLE, {"b_pk": series_pk})
            conn.execute(_STUDY_UNSTABLE, {"b_pk": study_pk})
            cleared_at = ticks
        changes.append(_change("created", Level.IMAGE, h.sop_instance_uid, now))
        conn.execute(_INSERT_CHANGE, changes)
        return _Parents(h.patient_id, h.study_instance_uid, study_pk, series_pk, cleared_at)

    def _insert_parents(
        self, conn: Connection, h: InstanceHeader, now: dt.datetime, changes: list[dict[str, Any]]
    ) -> tuple[int, int, bool]:
        """Find or create the patient, study and series of ``h``; return (series, study) keys
        and whether the series was created (its study's ``stable_at`` is cleared then).

        An object of a study held under another Patient ID is refused
        (:class:`PatientMismatch`), unless the study was corrected (filed under
        another patient by an update, a merge or an operator: it has a patient
        coercion record): then it is a late object of that study, still carrying
        the old values, and joins it where it is now; it leaves the archive
        corrected like the rest of the study.
        """
        st = conn.execute(_SELECT_STUDY, {"b_uid": h.study_instance_uid}).first()
        patient_pk = conn.execute(_SELECT_PATIENT, {"b_pid": h.patient_id}).scalar()
        if st is not None and patient_pk != st[1] and _corrected(conn, h.study_instance_uid):
            patient_pk = st[1]
        if patient_pk is None:
            patient_pk = conn.execute(_INSERT_PATIENT, {**h.patient, "created_at": now}).scalar_one()
            changes.append(_change("created", Level.PATIENT, h.patient_id[:64], now))
        if st is None:
            study_pk = conn.execute(
                _INSERT_STUDY,
                {
                    **h.study,
                    "patient_pk": patient_pk,
                    "modalities_in_study": "",
                    "number_of_series": 0,
                    "number_of_instances": 0,
                    "created_at": now,
                    "updated_at": now,
                },
            ).scalar_one()
            modalities = ""
            changes.append(_change("created", Level.STUDY, h.study_instance_uid, now))
        else:
            study_pk, study_patient_pk, modalities = st
            if study_patient_pk != patient_pk:
                owner = conn.execute(
                    select(patient.c.patient_id).where(patient.c.pk == study_patient_pk)
                ).scalar()
                raise PatientMismatch(
                    f"study {h.study_instance_uid} is held under PatientID {owner!r}, not {h.patient_id!r}"
                )
        se = conn.execute(_SELECT_SERIES, {"b_uid": h.series_instance_uid}).first()
        if se is None:
            series_pk = conn.execute(
                _INSERT_SERIES,
                {
                    **h.series,
                    "study_pk": study_pk,
                    "number_of_instances": 0,
                    "created_at": now,
                    "updated_at": now,
                },
            ).scalar_one()
            modality = h.series.get("modality") or ""
            mods = [m for m in (modalities or "").split("\\") if m]
            if modality and modality not in mods:
                mods = sorted([*mods, modality])
            conn.execute(_SERIES_ADDED, {"b_pk": study_pk, "b_mods": "\\".join(mods)})
            changes.append(_change("created", Level.SERIES, h.series_instance_uid, now))
            return int(series_pk), int(study_pk), True
        series_pk, series_study_pk = se
        if series_study_pk != study_pk:
            raise Conflict(f"series {h.series_instance_uid} is held under another study")
        return int(series_pk), int(study_pk), False

    @staticmethod
    def _instance_row(
        h: InstanceHeader,
        blob: StoredBlob,
        content_sha256: str,
        source_ae_title: str | None,
        now: dt.datetime,
        series_pk: int,
    ) -> dict[str, Any]:
        return {
            **h.instance,
            "series_pk": series_pk,
            "transfer_syntax_uid": h.transfer_syntax_uid,
            "blob_key": blob.key,
            "size": blob.size,
            "sha256": blob.sha256,
            "content_sha256": content_sha256,
            "source_ae_title": (source_ae_title or "")[:16] or None,
            "received_at": now,
            "header_json": None,
            "original_transfer_syntax_uid": h.extra.get("original_transfer_syntax_uid"),
            "original_sha256": h.extra.get("original_sha256"),
        }

    def _remove_instance(self, conn: Connection, instance_pk: int) -> None:
        """Delete one instance row and keep the counts and empty parents right."""
        now = utc_now()
        r = conn.execute(
            select(instance.c.sop_instance_uid, instance.c.series_pk, series.c.study_pk)
            .join(series, series.c.pk == instance.c.series_pk)
            .where(instance.c.pk == instance_pk)
        ).one()
        uid, series_pk, study_pk = r
        conn.execute(delete(instance).where(instance.c.pk == instance_pk))
        conn.execute(_SERIES_BUMP, {"b_pk": series_pk, "b_n": -1})
        conn.execute(_STUDY_BUMP, {"b_pk": study_pk, "b_n": -1, "b_now": now})
        conn.execute(_INSERT_CHANGE, [_change("deleted", Level.IMAGE, uid, now)])

    def record_conflict(
        self,
        kind: str,
        header: InstanceHeader | None,
        sop_instance_uid: str,
        blob: StoredBlob,
        source_ae_title: str | None,
        detail: str,
    ) -> None:
        """Record a refused copy; its blob stays in the store (quarantine)."""
        now = utc_now()
        with engines.write(self.engine) as conn:
            engines.serialize_appends(conn)
            conn.execute(
                insert(conflict).values(
                    kind=kind,
                    sop_instance_uid=sop_instance_uid[:64],
                    study_instance_uid=header.study_instance_uid if header else None,
                    patient_id=header.patient_id[:64] if header else None,
                    blob_key=blob.key,
                    size=blob.size,
                    sha256=blob.sha256,
                    source_ae_title=(source_ae_title or "")[:16] or None,
                    detail=detail,
                    at=now,
                )
            )
            conn.execute(
                insert(change).values(
                    change_type="conflict",
                    level=Level.IMAGE.value,
                    uid=sop_instance_uid[:64],
                    at=now,
                )
            )

    def conflicts(self) -> list[dict[str, Any]]:
        with engines.read(self.engine) as conn:
            rows = conn.execute(select(conflict).order_by(conflict.c.pk)).mappings().all()
            return [dict(r) for r in rows]

    def pending_headers(self, limit: int) -> list[tuple[int, str]]:
        """Instances whose header JSON is not prepared yet: (pk, blob_key)."""
        return self._pending(instance.c.header_json.is_(None), limit)

    def _pending(self, condition: ColumnElement[bool], limit: int) -> list[tuple[int, str]]:
        """(pk, blob_key) of the first ``limit`` instances that meet ``condition`` (derived
        data still to compute: each has a partial index on pk)."""
        with engines.read(self.engine) as conn:
            query = select(instance.c.pk, instance.c.blob_key).where(condition)
            rows = conn.execute(query.order_by(instance.c.pk).limit(limit)).all()
        return [(pk, key) for pk, key in rows]

    def pending_counts(self) -> dict[str, int]:
        """How many instances still wait for derived work, by job (``headers``,
        ``content-digests``): the background process's queues, for metrics.
        Each condition has a partial index, so a count reads only the waiting rows."""
        with engines.read(self.engine) as conn:
            headers = conn.execute(
                select(func.count()).select_from(instance).where(instance.c.header_json.is_(None))
            ).scalar_one()
            digests = conn.execute(
                select(func.count()).select_from(instance).where(instance.c.content_sha256 == "")
            ).scalar_one()
        return {"headers": int(headers), "content-digests": int(digests)}

    def pending_content_digests(self, limit: int) -> list[tuple[int, str, str]]:
        """Instances whose data set digest is not computed yet, oldest first:
        (pk, blob_key, blob sha256), the last ``''`` when that is not computed either."""
        with engines.read(self.engine) as conn:
            query = select(instance.c.pk, instance.c.blob_key, instance.c.sha256).where(
                instance.c.content_sha256 == ""
            )
            rows = conn.execute(query.order_by(instance.c.pk).limit(limit)).all()
        return [(pk, key, sha256) for pk, key, sha256 in rows]

    def set_content_digests(self, values: Sequence[tuple[int, str, str]]) -> None:
        """Record computed digests: (pk, data set digest, blob sha256). Each is written
        only where the row has none yet; a blob digest of ``''`` writes nothing."""
        if not values:
            return
        with engines.write(self.engine) as conn:
            conn.execute(
                update(instance)
                .where(instance.c.pk == bindparam("b_pk"), instance.c.content_sha256 == "")
                .values(
                    content_sha256=bindparam("b_digest"),
                    sha256=case((instance.c.sha256 == "", bindparam("b_blob")), else_=instance.c.sha256),
                ),
                [{"b_pk": pk, "b_digest": digest, "b_blob": blob} for pk, digest, blob in values],
            )

    def set_header_json(self, values: Sequence[tuple[int, str]]) -> None:
        if not values:
            return
        with engines.write(self.engine) as conn:
            for pk, text in values:
                conn.execute(
                    update(instance)
                    .where(instance.c.pk == pk, instance.c.header_json.is_(None))
                    .values(header_json=text)
                )

    # ------------------------------------------------------------ operations

    def last_change(self) -> int:
        """The newest change log sequence number (0 for an empty archive)."""
        with engines.read(self.engine) as conn:
            return int(conn.execute(select(func.max(change.c.seq))).scalar() or 0)

    def changes(self, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        with engines.read(self.engine) as conn:
            rows = (
                conn.execute(select(change).where(change.c.seq > since).order_by(change.c.seq).limit(limit))
                .mappings()
                .all()
            )
            return [dict(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with engines.read(self.engine) as conn:
            return {
                name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for name, t in (
                    ("patients", patient),
                    ("studies", study),
                    ("series", series),
                    ("instances", instance),
                )
            }

    def all_blob_keys(self) -> Iterator[str]:
        with engines.read(self.engine) as conn:
            for (key,) in conn.execute(select(instance.c.blob_key)):
                yield key
            for (key,) in conn.execute(select(conflict.c.blob_key)):
                yield key

    def usable(self) -> bool:
        try:
            with engines.read(self.engine) as conn:
                conn.execute(select(func.count()).select_from(change).where(change.c.seq < 0))
            return True
        except (IndexUnavailable, SQLAlchemyError):
            return False

    # ------------------------------------------------------------ delete

    def delete_entity(
        self,
        level: Level,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        *,
        before_removal: Callable[[Connection, Sequence[int]], None] | None = None,
    ) -> dict[str, list[str]]:
        """Remove a study, series or instance and everything below it, in one transaction.

        Counts and ModalitiesInStudy of the parents are recomputed, parents
        left empty are removed, and a ``deleted`` change row is appended per
        removed instance, series, study and patient. The blobs are not
        touched: the caller deletes them once this has committed.
        ``before_removal(conn, instance_pks)`` runs in the same transaction
        just before the instance rows go (the trash copies them there).

        Returns
        -------
        dict
            ``blob_keys``, ``instances``, ``series``, ``studies`` and
            ``patients``: the blob keys and UIDs (PatientIDs) removed.

        Raises
        ------
        NotFound
            No such study, no such series in the study, or no such instance
            in the series.
        """
        from dicomhub.errors import NotFound

        def job(conn: Connection) -> dict[str, list[str]]:
            engines.serialize_appends(conn)
            now = utc_now()
            removed: dict[str, list[str]] = {
                "blob_keys": [], "instances": [], "series": [], "studies": [], "patients": [],
            }  # fmt: skip
            changes: list[dict[str, Any]] = []
            st = conn.execute(
                select(study.c.pk, study.c.patient_pk).where(study.c.study_instance_uid == study_instance_uid)
            ).first()
            if st is None:
                raise NotFound(f"study {study_instance_uid} not found")
            study_pk, patient_pk = int(st[0]), int(st[1])
            series_stmt = select(series.c.pk, series.c.series_instance_uid).where(
                series.c.study_pk == study_pk
            )
            if level is not Level.STUDY:
                series_stmt = series_stmt.where(series.c.series_instance_uid == series_instance_uid)
            series_rows = [(int(pk), str(uid)) for pk, uid in conn.execute(series_stmt).all()]
            if level is not Level.STUDY and not series_rows:
                raise NotFound(f"series {series_instance_uid} not found in study {study_instance_uid}")
            series_pks = [pk for pk, _uid in series_rows]
            inst_stmt = select(instance.c.pk, instance.c.sop_instance_uid, instance.c.blob_key).where(
                instance.c.series_pk.in_(series_pks)
            )
            if level is Level.IMAGE:
                inst_stmt = inst_stmt.where(instance.c.sop_instance_uid == sop_instance_uid)
            inst_rows = conn.execute(inst_stmt).all()
            if level is Level.IMAGE and not inst_rows:
                raise NotFound(f"instance {sop_instance_uid} not found in series {series_instance_uid}")
            inst_pks = [int(r[0]) for r in inst_rows]
            if before_removal is not None:
                before_removal(conn, inst_pks)
            for start in range(0, len(inst_pks), 500):
                conn.execute(delete(instance).where(instance.c.pk.in_(inst_pks[start : start + 500])))
            for _pk, uid, key in inst_rows:
                removed["instances"].append(str(uid))
                removed["blob_keys"].append(str(key))
                changes.append(_change("deleted", Level.IMAGE, str(uid), now))
            for se_pk, se_uid in series_rows:
                remaining = int(
                    conn.execute(
                        select(func.count()).select_from(instance).where(instance.c.series_pk == se_pk)
                    ).scalar_one()
                )
                if remaining:
                    conn.execute(
                        update(series).where(series.c.pk == se_pk).values(number_of_instances=remaining)
                    )
                    continue
                conn.execute(delete(series).where(series.c.pk == se_pk))
                removed["series"].append(se_uid)
                changes.append(_change("deleted", Level.SERIES, se_uid, now))
            left = conn.execute(
                select(series.c.modality, series.c.number_of_instances).where(series.c.study_pk == study_pk)
            ).all()
            if left:
                mods = sorted({str(m) for m, _n in left if m})
                conn.execute(
                    update(study)
                    .where(study.c.pk == study_pk)
                    .values(
                        number_of_series=len(left),
                        number_of_instances=sum(int(n) for _m, n in left),
                        modalities_in_study="\\".join(mods),
                        updated_at=now,
                    )
                )
            else:
                conn.execute(delete(study).where(study.c.pk == study_pk))
                removed["studies"].append(study_instance_uid)
                changes.append(_change("deleted", Level.STUDY, study_instance_uid, now))
                others = conn.execute(
                    select(func.count()).select_from(study).where(study.c.patient_pk == patient_pk)
                ).scalar_one()
                if not others:
                    pid = conn.execute(
                        select(patient.c.patient_id).where(patient.c.pk == patient_pk)
                    ).scalar_one()
                    conn.execute(delete(patient).where(patient.c.pk == patient_pk))
                    removed["patients"].append(str(pid))
                    changes.append(_change("deleted", Level.PATIENT, str(pid)[:64], now))
            if changes:
                conn.execute(_INSERT_CHANGE, changes)
            return removed

        try:
            return self._writer.run(job)
        finally:
            # Keys remembered for the removed series and study are stale now;
            # other processes find out through a foreign-key failure and retry.
            self._parents.clear()
