"""De-identification on the server: stored studies into new linked studies, exports,
dry-run previews and re-identification from the governed mapping.

The engine (:mod:`dicomhub.deid`) is pure; this module adds what an archive
needs around it:

* **runs**: a study or series de-identified into the archive is a ``deid_run``
  with one item per source instance. The background process works through
  the pending items in batches; each batch stores its objects through the one
  ingest path and then, in one transaction, records the items' outcomes, the
  new mapping rows and the run's counts. A crash repeats at most one batch:
  the engine is deterministic, so the repeated objects come out byte for byte
  the same and are "already present".
* **exports**: a C-MOVE to a destination with a de-identification profile
  sends each object through the engine as it goes (an ``export`` run records
  what left, with the mapping and an audit event).
* **re-identification**: replacement -> original, from the mapping only, for
  principals with the ``reidentifier`` grant on the project; every attempt,
  allowed or not, is one audit event.

The projects' secret is loaded when needed (never stored): the index keeps
only each project's key fingerprint, so that a changed secret is refused
instead of silently starting a second, unlinkable mapping.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomhub import codec
from dicomhub.deid import (
    DeidResult,
    Options,
    Profile,
    ProjectKey,
    burned_in_risk,
    deidentify,
    load_secret,
)
from dicomhub.errors import Conflict, DicomhubError, InvalidRequest, NotFound
from dicomhub.index.deid import DeidRepository
from dicomhub.index.repository import IndexRepository
from dicomhub.model.access import Access
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.identifiers import Level, require_uid
from dicomhub.model.ingest import InstanceOrigin, OriginKind, StoreOutcome
from dicomhub.model.migration import Inventory, InventoryInstance, InventorySeries
from dicomhub.model.query import Condition, Query, Single
from dicomhub.model.records import InstanceRow
from dicomhub.model.structure import dataset_offset
from dicomhub.services.background import run_until_stopped
from dicomhub.services.governance import (
    ROLE_REIDENTIFIER,
    Forbidden,
    GovernanceService,
    Unauthenticated,
)
from dicomhub.services.ingest import IngestService
from dicomhub.services.search import SearchService
from dicomhub.storage.base import BlobStore

__all__ = [
    "BURNED_IN_POLICIES",
    "DeidRefused",
    "DeidService",
    "ExportItem",
    "MigrationDeid",
    "SecretChanged",
]

LOGGER = logging.getLogger("dicomhub.deid")

BURNED_IN_POLICIES = ("refuse", "mask", "allow")
# Items de-identified and stored per index transaction.
_BATCH = 16
# A running run of a server process that is gone (kill -9) is taken over by the next one.
_SERVER_OWNER = "server:"
_MAX_VALUES = 1000
# The origin of every object a run stores: not a DIMSE peer, not a user upload.
DEID_CALLER = Caller(Channel.INTERNAL, "deid")
_DEID_ORIGIN = InstanceOrigin(OriginKind.DEIDENTIFICATION)


class SecretChanged(Conflict):
    """The secret differs from the one the project was created with (its mapping would break)."""


class DeidRefused(DicomhubError):
    """The burned-in policy refuses an object: it is not de-identified, so it must not go on."""


Region = tuple[int, int, int, int]  # x, y, width, height


@dataclass(frozen=True, slots=True)
class ExportItem:
    """One object of a de-identified C-MOVE: announced with its replacement UIDs and
    de-identified only when it is sent. ``part10`` gives the de-identified Part 10 file
    (done once, then kept); ``read`` its data set without File Meta."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    part10: Callable[[], bytes]

    def read(self) -> bytes:
        raw = self.part10()
        return raw[dataset_offset(raw) :]


@dataclass(slots=True)
class _Outcome:
    target_uid: str | None
    status: str  # stored, already-present, refused, failed
    detail: str | None
    result: DeidResult | None = None
    data: bytes | None = None  # the de-identified Part 10 file, until stored


