"""Inventory walks and migration jobs: resumable, parallel, retried, verified.

*Inventory*: the source's studies are found window by StudyDate window; a
C-FIND (or QIDO-RS) answer that the peer cut short (a limit reached, a
warning or cancel status) has its window split in two and asked again, so
that no single query hits the peer's limit. Each finished window, then each
study's series and instances, is committed to the index: a walk interrupted
anywhere resumes with the windows and studies it has not finished.

*Migration*: a job holds one item per series that this archive lacks (wholly
or in part); ``parallel`` workers fetch items (C-MOVE to dicomhub's own AE,
C-GET when the peer refuses C-MOVE, WADO-RS, or files), each fetched object
goes through the one store path, and an item is done only when every SOP
Instance of the source's inventory for its series is in the index. A failed
item is retried with exponential backoff; a job stopped or killed resumes with
the items not done (objects already stored are found present, never twice).
The job ends with a reconcile of its studies that must come out clean.

*Push*: the same job the other way round: the items are the series of this
archive that a fresh inventory of the remote target lacks, each is sent by
C-STORE or STOW-RS (only the objects the target does not hold yet) and is done
when the target holds all of it; the final reconcile is against a fresh
inventory of the target.

*De-identification on the way*: a job's step (project, options, reason) runs
each object through the governed machinery (a ``migration`` run, its mapping);
items and the reconcile then see the source's UIDs as the project maps them.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomhub.config import Settings
from dicomhub.deid import Options
from dicomhub.errors import DicomhubError
from dicomhub.migrate.push import Outcome, Pusher, series_of_item, tls_context
from dicomhub.migrate.sources import (
    DicomwebSource,
    DimseSource,
    FolderSource,
    MoveRefused,
    RemoteError,
    open_source,
)
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.ingest import InstanceOrigin, Part10Object, ReceivedDataSet, StoreOutcome
from dicomhub.model.migration import (
    HEARTBEAT_SECONDS,
    ITEM_DONE,
    ITEM_FAILED,
    ITEM_PENDING,
    STALE_SECONDS,
    Inventory,
    InventorySeries,
    InventoryStudy,
    JobState,
    ReconcileReport,
    RemoteKind,
)
from dicomhub.services.archive import Archive
from dicomhub.services.deidentify import MigrationDeid
from dicomhub.services.liveness import process_alive
from dicomhub.services.migration import selected

__all__ = ["Migrator", "Progress", "Transform", "owner_gone", "owner_name"]

LOGGER = logging.getLogger("dicomhub.migrate")

#: An optional step on the way in: gets each fetched object as a pydicom
#: Dataset and returns the one to store (de-identification, coercion).
Transform = Callable[[Dataset], Dataset]

_EARLIEST = dt.date(1900, 1, 1)
_LISTED_STUDIES = 64  # studies of a DIMSE peer one inventory worker asks about at once
HEARTBEAT = HEARTBEAT_SECONDS
STALE = dt.timedelta(seconds=STALE_SECONDS)


def owner_name(kind: str) -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}"


def owner_gone(owner: str | None) -> bool:
    """True when ``owner`` was a process on this host that no longer exists."""
    if not owner:
        return True
    parts = owner.split(":")
    if len(parts) != 3 or parts[1] != socket.gethostname() or not parts[2].isdigit():
        return False
    return not process_alive(int(parts[2])) or int(parts[2]) == os.getpid()


@dataclass
class Progress:
    """What a job has done so far, given to the progress callback."""

    series_total: int = 0
    series_done: int = 0
    series_failed: int = 0
    instances_total: int = 0
    instances_done: int = 0
    bytes_done: int = 0
    message: str = ""


class _StoreSink:
    """Stores what a source fetches through the archive's one store path."""

    def __init__(
        self, archive: Archive, caller: Caller, transform: Transform | None, origin: InstanceOrigin
    ) -> None:
        self.archive = archive
        self.caller = caller
        self.transform = transform
        self.origin = origin
        self.bytes = 0  # stored (objects found already present count nothing)

    def _transformed(self, data: bytes) -> bytes:
        assert self.transform is not None
        ds = self.transform(dcmread(BytesIO(data)))
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()

    def store_dataset(
        self, dataset: bytes, transfer_syntax_uid: str, sop_class_uid: str, sop_instance_uid: str
    ) -> int:
        if self.transform is not None:
            from dicomhub.model.part10 import file_meta_header

            part10 = file_meta_header(sop_class_uid, sop_instance_uid, transfer_syntax_uid, None) + dataset
            return self.store_part10(part10)
        received = ReceivedDataSet(transfer_syntax_uid, sop_class_uid, sop_instance_uid, dataset)
        result = self.archive.ingest.store(received, self.origin, self.caller)
        return self._count(result.size, result.outcome)

    def _count(self, size: int, outcome: StoreOutcome) -> int:
        if outcome is not StoreOutcome.ALREADY_PRESENT:
            self.bytes += size
            return size
        return 0

    def store_part10(self, data: bytes) -> int:
        if self.transform is not None:
            data = self._transformed(data)
        result = self.archive.ingest.store(Part10Object(data), self.origin, self.caller)
        return self._count(result.size, result.outcome)

    def store_file(self, path: Path) -> int:
        if self.transform is not None:
            return self.store_part10(path.read_bytes())
        result = self.archive.ingest.store(Part10Object(path=str(path)), self.origin, self.caller)
        return self._count(result.size, result.outcome)



