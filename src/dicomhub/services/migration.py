"""Migration use cases that need no network: remote archives by name, stored
inventories, reconciliation against this archive, and the state of migration jobs.

The transfers themselves (C-FIND, C-MOVE, C-GET, QIDO-RS, WADO-RS) are done by
:mod:`dicomhub.migrate`, which records what it does here, through the job
ledger below (inventory walks, claims and heartbeats, items); the HTTP API only
creates, lists and stops jobs, which a runner (the server's background worker
or ``dicomhub migrate``) then picks up from the index.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dicomhub.errors import Conflict, InvalidRequest, NotFound
from dicomhub.index.migration_jobs import MigrationRepository
from dicomhub.index.peers import PeerRepository
from dicomhub.model.caller import Caller
from dicomhub.model.migration import (
    STALE_SECONDS,
    Inventory,
    InventorySeries,
    InventoryStudy,
    JobState,
    ReconcileReport,
    RemoteArchive,
    RemoteKind,
    reconcile,
)
from dicomhub.model.peer import Peer, Role
from dicomhub.model.timestamps import utc_now
from dicomhub.services.contentdigest import ContentDigestService
from dicomhub.services.peers import PeerService

__all__ = ["DIRECTIONS", "MigrationService", "Selection", "check_transform"]

#: pull: the remote is the source and dicomhub the target; push: the other way round.
DIRECTIONS = ("pull", "push")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DATE = re.compile(r"^\d{8}$")
_AET = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE: no backslash, no control characters

Selection = dict[str, Any]


def check_selection(selection: Selection) -> Selection:
    """Validate a job's selection: since/until (YYYYMMDD), modality, patients (list of IDs)."""
    out: Selection = {}
    for key in ("since", "until"):
        value = selection.get(key)
        if value:
            if not isinstance(value, str) or not _DATE.match(value):
                raise InvalidRequest(f"{key} must be a date YYYYMMDD")
            out[key] = value
    modality = selection.get("modality")
    if modality:
        if not isinstance(modality, str) or not re.match(r"^[A-Z0-9_]{1,16}$", modality):
            raise InvalidRequest("modality must be a DICOM Modality code (e.g. CT)")
        out["modality"] = modality
    patients = selection.get("patients")
    if patients:
        if not isinstance(patients, list) or not all(
            isinstance(p, str) and 0 < len(p) <= 64 for p in patients
        ):
            raise InvalidRequest("patients must be a list of Patient IDs")
        out["patients"] = sorted(set(patients))
    unknown = set(selection) - {"since", "until", "modality", "patients"}
    if unknown:
        raise InvalidRequest(f"unknown selection keys: {', '.join(sorted(unknown))}")
    return out