class DeidService:
    """De-identification runs, exports, previews and re-identification of one archive."""

    def __init__(
        self,
        repo: DeidRepository,
        governance: GovernanceService,
        index: IndexRepository,
        search: SearchService,
        blobs: BlobStore,
        ingest: IngestService,
        *,
        key_file: Path | None = None,
        environ: Mapping[str, str] | None = None,
        burned_in: str = "refuse",
        mask: Sequence[Region] = (),
    ) -> None:
        self.repo = repo
        self.governance = governance
        self.index = index
        self.search = search
        self.blobs = blobs
        self.ingest = ingest
        self.key_file = key_file
        self.environ = os.environ if environ is None else environ
        self.burned_in = _policy(burned_in)
        self.mask = tuple(mask)

    # ------------------------------------------------------------ keys

    def project_key(self, project: str) -> tuple[int, ProjectKey]:
        """The project's pk and key; the project is created on first use.

        Raises
        ------
        DeidentificationError
            No secret is configured (or it is unreadable / too short).
        SecretChanged
            The secret is not the one the project was created with.
        """
        if not project or len(project) > 64 or not project.isprintable():
            raise InvalidRequest("a project name has 1-64 printable characters")
        key = ProjectKey.derive(load_secret(self.key_file, self.environ), project)
        pk, fingerprint = self.repo.ensure_project(project, key.fingerprint)
        if fingerprint != key.fingerprint:
            raise SecretChanged(
                f"the de-identification secret is not the one project {project!r} was created with; "
                "refusing (its replacements would not match the recorded mapping)"
            )
        return pk, key

    # ------------------------------------------------------------ runs (jobs)

    def start_run(
        self,
        project: str,
        reason: str,
        caller: Caller,
        *,
        study_uid: str | None = None,
        series_uid: str | None = None,
        options: Sequence[str] = (),
        burned_in: str | None = None,
        mask: Sequence[Region] = (),
        owner: str | None = None,
        only: Collection[str] = (),
    ) -> dict[str, Any]:
        """Record a pending run over a stored study or series (``only``: just these SOP
        Instance UIDs of it, as routing asks); the background process runs it.

        The burned-in policy and mask regions (default: the configured ones) are
        recorded with the run, so that whichever process runs it applies them.
        With ``owner``, the run is created already taken by that process (which then
        calls :meth:`run_now`), so that no server picks it up meanwhile.
        """
        if not reason or not reason.strip():
            raise InvalidRequest("a de-identification run needs a reason")
        parsed = Options.parse(options)
        policy = _policy(burned_in or self.burned_in)
        regions = [_region(r) for r in (mask or self.mask)]
        if policy == "mask" and not regions:
            raise InvalidRequest("burned-in policy mask needs mask regions (deid_mask)")
        project_pk, _key = self.project_key(project)
        rows = self._source_rows(study_uid, series_uid, caller)
        if only:
            rows = [r for r in rows if r.sop_instance_uid in only]
            if not rows:
                raise NotFound("none of the instances to de-identify is stored")
        run_pk = self.repo.create_run(
            {
                "project_pk": project_pk,
                "kind": "archive",
                "actor": caller.name or caller.channel.value,
                "source_address": caller.address,
                "reason": reason.strip(),
                "source_study_uid": rows[0].study_instance_uid,
                "source_series_uid": series_uid,
                "options": {
                    "options": list(parsed.chosen),
                    "burned_in": policy,
                    "mask": [list(r) for r in regions],
                },
                "status": "running" if owner else "pending",
                "owner": owner,
            },
            [r.sop_instance_uid for r in rows],
        )
        self.governance.audit(
            caller.name or caller.channel.value,
            "deid-run-start",
            "accepted",
            source_address=caller.address,
            project=project,
            study_uid=rows[0].study_instance_uid,
            detail={
                "run": run_pk,
                "reason": reason.strip(),
                "series": series_uid,
                "instances": len(rows),
                "options": list(parsed.chosen),
                "burned_in": policy,
            },
        )
        run = self.repo.run(run_pk)
        assert run is not None
        return run

    def _source_rows(
        self, study_uid: str | None, series_uid: str | None, caller: Caller
    ) -> list[InstanceRow]:
        if series_uid:
            uid = require_uid(series_uid, "SeriesInstanceUID")
            query = Query(Level.SERIES, (Condition("SeriesInstanceUID", "UI", Single(uid)),))
        elif study_uid:
            uid = require_uid(study_uid, "StudyInstanceUID")
            query = Query(Level.STUDY, (Condition("StudyInstanceUID", "UI", Single(uid)),))
        else:
            raise InvalidRequest("name a study or a series to de-identify")
        rows = self.search.instances(query, caller)
        if not rows:
            raise NotFound(f"no stored instances under {uid}")
        if study_uid and series_uid and rows[0].study_instance_uid != study_uid:
            raise InvalidRequest(f"series {series_uid} is not in study {study_uid}")
        return rows

    def runs(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.repo.runs(limit)

    def run(self, run_id: int, items: int = 1000) -> dict[str, Any]:
        run = self.repo.run(run_id)
        if run is None:
            raise NotFound(f"no de-identification run {run_id}")
        run["items"] = self.repo.items(run_id, limit=items)
        return run

    def run_now(self, run_id: int, owner: str) -> dict[str, Any]:
        """Run, in this process, a run started for ``owner`` (``deid-job start --now``)."""
        if not self.repo.is_owner(run_id, owner):
            raise Conflict(f"run {run_id} is not this process's (started without --now, or taken over)")
        while self._step_run(run_id):
            pass
        return self.run(run_id)

    def run_worker(self, stop: threading.Event) -> None:
        """The background process's loop: take pending runs (and those a dead server
        process left running) and work through them batch by batch."""
        owner = f"{_SERVER_OWNER}{os.getpid()}"
        current: list[int] = []

        def step() -> int:
            if not current:
                claimed = self.repo.claim_run(owner, stale_owner_prefix=_SERVER_OWNER)
                if claimed is None:
                    return 0
                LOGGER.info("de-identification run %d started", claimed)
                current.append(claimed)
            try:
                more = self._step_run(current[0])
            except DicomhubError:
                raise  # the index is unavailable: retried by the loop
            except Exception as exc:
                # A bug must not leave the run "running" for ever, nor end this thread.
                LOGGER.exception("de-identification run %d failed", current[0])
                self.repo.finish_run(current[0], "failed", f"{exc.__class__.__name__}: {exc}")
                more = False
            if not more:
                current.clear()
            return 1

        run_until_stopped(stop, step, "de-identification runs", LOGGER, idle=0.5)

    def _step_run(self, run_pk: int) -> bool:
        """Process one batch of a claimed run; False once the run is finished."""
        run = self.repo.run(run_pk)
        if run is None or run["status"] != "running":
            return False
        pending = self.repo.items(run_pk, status="pending", limit=_BATCH)
        if not pending:
            failed = int(run["failed"])
            self.repo.finish_run(
                run_pk, "done" if not failed else "failed", f"{failed} instances failed" if failed else None
            )
            LOGGER.info("de-identification run %d finished", run_pk)
            return False
        try:
            project_pk, key = self.project_key(str(run["project"]))
        except DicomhubError as exc:
            self.repo.finish_run(run_pk, "failed", str(exc))
            LOGGER.warning("de-identification run %d failed: %s", run_pk, exc)
            return False
        profile = Profile(options=Options.parse(run["options"]["options"]))
        policy = str(run["options"].get("burned_in", self.burned_in))
        regions = [_region(r) for r in run["options"].get("mask", [])]
        results: list[tuple[str, str | None, str, str | None]] = []
        mappings: list[tuple[str, str, str]] = []
        target_study: str | None = None
        batch = {
            str(item["source_sop_instance_uid"]): self._prepare(
                str(item["source_sop_instance_uid"]), profile, key, policy, regions
            )
            for item in pending
        }
        self._store_batch(list(batch.values()))
        for source, outcome in batch.items():
            results.append((source, outcome.target_uid, outcome.status, outcome.detail))
            if outcome.result is not None:
                mappings.extend((r.kind, r.original, r.replacement) for r in outcome.result.replacements)
                target_study = str(outcome.result.dataset.get("StudyInstanceUID", "")) or target_study
        self.repo.record_items(run_pk, project_pk, results, mappings, target_study)
        return True

    def _prepare(
        self, source: str, profile: Profile, key: ProjectKey, policy: str, regions: Sequence[Region]
    ) -> _Outcome:
        """One source instance de-identified and encoded (status "ok"), or why not."""
        row = self.index.get_instance(source)
        if row is None:
            return _Outcome(None, "failed", "the source instance is no longer stored")
        try:
            outcome = self._deidentified(self.blobs.read(row.blob_key), profile, key, policy, regions)
            if outcome.result is not None:
                outcome.data = _part10(outcome.result.dataset)
            return outcome
        except DicomhubError as exc:
            return _Outcome(None, "failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - a malformed object fails its item, not the run
            LOGGER.warning("de-identifying %s failed", source, exc_info=True)
            return _Outcome(None, "failed", f"{exc.__class__.__name__}: {exc}")

    def _store_batch(self, outcomes: Sequence[_Outcome]) -> None:
        """Store the prepared objects through the ingest path, together (one flush, batched
        index transactions); each outcome becomes stored, already-present or failed."""
        ready = [o for o in outcomes if o.status == "ok" and o.data is not None]
        if not ready:
            return
        stored = self.ingest.store_many(
            [o.data for o in ready if o.data is not None], DEID_CALLER, origin=_DEID_ORIGIN
        )
        for outcome, result in zip(ready, stored, strict=True):
            outcome.data = None
            if isinstance(result, Exception):
                outcome.status, outcome.detail, outcome.result = "failed", str(result), None
                continue
            outcome.target_uid = result.sop_instance_uid
            outcome.status = "already-present" if result.outcome is StoreOutcome.ALREADY_PRESENT else "stored"

    def _deidentified(
        self, data: bytes, profile: Profile, key: ProjectKey, policy: str, regions: Sequence[Region]
    ) -> _Outcome:
        """The engine's result for one stored object under the burned-in ``policy``
        (status "ok"), or a refusal."""
        return self._deidentified_dataset(dcmread(io.BytesIO(data)), profile, key, policy, regions)

    @staticmethod
    def _deidentified_dataset(
        ds: Dataset, profile: Profile, key: ProjectKey, policy: str, regions: Sequence[Region]
    ) -> _Outcome:
        risk = burned_in_risk(ds)
        if risk is not None and policy == "refuse":
            return _Outcome(None, "refused", "may carry burned-in annotation: " + "; ".join(risk.reasons))
        result = deidentify(ds, profile, key)
        detail = None
        if risk is not None and policy == "mask":
            detail = mask_regions(result.dataset, regions)
        elif risk is not None:
            detail = "allowed with burned-in risk: " + "; ".join(risk.reasons)
        return _Outcome(str(result.dataset.SOPInstanceUID), "ok", detail, result)

    # ------------------------------------------------------------ preview

    def preview(
        self, project: str, sop_instance_uid: str, options: Sequence[str], caller: Caller
    ) -> dict[str, Any]:
        """What de-identifying one stored instance would do, attribute by attribute; nothing is stored."""
        uid = require_uid(sop_instance_uid, "SOPInstanceUID")
        row = self.index.get_instance(uid)
        if row is None:
            raise NotFound(f"no stored instance {uid}")
        _pk, key = self.project_key(project)
        ds = dcmread(io.BytesIO(self.blobs.read(row.blob_key)))
        risk = burned_in_risk(ds)
        result = deidentify(ds, Profile(options=Options.parse(options)), key)
        self.governance.audit(
            caller.name or caller.channel.value,
            "deid-preview",
            "allowed",
            source_address=caller.address,
            project=project,
            study_uid=row.study_instance_uid or None,
            detail={"instance": uid},
        )
        return {
            "project": project,
            "sop_instance_uid": str(result.dataset.SOPInstanceUID),
            "study_instance_uid": str(result.dataset.get("StudyInstanceUID", "")),
            "burned_in": list(risk.reasons) if risk else [],
            "burned_in_policy": self.burned_in,
            "actions": [dataclasses.asdict(a) for a in result.actions],
        }

    # ------------------------------------------------------------ export

    def export_items(
        self,
        project: str,
        options: Sequence[str],
        destination: str,
        rows: Sequence[InstanceRow],
        caller: Caller,
        reason: str = "",
    ) -> list[ExportItem]:
        """The objects of a C-MOVE to a de-identifying destination (``destination``: its
        AE title; ``reason``: what the run says it is for, the C-MOVE by default).

        An ``export`` run records them (and an audit event the move); each
        object is de-identified when it is read for sending, and its mapping
        and outcome recorded then. An object refused by the burned-in policy
        raises when read, so its sub-operation fails: nothing identifiable leaves.
        """
        parsed = Options.parse(options)
        project_pk, key = self.project_key(project)
        profile = Profile(options=parsed)
        study = rows[0].study_instance_uid if rows else ""
        run_pk = self.repo.create_run(
            {
                "project_pk": project_pk,
                "kind": "export",
                "actor": caller.name or caller.channel.value,
                "source_address": caller.address,
                "reason": reason or f"C-MOVE to {destination} (de-identifying destination)",
                "source_study_uid": study,
                "destination": destination,
                "options": {
                    "options": list(parsed.chosen),
                    "burned_in": self.burned_in,
                    "mask": [list(r) for r in self.mask],
                },
                "status": "running",
            },
            [r.sop_instance_uid for r in rows],
        )
        self.governance.audit(
            caller.name or caller.channel.value,
            "deid-export",
            "accepted",
            source_address=caller.address,
            project=project,
            study_uid=study or None,
            detail={"run": run_pk, "destination": destination, "instances": len(rows)},
        )
        remaining = [len(rows)]
        lock = threading.Lock()

        def done() -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                failed = int((self.repo.run(run_pk) or {}).get("failed", 0))
                self.repo.finish_run(run_pk, "done" if not failed else "failed")

        def reader(row: InstanceRow, announced: str) -> Callable[[], bytes]:
            kept: list[bytes] = []

            def part10() -> bytes:
                # The sender may ask again in another syntax: de-identified and recorded once.
                if not kept:
                    kept.append(deidentified())
                return kept[0]

            def deidentified() -> bytes:
                try:
                    outcome = self._deidentified(
                        self.blobs.read(row.blob_key), profile, key, self.burned_in, self.mask
                    )
                except Exception as exc:
                    self.repo.record_items(
                        run_pk, project_pk, [(row.sop_instance_uid, None, "failed", str(exc))], [], None
                    )
                    done()
                    raise
                result = outcome.result
                if result is None:
                    self.repo.record_items(
                        run_pk,
                        project_pk,
                        [(row.sop_instance_uid, None, outcome.status, outcome.detail)],
                        [],
                        None,
                    )
                    done()
                    raise InvalidRequest(f"{row.sop_instance_uid} not exported: {outcome.detail}")
                syntax = str(result.dataset.file_meta.TransferSyntaxUID)
                ok = outcome.target_uid == announced and syntax == row.transfer_syntax_uid
                self.repo.record_items(
                    run_pk,
                    project_pk,
                    [
                        (
                            row.sop_instance_uid,
                            outcome.target_uid,
                            "stored" if ok else "failed",
                            outcome.detail
                            if ok
                            else "replacement UID or transfer syntax differs from the announced one",
                        )
                    ],
                    [(r.kind, r.original, r.replacement) for r in result.replacements],
                    str(result.dataset.get("StudyInstanceUID", "")) or None,
                )
                done()
                if not ok:
                    raise DicomhubError(
                        f"{row.sop_instance_uid}: de-identified object differs from the announced one"
                    )
                return _part10(result.dataset)

            return part10

        items = []
        for row in rows:
            announced = row.sop_instance_uid if parsed.retain_uids else key.uid(row.sop_instance_uid)
            items.append(
                ExportItem(row.sop_class_uid, announced, row.transfer_syntax_uid, reader(row, announced))
            )
        return items

    # ------------------------------------------------------------ migration

    def start_migration_run(
        self,
        project: str,
        options: Sequence[str],
        reason: str,
        actor: str,
        remote: str,
        direction: str,
        source_instance_uids: Sequence[str],
        burned_in: str | None = None,
    ) -> int:
        """Record the de-identification step of a migration job as a ``migration`` run
        (one item per source instance of its selection), with an audit event."""
        parsed = Options.parse(options)
        policy = _policy(burned_in or self.burned_in)
        if policy == "mask" and not self.mask:
            raise InvalidRequest("burned-in policy mask needs mask regions (deid_mask)")
        project_pk, _key = self.project_key(project)
        run_pk = self.repo.create_run(
            {
                "project_pk": project_pk,
                "kind": "migration",
                "actor": actor,
                "source_address": "",
                "reason": reason.strip(),
                "source_study_uid": "",
                "options": {
                    "options": list(parsed.chosen),
                    "burned_in": policy,
                    "mask": [list(r) for r in self.mask],
                    "remote": remote,
                    "direction": direction,
                },
                "status": "running",
                "owner": None,
            },
            list(source_instance_uids),
        )
        self.governance.audit(
            actor,
            "deid-migration",
            "accepted",
            project=project,
            detail={
                "run": run_pk,
                "reason": reason.strip(),
                "remote": remote,
                "direction": direction,
                "instances": len(source_instance_uids),
                "options": list(parsed.chosen),
                "burned_in": policy,
            },
        )
        return run_pk

    def migration_step(self, run_pk: int) -> MigrationDeid:
        """The transform of a migration job's run: each object de-identified, its
        outcome and mapping recorded on the run as it passes."""
        run = self.repo.run(run_pk)
        if run is None:
            raise NotFound(f"no de-identification run {run_pk}")
        project = str(run["project"])
        project_pk, key = self.project_key(project)
        return MigrationDeid(
            self,
            run_pk,
            project_pk,
            key,
            Profile(options=Options.parse(run["options"]["options"])),
            str(run["options"].get("burned_in", self.burned_in)),
            [_region(r) for r in run["options"].get("mask", [])],
        )

    def finish_migration_run(self, run_pk: int) -> None:
        run = self.repo.run(run_pk)
        if run is not None and run["status"] == "running":
            failed = int(run["failed"]) + int(run["refused"])
            self.repo.finish_run(
                run_pk, "done" if not failed else "failed", f"{failed} instances not sent" if failed else None
            )

    def mapped_inventory(self, project: str, options: Sequence[str], inventory: Inventory) -> Inventory:
        """``inventory`` as it must look once de-identified under the project: UIDs
        through the project's recorded mapping (an unmapped UID stays unmapped, so it
        shows as missing), and the study attributes as the engine makes them
        (pseudonyms, dates per the options), without content digests."""
        project_pk, key = self.project_key(project)
        parsed = Options.parse(options)
        profile = Profile(options=parsed)
        uids = [
            uid
            for study in inventory.studies.values()
            for uid in (
                study.study_instance_uid,
                *study.series,
                *(sop for s in study.series.values() for sop in s.instances),
            )
        ]
        mapped = {} if parsed.retain_uids else self.repo.replacements(project_pk, "uid", uids)

        def uid(value: str) -> str:
            return value if parsed.retain_uids else mapped.get(value, f"unmapped:{value}")

        out = Inventory()
        for study in inventory.studies.values():
            header = Dataset()
            classes = [i.sop_class_uid for s in study.series.values() for i in s.instances.values()]
            if classes and classes[0]:
                header.SOPClassUID = classes[0]
            header.StudyInstanceUID = study.study_instance_uid
            header.PatientID = study.patient_id
            header.PatientName = study.patient_name
            header.StudyDate = study.study_date
            header.AccessionNumber = study.accession_number
            done = deidentify(header, profile, key).dataset
            new = out.study(uid(study.study_instance_uid))
            new.patient_id = str(done.get("PatientID", "") or "")
            new.patient_name = str(done.get("PatientName", "") or "")
            new.study_date = str(done.get("StudyDate", "") or "")
            new.accession_number = str(done.get("AccessionNumber", "") or "")
            for series in study.series.values():
                target = new.series[uid(series.series_instance_uid)] = InventorySeries(
                    uid(series.series_instance_uid), series.modality
                )
                for sop, inst in series.instances.items():
                    target.instances[uid(sop)] = InventoryInstance(uid(sop), inst.sop_class_uid)
        return out

    # ------------------------------------------------------------ authorisation

    def authorize(
        self,
        principal: str | None,
        role: str,
        project: str,
        action: str,
        caller: Caller,
        access: Access | None = None,
    ) -> str:
        """``principal`` when it holds ``role`` on ``project`` (by ``access``, the grants its
        token gave, when given; else by its stored grants); otherwise the refusal is
        audited and raised (:class:`Unauthenticated` for no principal, else :class:`Forbidden`)."""
        if principal is not None and self.governance.has_grant(principal, role, project, access):
            return principal
        outcome = "unauthenticated" if principal is None else "forbidden"
        self.governance.audit(
            principal or f"(unauthenticated {caller.channel.value})",
            action,
            outcome,
            source_address=caller.address,
            project=project[:64],
            detail={"role": role},
        )
        if principal is None:
            raise Unauthenticated(f"{action} needs the credentials of a principal")
        raise Forbidden(f"{principal} has no {role} grant on project {project!r}")

    # ------------------------------------------------------------ re-identification

    def reidentify(
        self, project: str, values: Sequence[str], principal: str | None, caller: Caller
    ) -> dict[str, list[dict[str, str]]]:
        """The originals behind replacement ``values``, for a principal with the
        ``reidentifier`` grant on ``project``; one audit event per call, whatever the outcome.

        ``principal`` is None when the caller's credentials named nobody.
        """

        def audit(outcome: str, **detail: Any) -> None:
            self.governance.audit(
                str(principal),
                "reidentify",
                outcome,
                source_address=caller.address,
                project=project[:64],
                detail={"values": len(values), **detail},
            )

        self.authorize(principal, ROLE_REIDENTIFIER, project, "reidentify", caller)
        found = self.repo.project(project)
        if found is None:
            audit("not-found")
            raise NotFound(f"no de-identification project {project!r}")
        if not values or len(values) > _MAX_VALUES or not all(isinstance(v, str) and v for v in values):
            audit("invalid")
            raise InvalidRequest(f"give 1 to {_MAX_VALUES} replacement values")
        originals = self.repo.originals(found[0], list(values))
        audit("allowed", found=sum(1 for v in originals.values() if v))
        return {
            value: [{"kind": kind, "original": original} for kind, original in pairs]
            for value, pairs in originals.items()
        }


class MigrationDeid:
    """A migration job's de-identification step (the runner's transform): called with
    each object on its way, returns it de-identified, or raises :class:`DeidRefused`."""

    def __init__(
        self,
        service: DeidService,
        run_pk: int,
        project_pk: int,
        key: ProjectKey,
        profile: Profile,
        policy: str,
        regions: Sequence[Region],
    ) -> None:
        self.service, self.run_pk, self.project_pk = service, run_pk, project_pk
        self.key, self.profile, self.policy, self.regions = key, profile, policy, regions

    def uid(self, original: str) -> str:
        """The UID an object's ``original`` UID gets on the way (deterministic: keyed)."""
        return original if self.profile.options.retain_uids else self.key.uid(original)

    def __call__(self, ds: Dataset) -> Dataset:
        source = str(ds.get("SOPInstanceUID", "") or "")
        outcome = DeidService._deidentified_dataset(ds, self.profile, self.key, self.policy, self.regions)
        result = outcome.result
        repo = self.service.repo
        if result is None:
            repo.record_items(
                self.run_pk, self.project_pk, [(source, None, outcome.status, outcome.detail)], [], None
            )
            raise DeidRefused(f"{source} not migrated: {outcome.detail}")
        repo.record_items(
            self.run_pk,
            self.project_pk,
            [(source, outcome.target_uid, "stored", outcome.detail)],
            [(r.kind, r.original, r.replacement) for r in result.replacements],
            str(result.dataset.get("StudyInstanceUID", "")) or None,
        )
        return result.dataset


def _policy(value: str) -> str:
    policy = value.strip().lower()
    if policy not in BURNED_IN_POLICIES:
        raise InvalidRequest(f"burned-in policy {value!r}: one of {', '.join(BURNED_IN_POLICIES)}")
    return policy


def _region(value: Sequence[int]) -> Region:
    try:
        x, y, width, height = (int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"a mask region is [x, y, width, height], not {value!r}") from exc
    if min(x, y) < 0 or min(width, height) < 1:
        raise InvalidRequest(f"mask region {value!r}: x and y from 0, width and height from 1")
    return x, y, width, height


def _part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def mask_regions(ds: Dataset, regions: Sequence[Region]) -> str:
    """Set the pixels inside ``regions`` to 0 in every frame of ``ds`` (in place) and
    declare BurnedInAnnotation NO; what was done, for the run's record.

    Compressed pixel data is decoded through :mod:`dicomhub.codec` and encoded
    back in its syntax when that is lossless and encodable here; otherwise the
    object is kept uncompressed (re-encoding lossy data would lose more).
    """
    syntax = ds.file_meta.TransferSyntaxUID
    native: Dataset = ds
    if syntax.is_compressed:
        native = dcmread(io.BytesIO(codec.transcode_bytes(_part10(ds), ExplicitVRLittleEndian)))
    arr = native.pixel_array.copy()
    frames = int(native.get("NumberOfFrames", 1) or 1)
    samples = int(native.get("SamplesPerPixel", 1) or 1)
    for x, y, width, height in regions:
        if samples > 1:
            arr[..., y : y + height, x : x + width, :] = 0
        else:
            arr[..., y : y + height, x : x + width] = 0
    native.PixelData = arr.tobytes()
    native.BurnedInAnnotation = "NO"
    if samples > 1:
        native.PlanarConfiguration = 0  # pixel_array is interleaved
    kept = "uncompressed"
    if native is not ds:
        target = codec.transfer_syntax(str(syntax))
        if target.can_encode and not target.lossy:
            encoded = dcmread(io.BytesIO(codec.transcode_bytes(_part10(native), str(syntax))))
            native = encoded
            kept = target.name
        ds.file_meta = native.file_meta
        for elem in list(ds):
            del ds[elem.tag]
        ds.update(native)
    return f"masked {len(regions)} region(s) of {frames} frame(s); pixel data {kept}"