class Migrator:
    """Runs inventories and migration jobs of one archive (in the CLI or the server)."""

    def __init__(
        self,
        archive: Archive,
        settings: Settings,
        *,
        transform: Transform | None = None,
        move_destination: str | None = None,
        retries: int = 4,
        backoff: float = 1.0,
    ) -> None:
        self.archive = archive
        self.service = archive.migration
        self.settings = settings
        self.transform = transform
        self.move_destination = move_destination or settings.aet
        self.retries = retries
        self.backoff = backoff

    def _source(self, name: str) -> DimseSource | DicomwebSource | FolderSource:
        _pk, remote = self.service.remote(name)
        return open_source(
            remote,
            self.settings.aet,
            self.move_destination,
            self.settings.dimse_timeout,
            tls_context(self.settings, remote),
        )

    # -- inventory ---------------------------------------------------------

    def inventory(
        self,
        name: str,
        date_from: str | None = None,
        date_to: str | None = None,
        *,
        refresh: bool = False,
        parallel: int = 4,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> Inventory:
        """Walk the source and store its inventory; resume an interrupted walk.

        ``progress(phase, done, total)`` is called as windows and studies finish.
        """
        remote_pk, _remote = self.service.remote(name)
        ledger = self.service
        if refresh or ledger.inventory_complete(remote_pk):
            ledger.restart_inventory(remote_pk)
        source = self._source(name)
        try:
            self._walk_windows(source, remote_pk, date_from, date_to, progress)
        finally:
            source.close()
        pending = ledger.studies_without_content(remote_pk)
        # Studies are asked about on several associations at once: a C-FIND round
        # trip, not the peer, is what limits one. Each thread has its own source.
        sources: list[DimseSource | DicomwebSource | FolderSource] = []
        local = threading.local()

        # A DIMSE peer is asked about a batch of studies at once (three C-FINDs, not
        # three per study); a batch is committed in one transaction.
        batch = _LISTED_STUDIES if isinstance(source, DimseSource) else 1

        def content(study_uids: list[str]) -> dict[str, list[InventorySeries]]:
            mine = getattr(local, "source", None)
            if mine is None:
                mine = local.source = self._source(name)
                sources.append(mine)
            if isinstance(mine, DimseSource):
                return mine.studies_content(study_uids)
            return {study_uid: mine.study_content(study_uid) for study_uid in study_uids}

        batches = [pending[i : i + batch] for i in range(0, len(pending), batch)]
        try:
            with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="inventory") as pool:
                n = 0
                for found in pool.map(content, batches):
                    ledger.record_studies_content(remote_pk, found)
                    n += len(found)
                    if progress:
                        progress("studies", n, len(pending))
        finally:
            for each in sources:
                each.close()
        return ledger.finish_inventory(remote_pk)

    def _walk_windows(
        self,
        source: DimseSource | DicomwebSource | FolderSource,
        remote_pk: int,
        date_from: str | None,
        date_to: str | None,
        progress: Callable[[str, int, int], None] | None,
    ) -> None:
        ledger = self.service
        done = ledger.walked_windows(remote_pk)
        windows = 0

        def key(a: dt.date | None, b: dt.date | None) -> str:
            return "all" if a is None else f"{a:%Y%m%d}-{b:%Y%m%d}"

        def visit(a: dt.date | None, b: dt.date | None) -> None:
            nonlocal windows
            if key(a, b) in done:
                return
            studies, cut = source.find_studies(
                a.strftime("%Y%m%d") if a else None, b.strftime("%Y%m%d") if b else None
            )
            if cut:
                if a is None or b is None:
                    a, b = _EARLIEST, dt.date.today()
                    if key(a, b) in done:
                        return
                    visit(a, b)
                    return
                if a >= b:
                    raise RemoteError(
                        f"the peer cut its answer short for the single day {a:%Y%m%d} "
                        f"({len(studies)} studies): its find limit is too low to walk"
                    )
                mid = a + (b - a) // 2
                visit(a, mid)
                visit(mid + 1 * dt.timedelta(days=1), b)
                return
            ledger.record_window(remote_pk, key(a, b), studies)
            done.add(key(a, b))
            windows += 1
            if progress:
                progress("windows", windows, 0)

        if date_from or date_to:
            start = dt.datetime.strptime(date_from, "%Y%m%d").date() if date_from else _EARLIEST
            end = dt.datetime.strptime(date_to, "%Y%m%d").date() if date_to else dt.date.today()
            visit(start, end)
        else:
            visit(None, None)

    # -- jobs --------------------------------------------------------------

    def start(
        self,
        name: str,
        selection: dict[str, Any],
        parallel: int,
        owner: str,
        *,
        direction: str = "pull",
        transform: dict[str, Any] | None = None,
    ) -> tuple[int, bool]:
        """The unfinished job with ``name`` (taken over: True), or a new one, claimed by ``owner``.

        ``direction``: ``pull`` from the remote, or ``push`` to it; ``transform``: the
        de-identification step (project, options, reason). An unfinished job is resumed
        as it was created, so asking for another direction or step is refused.
        """
        remote_pk, _ = self.service.remote(name)
        job_id = self.service.unfinished_job(remote_pk)
        if job_id is None:
            job_id = self.service.create_job(
                name, selection, parallel, owner=owner, direction=direction, transform=transform
            )
            return job_id, False
        job = self.service.job(job_id)
        project = (job["transform"] or {}).get("project")
        if job["direction"] != direction or project != (transform or {}).get("project"):
            raise DicomhubError(
                f"migration job {job_id} with {name!r} is unfinished and is a {job['direction']}"
                + (f" de-identified for project {project!r}" if project else " without de-identification")
                + "; resume it with the same direction and --deid, or stop it first"
            )
        stale = dt.datetime.now(dt.UTC) - STALE
        if owner_gone(job["owner"]):
            stale = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        if not self.service.take_over(job_id, owner, stale):
            raise DicomhubError(
                f"migration job {job_id} from {name!r} is being run by {job['owner']}; "
                "stop it (POST /migrations/{id}/stop) or wait for it"
            )
        return job_id, True

    def run(
        self,
        job_id: int,
        owner: str,
        *,
        progress: Callable[[Progress], None] | None = None,
        stop: threading.Event | None = None,
    ) -> JobState:
        """Run a job this runner has claimed, to its end or until stopped.

        A pull job fetches from the remote into this archive; a push job sends this
        archive's objects to the remote. Either way, with a de-identification step
        the objects are de-identified on the way and the final reconcile compares the
        source mapped through the project's mapping with the target.
        """
        stop = stop or threading.Event()
        ledger = self.service
        job = ledger.job(job_id)
        name, selection = job["remote"], job["selection"]
        push = job["direction"] == "push"
        remote_pk, remote = self.service.remote(name)
        beat_done = threading.Event()

        def beat() -> None:
            while not beat_done.wait(HEARTBEAT):
                try:
                    if ledger.heartbeat(job_id, owner):
                        stop.set()
                except DicomhubError as exc:  # the index is busy: try again next beat
                    LOGGER.warning("migration job %s heartbeat failed: %s", job_id, exc)

        beater = threading.Thread(target=beat, name=f"migration-{job_id}-heartbeat", daemon=True)
        beater.start()
        steps: dict[str, Any] | None = job["transform"]
        run_pk: int | None = (steps or {}).get("run")
        try:
            uid = self._uid_mapper(steps)
            if push:
                # What the target holds now: the items are what it lacks.
                if not ledger.has_items(job_id):
                    self.inventory(name, refresh=True, parallel=job["parallel"])
                source_inventory = self.service.local_inventory()
            else:
                if not ledger.inventory_complete(remote_pk):
                    self.inventory(name, parallel=job["parallel"])
                source_inventory = ledger.stored_inventory(remote_pk)
            studies = {u: s for u, s in source_inventory.studies.items() if selected(s, selection)}
            if not ledger.has_items(job_id):
                held = (
                    ledger.stored_inventory(remote_pk)
                    if push
                    else self.service.local_inventory([uid(u) for u in studies])
                )
                items = self._missing(studies, held, uid)
                if steps is not None and items:
                    run_pk = self._start_deid_run(job_id, steps, name, push, owner, studies, items)
                ledger.add_items(job_id, items)
            step = self.archive.deid.migration_step(run_pk) if run_pk is not None else None
            state = self._transfer(
                job_id, remote.kind, name, source_inventory, job["parallel"], progress, stop,
                push=push, step=step, uid=uid,
            )  # fmt: skip
            if state is JobState.STOPPED:
                # Asked to stop: stopped until resumed. The runner shutting down
                # (server restart): pending again, for the next runner.
                asked = self.service.job(job_id)["state"] == JobState.STOPPING.value
                final_stop = JobState.STOPPED if asked else JobState.PENDING
                ledger.end_job(job_id, final_stop)
                return final_stop
            if push:  # the reconcile is against a fresh inventory of the target
                self.inventory(name, refresh=True, parallel=job["parallel"])
            report = self.service.reconcile(
                name, only=list(studies), push=push, map_source=self._mapping(steps)
            )
            final = JobState.DONE if report.clean and state is JobState.DONE else JobState.FAILED
            failed = ledger.job_items(job_id, [ITEM_FAILED]) if final is not JobState.DONE else []
            error = None if final is JobState.DONE else _failure_text(report, failed)
            ledger.end_job(job_id, final, error=error or "", reconcile_clean=report.clean)
            if run_pk is not None:
                self.archive.deid.finish_migration_run(run_pk)
            return final
        except Exception as exc:
            # Retried items failed or the peer is unreachable: the job can be resumed.
            LOGGER.exception("migration job %s failed", job_id)
            ledger.end_job(job_id, JobState.FAILED, error=str(exc) or type(exc).__name__)
            return JobState.FAILED
        finally:
            beat_done.set()
            beater.join(timeout=HEARTBEAT + 1)

    def _uid_mapper(self, steps: dict[str, Any] | None) -> Callable[[str], str]:
        """The UID a source UID has on the target: itself, or the project's keyed replacement."""
        if steps is None or Options.parse(steps.get("options") or []).retain_uids:
            return lambda value: value
        _pk, key = self.archive.deid.project_key(str(steps["project"]))
        return key.uid

    def _mapping(self, steps: dict[str, Any] | None) -> Callable[[Inventory], Inventory] | None:
        if steps is None:
            return None
        project, options = str(steps["project"]), list(steps.get("options") or [])
        return lambda inv: self.archive.deid.mapped_inventory(project, options, inv)

    def _start_deid_run(
        self,
        job_id: int,
        steps: dict[str, Any],
        name: str,
        push: bool,
        owner: str,
        studies: dict[str, InventoryStudy],
        items: list[tuple[str, str, int]],
    ) -> int:
        """The job's ``migration`` de-identification run, over the instances of its items."""
        wanted = {series for _study, series, _n in items}
        sops = [
            sop
            for study in studies.values()
            for series_uid, series in study.series.items()
            if series_uid in wanted
            for sop in series.instances
        ]
        run_pk = self.archive.deid.start_migration_run(
            str(steps["project"]),
            list(steps.get("options") or []),
            str(steps["reason"]),
            str(steps.get("actor") or owner),
            name,
            "push" if push else "pull",
            sops,
            steps.get("burned_in"),
        )
        self.service.record_deid_run(job_id, steps, run_pk)
        return run_pk

    @staticmethod
    def _missing(
        studies: dict[str, InventoryStudy], held: Inventory, uid: Callable[[str], str]
    ) -> list[tuple[str, str, int]]:
        """Series of ``studies`` with SOP Instances the target (``held``) lacks, the
        source's UIDs seen as they are on the target (``uid``)."""
        items = []
        for study_uid, study in studies.items():
            have = held.studies.get(uid(study_uid))
            for series_uid, series in study.series.items():
                there = have.series.get(uid(series_uid)) if have else None
                if there is None or {uid(sop) for sop in series.instances} - set(there.instances):
                    items.append((study_uid, series_uid, len(series.instances)))
        return items

    def _transfer(
        self,
        job_id: int,
        kind: RemoteKind,
        name: str,
        inventory: Inventory,
        parallel: int,
        progress: Callable[[Progress], None] | None,
        stop: threading.Event,
        *,
        push: bool = False,
        step: MigrationDeid | None = None,
        uid: Callable[[str], str] = str,
    ) -> JobState:
        ledger = self.service
        series_of = {
            series_uid: series
            for study in inventory.studies.values()
            for series_uid, series in study.series.items()
        }
        pending = ledger.job_items(job_id, [ITEM_PENDING])
        counts = ledger.job(job_id)["progress"]
        shown = Progress(
            series_total=counts["series"],
            series_done=counts["series_done"],
            series_failed=counts["series_failed"],
            instances_total=counts["instances"],
            instances_done=counts["instances_done"],
            bytes_done=counts["bytes_done"],
        )
        if progress:
            progress(shown)
        _pk, remote = self.service.remote(name)
        transform = step if step is not None else self.transform
        pusher = Pusher(self.archive, self.settings, remote, step) if push else None
        source = None if pusher is not None else self._source(name)
        caller = (
            Caller(Channel.DIMSE, remote.ae_title, remote.host)
            if kind is RemoteKind.DIMSE
            else Caller(Channel.INTERNAL, f"migrate:{name}")
        )
        # C-MOVE makes the peer send to the running server, which cannot apply the
        # transform; and once the peer refused it, every item goes by C-GET.
        use_get = [isinstance(source, DimseSource) and (remote.retrieve == "get" or transform is not None)]
        lock = threading.Lock()

        def present(study_uid: str, series_uid: str) -> set[str]:
            if pusher is not None:
                return pusher.held(uid(study_uid), uid(series_uid))
            return ledger.held_instances_of_series(uid(series_uid))

        def one(item: dict[str, Any]) -> Outcome:
            study_uid = item["study_instance_uid"]
            series = series_of_item(series_of, item)
            expected = {uid(sop) for sop in series.instances}
            attempts, error = item["attempts"], None
            sink = _StoreSink(self.archive, caller, transform, InstanceOrigin.migration(name))
            for attempt in range(self.retries + 1):
                if stop.is_set():
                    return item, ITEM_PENDING, attempts, 0, sink.bytes, error
                attempts += 1
                try:
                    if pusher is not None:
                        sink.bytes += pusher.push_series(study_uid, series, uid)
                    else:
                        assert source is not None
                        self._fetch(source, study_uid, series, sink, use_get)
                    missing = expected - present(study_uid, series.series_instance_uid)
                    if not missing:
                        return item, ITEM_DONE, attempts, len(series.instances), sink.bytes, None
                    error = f"{len(missing)} of {len(series.instances)} instances not received"
                except (DicomhubError, OSError) as exc:
                    error = str(exc) or type(exc).__name__
                LOGGER.warning("series %s, attempt %d: %s", series.series_instance_uid, attempt + 1, error)
                if attempt < self.retries and stop.wait(min(30.0, self.backoff * 2**attempt)):
                    break
            try:
                done = len(expected & present(study_uid, series.series_instance_uid))
            except (DicomhubError, OSError):
                done = 0
            return item, ITEM_FAILED if not stop.is_set() else ITEM_PENDING, attempts, done, sink.bytes, error

        # A push checks what the target holds study by study: the series of a study are
        # sent (what the target's inventory of the job lacked), then one query tells
        # what arrived. A series that did not arrive is retried on its own.
        known = self.service.stored_inventory(self.service.remote(name)[0]) if pusher is not None else None

        def one_study(items: list[dict[str, Any]]) -> list[Outcome]:
            if pusher is None or known is None or stop.is_set():
                return [one(item) for item in items]
            have = known.studies.get(uid(items[0]["study_instance_uid"]))
            return pusher.push_study(items, have, series_of, uid, one)

        by_study: dict[str, list[dict[str, Any]]] = {}
        for entry in pending:
            by_study.setdefault(
                entry["study_instance_uid"] if pusher is not None else str(entry["pk"]), []
            ).append(entry)

        with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix=f"migrate-{job_id}") as pool:
            queue: Iterator[list[dict[str, Any]]] = iter(by_study.values())
            running: set[Future[list[Outcome]]] = set()

            def refill() -> None:
                while len(running) < max(1, parallel) and not stop.is_set():
                    items = next(queue, None)
                    if items is None:
                        return
                    running.add(pool.submit(one_study, items))

            refill()
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    running.discard(future)
                    for item, state, attempts, done, nbytes, error in future.result():
                        self._finished(item, state, attempts, done, nbytes, error, shown, lock)
                    if progress:
                        progress(shown)
                refill()
        if source is not None:
            source.close()
        if pusher is not None:
            pusher.close()
            if pusher.transcoded:
                ledger.set_job_notes(job_id, pusher.notes())
        if stop.is_set() and ledger.job_items(job_id, [ITEM_PENDING]):
            return JobState.STOPPED
        return JobState.FAILED if ledger.job_items(job_id, [ITEM_FAILED]) else JobState.DONE

    def _finished(
        self,
        item: dict[str, Any],
        state: str,
        attempts: int,
        done: int,
        nbytes: int,
        error: str | None,
        shown: Progress,
        lock: threading.Lock,
    ) -> None:
        self.service.finish_item(item["pk"], state, attempts, done, item["transferred_bytes"] + nbytes, error)
        with lock:
            shown.bytes_done += nbytes
            if state == ITEM_DONE:
                shown.series_done += 1
                shown.instances_done += item["expected_instances"]
            elif state == ITEM_FAILED:
                shown.series_failed += 1

    def _fetch(
        self,
        source: DimseSource | DicomwebSource | FolderSource,
        study_uid: str,
        series: InventorySeries,
        sink: _StoreSink,
        use_get: list[bool],
    ) -> None:
        if not isinstance(source, DimseSource):
            source.retrieve_series(study_uid, series, sink)
        elif use_get[0]:
            source.get_series(study_uid, series, sink)
        else:
            try:
                source.move_series(study_uid, series)
            except MoveRefused as exc:
                if source.remote.retrieve == "move":
                    raise
                LOGGER.warning(
                    "%s refuses C-MOVE to %s (%s): using C-GET",
                    source.remote.name,
                    self.move_destination,
                    exc,
                )
                use_get[0] = True
                source.get_series(study_uid, series, sink)


def _failure_text(report: ReconcileReport, failed: list[dict[str, Any]]) -> str:
    parts = []
    if failed:
        parts.append(
            f"{len(failed)} series failed (first: {failed[0]['series_instance_uid']}: {failed[0]['error']})"
        )
    problems = report.problems()
    if problems:
        parts.append(f"reconcile: {len(problems)} studies differ (first: {problems[0].study_instance_uid}: "
                     f"{problems[0].status})")  # fmt: skip
    return "; ".join(parts)