def check_transform(transform: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate a job's de-identification step: ``{"project", "options", "reason", "burned_in"}``.

    The options and the burned-in policy are checked by the de-identification
    service when the job starts (it knows the option names and the policies).
    """
    if not transform:
        return None
    if not isinstance(transform, dict):
        raise InvalidRequest("deid must be an object with project, reason and options")
    project, reason = transform.get("project"), transform.get("reason")
    if not isinstance(project, str) or not 0 < len(project) <= 64 or not project.isprintable():
        raise InvalidRequest("a de-identification project name has 1-64 printable characters")
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidRequest("a migration with de-identification needs a reason (--reason)")
    options = transform.get("options") or []
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise InvalidRequest("deid options must be a list of option names")
    burned_in = transform.get("burned_in")
    if burned_in is not None and not isinstance(burned_in, str):
        raise InvalidRequest("burned_in must be refuse, mask or allow")
    unknown = set(transform) - {"project", "options", "reason", "burned_in", "actor"}
    if unknown:
        raise InvalidRequest(f"unknown deid keys: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {"project": project, "options": sorted(set(options)), "reason": reason.strip()}
    if burned_in:
        out["burned_in"] = burned_in
    if isinstance(transform.get("actor"), str):
        out["actor"] = transform["actor"]
    return out


def selected(study: InventoryStudy, selection: Selection) -> bool:
    if selection.get("since") and (not study.study_date or study.study_date < selection["since"]):
        return False
    if selection.get("until") and (not study.study_date or study.study_date > selection["until"]):
        return False
    if selection.get("modality") and selection["modality"] not in study.modalities.split("\\"):
        return False
    return not (selection.get("patients") and study.patient_id not in selection["patients"])


class MigrationService:
    def __init__(
        self,
        repository: MigrationRepository,
        content_digests: ContentDigestService | None = None,
        peers: PeerService | None = None,
    ) -> None:
        self.repo = repository
        # Without a registry given, the index's own peers (no configured ones).
        self.peers = peers if peers is not None else PeerService(PeerRepository(repository.engine))
        self.content_digests = content_digests
        self.peers.on_remove.append(self.forget)

    def inventory_windows(self, name: str) -> int:
        """How many date windows of the inventory of remote ``name`` are walked."""
        return len(self.repo.done_windows(self.remote(name)[0]))

    def local_inventory(self, study_uids: Iterable[str] | None = None) -> Inventory:
        """What this archive holds, with every data set digest (those that STOW-RS left
        for later are computed first: a reconcile compares them)."""
        if self.content_digests is not None:
            self.content_digests.fill_all()
        return self.repo.local_inventory(study_uids)

    # -- remotes: migration peers ------------------------------------------

    def add_remote(self, remote: RemoteArchive, caller: Caller | None = None) -> None:
        """Register ``remote`` as a peer that migrations pull from (and, but for a
        folder, push to): what ``dicomhub remote add`` did before the peer registry."""
        if not _NAME.match(remote.name):
            raise InvalidRequest("a remote's name has 1-64 letters, digits, '.', '_' or '-'")
        dimse = remote.kind is RemoteKind.DIMSE
        if dimse and (not _AET.match(remote.ae_title) or not remote.ae_title.strip()):
            raise InvalidRequest("the AE title must have 1 to 16 characters")
        if dimse and (not remote.host or not 0 < remote.port < 65536):
            raise InvalidRequest("a DIMSE remote needs a host and a port")
        roles = {Role.MIGRATION_SOURCE} | (
            {Role.MIGRATION_TARGET} if remote.kind is not RemoteKind.FOLDER else set()
        )
        self.peers.add(
            Peer(
                remote.name,
                ae_title=remote.ae_title if dimse else "",
                host=remote.host if dimse else "",
                port=remote.port if dimse else None,
                dicomweb_url=remote.url if remote.kind is RemoteKind.DICOMWEB else "",
                auth=remote.auth if remote.kind is RemoteKind.DICOMWEB else "",
                folder=remote.path if remote.kind is RemoteKind.FOLDER else "",
                roles=frozenset(roles),
                migrate_via=remote.kind,
                retrieve=remote.retrieve,
                find_limit=remote.find_limit,
            ),
            caller or Caller.cli(),
            change="remote-add",
        )

    def remotes(self) -> list[RemoteArchive]:
        """The migration peers, as remote archives (credentials as stored: see ``public``)."""
        return [p.remote() for p in self.peers.list() if p.migration_peer]

    def remote(self, name: str, role: Role | None = None) -> tuple[int, RemoteArchive]:
        """(key of its inventory state, remote archive) of the migration peer ``name``."""
        remote = self.peers.remote(name, role)
        pk = self.repo.state_pk(remote.name)
        assert pk is not None  # created on first use
        return pk, remote

    def remove_remote(self, name: str, caller: Caller | None = None) -> None:
        """Forget a migration peer: its inventory and jobs, and the peer itself unless
        it has other roles (then only its migration roles go)."""
        peer = self.peers.require(name)
        if not peer.migration_peer:
            raise NotFound(f"no remote archive named {name!r} (see `dicomhub peer list`)")
        others = peer.roles - {Role.MIGRATION_SOURCE, Role.MIGRATION_TARGET}
        if others:
            self.peers.update(peer.name, {"roles": [r.value for r in others]}, caller or Caller.cli())
            self.forget(peer.name)
        else:
            self.peers.remove(peer.name, caller or Caller.cli(), change="remote-remove")

    def forget(self, name: str) -> None:
        """Drop the inventory, reconcile runs and jobs of the peer ``name`` (it is removed)."""
        pk = self.repo.state_pk(name, create=False)
        if pk is not None:
            self.repo.remove_remote(pk)

    # -- inventory and reconcile -------------------------------------------

    def inventory(self, name: str) -> Inventory:
        return self.repo.inventory(self.remote(name)[0])

    def reconcile(
        self,
        name: str,
        against: str | None = None,
        only: Iterable[str] | None = None,
        attributes: dict[str, bool] | None = None,
        *,
        push: bool = False,
        map_source: Callable[[Inventory], Inventory] | None = None,
    ) -> ReconcileReport:
        """Compare a remote's stored inventory with this archive (or with another remote's).

        ``push``: this archive is the source and the remote the target (a push
        migration). ``map_source``: the source inventory as it must look on the
        target (de-identified on the way); ``only`` names source studies.
        """
        remote_pk, _ = self.remote(name)
        complete, _at = self.repo.inventory_state(remote_pk)
        if not complete:
            raise Conflict(
                f"the inventory of {name!r} is not complete; run `dicomhub inventory {name}` first"
            )
        wanted = list(only) if only is not None else None
        source_name, target_name = name, "dicomhub"
        if push:
            source, source_name, target_name = self.local_inventory(wanted), "dicomhub", name
        else:
            source = self.repo.inventory(remote_pk)
        if wanted is not None:
            keep = set(wanted)
            source = Inventory({uid: s for uid, s in source.studies.items() if uid in keep})
        if map_source is not None:
            source = map_source(source)
            wanted = list(source.studies) if wanted is not None else None
        if push:
            target = self.repo.inventory(remote_pk)
        elif against is None:
            target = self.local_inventory(wanted)
        else:
            other_pk, _ = self.remote(against)
            target = self.repo.inventory(other_pk)
            target_name = against
        report = reconcile(
            source, target, source_name=source_name, target_name=target_name, only=wanted,
            attributes=attributes,
        )  # fmt: skip
        self.repo.save_reconcile(remote_pk, report.clean, report.as_json())
        return report

    # -- jobs --------------------------------------------------------------

    def create_job(
        self,
        name: str,
        selection: Selection,
        parallel: int = 4,
        owner: str | None = None,
        *,
        direction: str = "pull",
        transform: dict[str, Any] | None = None,
    ) -> int:
        """A new job for the server's background worker, or (with ``owner``) already
        claimed by the caller that will run it.

        ``direction`` ``push`` sends this archive's objects to the remote (a DIMSE or
        DICOMweb target); ``transform`` is the de-identification step on the way.
        """
        if direction == "push" and self.peers.require(name).via is RemoteKind.FOLDER:
            raise InvalidRequest(f"{name!r} is a folder: a push target is a DIMSE or DICOMweb archive")
        remote_pk, remote = self.remote(
            name, Role.MIGRATION_TARGET if direction == "push" else Role.MIGRATION_SOURCE
        )
        if not 1 <= parallel <= 32:
            raise InvalidRequest("parallel must be between 1 and 32")
        if direction not in DIRECTIONS:
            raise InvalidRequest(f"direction is one of {', '.join(DIRECTIONS)}")
        if direction == "push" and remote.kind is RemoteKind.FOLDER:
            raise InvalidRequest(f"{name!r} is a folder: a push target is a DIMSE or DICOMweb archive")
        checked = check_selection(selection)
        steps = check_transform(transform)
        if self.repo.unfinished_job(remote_pk) is not None:
            raise Conflict(f"a migration with {name!r} is unfinished; resume or stop it first")
        return self.repo.create_job(remote_pk, checked, parallel, owner, direction=direction, transform=steps)

    def job(self, job_id: int) -> dict[str, Any]:
        found = self.repo.job(job_id)
        if found is None:
            raise NotFound(f"no migration job {job_id}")
        return found

    def jobs(self) -> list[dict[str, Any]]:
        return self.repo.jobs()

    def stop(self, job_id: int) -> dict[str, Any]:
        job = self.job(job_id)
        if not self.repo.set_job_state(job_id, JobState.STOPPING, only_from=[JobState.RUNNING]):
            self.repo.set_job_state(job_id, JobState.STOPPED, only_from=[JobState.PENDING])
        return self.job(job["id"])

    def resume(self, job_id: int) -> dict[str, Any]:
        """Queue a stopped or failed job again (failed series are retried), or a running
        one whose runner is gone (no heartbeat for STALE_SECONDS: killed, crashed)."""
        job = self.job(job_id)
        resumable = [JobState.STOPPED, JobState.FAILED]
        if job["heartbeat_at"] is None:
            resumable += [JobState.RUNNING, JobState.STOPPING]
        else:
            beat = dt.datetime.fromisoformat(job["heartbeat_at"])  # aware: the index gives UTC
            if (utc_now() - beat).total_seconds() > STALE_SECONDS:
                resumable += [JobState.RUNNING, JobState.STOPPING]
        self.repo.retry_failed_items(job_id)
        if not self.repo.set_job_state(job_id, JobState.PENDING, only_from=resumable):
            raise Conflict(f"migration job {job_id} is neither stopped, failed nor abandoned by its runner")
        return self.job(job_id)

    # -- the job ledger: what a runner (dicomhub.migrate) records ----------
    #
    # ``remote_pk`` is the key :meth:`remote` gives with the remote archive: a
    # runner asks for it once and walks and records under it.

    def inventory_complete(self, remote_pk: int) -> bool:
        """Whether the stored inventory of the remote is a finished walk."""
        complete, _at = self.repo.inventory_state(remote_pk)
        return complete

    def restart_inventory(self, remote_pk: int) -> None:
        """Forget the stored inventory of the remote, so that the next walk starts afresh."""
        self.repo.reset_inventory(remote_pk)

    def walked_windows(self, remote_pk: int) -> set[str]:
        """The StudyDate windows of the current walk that are recorded already."""
        return self.repo.done_windows(remote_pk)

    def record_window(self, remote_pk: int, window: str, studies: Sequence[InventoryStudy]) -> None:
        """Record the studies the remote has in one StudyDate window (committed)."""
        self.repo.record_window(remote_pk, window, studies)

    def studies_without_content(self, remote_pk: int) -> list[str]:
        """Study Instance UIDs of the walk whose series and instances are not recorded yet."""
        return self.repo.incomplete_studies(remote_pk)

    def record_study_content(self, remote_pk: int, study_uid: str, series: list[InventorySeries]) -> None:
        """Record the series and instances the remote holds of one study (committed)."""
        self.repo.record_study_content(remote_pk, study_uid, series)

    def record_studies_content(self, remote_pk: int, found: dict[str, list[InventorySeries]]) -> None:
        """Record the series and instances the remote holds of several studies (one commit)."""
        self.repo.record_studies_content(remote_pk, found)

    def finish_inventory(self, remote_pk: int) -> Inventory:
        """Mark the walk complete; return the inventory it stored."""
        self.repo.set_inventory_complete(remote_pk, True)
        return self.repo.inventory(remote_pk)

    def stored_inventory(self, remote_pk: int) -> Inventory:
        """The stored inventory of the remote (complete or not)."""
        return self.repo.inventory(remote_pk)

    def held_instances_of_series(self, series_uid: str) -> set[str]:
        """SOP Instance UIDs this archive holds of a series."""
        return self.repo.local_instances_of_series(series_uid)

    def unfinished_job(self, remote_pk: int) -> int | None:
        """The job with the remote that is not done, if any (there is at most one)."""
        return self.repo.unfinished_job(remote_pk)

    def take_over(self, job_id: int, owner: str, stale_before: dt.datetime) -> bool:
        """Claim an unfinished job for ``owner`` with its failed items pending again;
        False when another runner's heartbeat is newer than ``stale_before``."""
        self.repo.retry_failed_items(job_id)
        return self.repo.claim_job(job_id, owner, stale_before) is not None

    def claim_next_job(self, owner: str, stale_before: dt.datetime, owners_like: str) -> int | None:
        """Claim the oldest pending job, or one whose runner (matching ``owners_like``,
        SQL LIKE) has had no heartbeat since ``stale_before``."""
        return self.repo.claim_job(None, owner, stale_before, owners_like=owners_like)

    def claim_orphaned_job(self, job_id: int, owner: str) -> int | None:
        """Claim a job whose runner is known to be gone, however fresh its last heartbeat."""
        return self.repo.claim_job(job_id, owner, dt.datetime.now(dt.UTC) + dt.timedelta(days=1))

    def heartbeat(self, job_id: int, owner: str) -> bool:
        """Renew ``owner``'s claim on the job; True when it is asked to stop."""
        return self.repo.heartbeat(job_id, owner) == JobState.STOPPING.value

    def has_items(self, job_id: int) -> bool:
        return self.repo.has_items(job_id)

    def add_items(self, job_id: int, items: Sequence[tuple[str, str, int]]) -> None:
        """The job's items: (study, series, expected instances) to transfer."""
        self.repo.add_items(job_id, items)

    def job_items(self, job_id: int, states: Sequence[str]) -> list[dict[str, Any]]:
        """The job's items in ``states`` (``ITEM_PENDING``, ``ITEM_FAILED``, ...)."""
        return self.repo.items(job_id, states)

    def finish_item(
        self, item_pk: int, state: str, attempts: int, done: int, transferred_bytes: int, error: str | None
    ) -> None:
        """Record how one item ended (done, failed, or pending again when stopped)."""
        self.repo.finish_item(item_pk, state, attempts, done, transferred_bytes, error)

    def end_job(
        self, job_id: int, state: JobState, *, error: str | None = None, reconcile_clean: bool | None = None
    ) -> None:
        """Leave the job in ``state`` (its runner is done with it, for now or for good)."""
        self.repo.set_job_state(job_id, state, error=error, reconcile_clean=reconcile_clean)

    def record_deid_run(self, job_id: int, steps: dict[str, Any], run_pk: int) -> None:
        """Remember the job's de-identification run, so that a resumed job continues it."""
        self.repo.set_job_transform(job_id, {**steps, "run": run_pk})

    def set_job_notes(self, job_id: int, notes: str) -> None:
        self.repo.set_job_notes(job_id, notes)
