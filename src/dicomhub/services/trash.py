"""The trash: deleted studies, series and instances kept for ``trash_keep`` seconds,
restorable until then, and purged for good after (dcm4chee's rejected-instance
retention, a PACS administrator's undo).

A delete puts its instances here (:mod:`dicomhub.services.delete`). A restore indexes
each instance again from its own blob, with the header parse of ingest and the
index's one add path (:meth:`~dicomhub.index.repository.IndexRepository.add_instance`),
so it comes back with the same UIDs, counts and attributes as before, announced as
``created`` in the change log; the blob is not copied. An instance whose SOP Instance
UID has been stored again since it was deleted is not overwritten: the restore is
refused as a conflict. The purge removes the trash rows, then the blobs; the
background purge does so once an entry has been in the trash for ``trash_keep``
seconds, on one node at a time.

Access: listing, restoring and purging need the DELETE right on the study (as the
delete did); a caller that may not see a study is told it is not in the trash.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from dicomhub.errors import Conflict, DicomhubError, IndexUnavailable, NotFound, StorageError
from dicomhub.index.repository import AddResult, IndexRepository
from dicomhub.index.trash import TrashedStudy, TrashEntry, TrashRepository
from dicomhub.model.access import Action, StudyFacts
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditEvent, AuditOutcome, AuditRecorder
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.extract import extract_part10
from dicomhub.model.timestamps import utc_now
from dicomhub.services.access import Forbidden, refuse_unless
from dicomhub.services.background import run_until_stopped
from dicomhub.services.blobfiles import mapped_blob
from dicomhub.storage.base import BlobInfo, BlobStore

__all__ = ["PurgeResult", "RestoreResult", "TrashService", "TrashedStudy"]

LOGGER = logging.getLogger("dicomhub.trash")

_PURGER = Caller(Channel.INTERNAL, "trash-purge")
_BATCH = 500


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What a restore brought back, and what it left in the trash and why."""

    study_instance_uid: str
    restored: tuple[str, ...]  # SOP Instance UIDs
    conflicts: tuple[tuple[str, str], ...] = ()  # (SOP Instance UID, why): stored again since
    failed: tuple[tuple[str, str], ...] = ()  # (SOP Instance UID, why): blob unreadable, purged

    def as_json(self) -> dict[str, Any]:
        """The answer of ``POST /trash/{study}/restore`` and ``dicomhub trash restore --json``."""
        return {
            "study_instance_uid": self.study_instance_uid,
            "restored": list(self.restored),
            "conflicts": [{"sop_instance_uid": uid, "reason": why} for uid, why in self.conflicts],
            "failed": [{"sop_instance_uid": uid, "reason": why} for uid, why in self.failed],
        }


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What a purge removed for good."""

    studies: tuple[str, ...]
    instances: int
    blobs_not_removed: int = 0


class TrashService:
    """Lists, restores and purges the trash; runs the background purge."""

    def __init__(
        self,
        repository: TrashRepository,
        index: IndexRepository,
        blobs: BlobStore,
        keep: float,
        audit: AuditRecorder | None = None,
        claim: Callable[[str], AbstractContextManager[bool]] | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.repository = repository
        self.index = index
        self.blobs = blobs
        self.keep = max(0.0, float(keep))
        self._audit = audit
        self._claim = claim
        self._clock = clock

    # ------------------------------------------------------------ listing

    def purge_at(self, study: TrashedStudy) -> dt.datetime:
        """When the background purge starts removing the study (its oldest entry's keep time ends)."""
        return study.first_deleted_at + dt.timedelta(seconds=self.keep)

    def studies(self, caller: Caller, limit: int = 1000) -> list[TrashedStudy]:
        """The studies in the trash that ``caller`` may delete, the most recently deleted first.

        Raises
        ------
        Forbidden
            The caller holds the DELETE right nowhere.
        """
        if not caller.access.may(Action.DELETE):
            raise Forbidden(f"{caller.who} may not delete, so not see the trash")
        if caller.access.study_filter(Action.DELETE).everything:
            return self.repository.studies(limit)
        found = self.repository.studies(100_000)
        permitted = (
            s
            for s in found
            if caller.access.permits(Action.DELETE, self._facts(s.study_instance_uid, s.patient_id))
        )
        return [s for _n, s in zip(range(limit), permitted, strict=False)]

    def _facts(self, study_instance_uid: str, patient_id: str) -> StudyFacts:
        # Labels are kept by study UID and outlive the study's rows (they are its grants' scope).
        return StudyFacts(
            study_instance_uid, patient_id, frozenset(self.repository.labels_of(study_instance_uid))
        )

    def _entries(self, study_instance_uid: str, caller: Caller) -> list[TrashEntry]:
        entries = self.repository.entries(study_instance_uid)
        if not entries:
            raise NotFound(f"study {study_instance_uid} is not in the trash")
        if not caller.access.unrestricted:
            # Forbidden for a caller that may see the study, else "no study", as a delete answers.
            refuse_unless(
                caller.access,
                Action.DELETE,
                self._facts(study_instance_uid, entries[0].patient_id),
                caller.who,
            )
        return entries

    # ------------------------------------------------------------ restore

    def restore(self, study_instance_uid: str, caller: Caller) -> RestoreResult:
        """Index the trashed instances of a study again, from their blobs.

        The most recently deleted copy of a SOP Instance UID is restored (an
        instance deleted, stored again and deleted again is twice in the trash);
        an older copy stays in the trash as a conflict.

        Raises
        ------
        NotFound
            Nothing of the study is in the trash (or the caller may not delete it).
        Conflict
            Instances of it have been stored again since they were deleted:
            nothing is restored, the trash is left as it was.
        """
        entries = self._entries(study_instance_uid, caller)
        latest: dict[str, TrashEntry] = {}
        for entry in entries:
            latest.setdefault(entry.sop_instance_uid, entry)
        again = sorted(self.repository.indexed(list(latest)))
        if again:
            shown = ", ".join(again[:5]) + (f" and {len(again) - 5} more" if len(again) > 5 else "")
            self._record(caller, AuditAction.STORE, AuditOutcome.MINOR_FAILURE, study_instance_uid, entries,
                         {"operation": "restore-from-trash", "conflicts": len(again)})  # fmt: skip
            raise Conflict(
                f"{len(again)} instances of study {study_instance_uid} have been stored again since they "
                f"were deleted ({shown}): nothing restored; purge them from the trash or delete the "
                "new copies"
            )
        restored: list[str] = []
        conflicts: list[tuple[str, str]] = []
        failed: list[tuple[str, str]] = []
        for entry in entries:
            if latest[entry.sop_instance_uid] is not entry:
                conflicts.append(
                    (entry.sop_instance_uid, "an older copy of an instance restored from the trash")
                )
                continue
            try:
                if self._restore_one(entry):
                    restored.append(entry.sop_instance_uid)
                else:
                    conflicts.append((entry.sop_instance_uid, "stored again meanwhile"))
            except IndexUnavailable:
                raise
            except Conflict as exc:  # e.g. the study is held under another patient now
                conflicts.append((entry.sop_instance_uid, str(exc)))
            except (NotFound, StorageError) as exc:
                failed.append((entry.sop_instance_uid, str(exc)))
        outcome = AuditOutcome.SUCCESS if not (conflicts or failed) else AuditOutcome.MINOR_FAILURE
        self._record(caller, AuditAction.STORE, outcome, study_instance_uid, entries,
                     {"operation": "restore-from-trash", "restored": len(restored),
                      "conflicts": len(conflicts), "failed": len(failed)})  # fmt: skip
        LOGGER.info(
            "restored %d instances of study %s from the trash for %s (%d conflicts, %d failed)",
            len(restored), study_instance_uid, caller.who, len(conflicts), len(failed),
        )  # fmt: skip
        return RestoreResult(study_instance_uid, tuple(restored), tuple(conflicts), tuple(failed))

    def _restore_one(self, entry: TrashEntry) -> bool:
        """Index one trashed instance from its blob, its trash row removed in the same
        transaction; False when its UID is indexed (stored again meanwhile)."""
        try:
            with mapped_blob(self.blobs, entry.blob_key) as data:
                # The header parse of ingest: the one scan that skips Pixel Data by its length.
                header = extract_part10(data)
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the parser raises: the blob is not what was stored
            raise StorageError(f"blob {entry.blob_key} cannot be read as the stored object: {exc}") from exc
        if header.sop_instance_uid != entry.sop_instance_uid:
            raise StorageError(f"blob {entry.blob_key} holds another instance than the one deleted")
        # What the header cannot say: how the object arrived (compression at rest).
        if entry.original_transfer_syntax_uid:
            header.extra["original_transfer_syntax_uid"] = entry.original_transfer_syntax_uid
            header.extra["original_sha256"] = entry.original_sha256
        outcome = self.index.add_instance(
            header,
            BlobInfo(entry.blob_key, entry.size, entry.sha256),
            entry.content_sha256,
            entry.source_ae_title,
            overwrite=False,
            alongside=self.repository.taken_back(entry),
        )
        return outcome.result is AddResult.CREATED

    # ------------------------------------------------------------ purge

    def purge(self, study_instance_uid: str, caller: Caller) -> PurgeResult:
        """Remove a study's trashed instances for good, now.

        Raises
        ------
        NotFound
            Nothing of the study is in the trash (or the caller may not delete it).
        """
        entries = self._entries(study_instance_uid, caller)
        result = self._purge(caller, study_instance_uid=study_instance_uid)
        if not result.instances:  # purged by another node or the background purge meanwhile
            raise NotFound(f"study {study_instance_uid} is not in the trash")
        self._record(caller, AuditAction.DELETE, AuditOutcome.SUCCESS, study_instance_uid, entries,
                     {"operation": "purge-trash", "instances": result.instances})  # fmt: skip
        return result

    def purge_all(self, caller: Caller, *, expired_only: bool = False) -> PurgeResult:
        """Empty the trash (``expired_only``: what has been in it for ``trash_keep`` seconds).

        Raises
        ------
        Forbidden
            The caller does not hold DELETE on the whole archive.
        """
        if not caller.access.unrestricted and not caller.access.study_filter(Action.DELETE).everything:
            raise Forbidden(f"{caller.who} may not empty the whole trash")
        cutoff = self._clock() - dt.timedelta(seconds=self.keep) if expired_only else None
        return self._purge(caller, deleted_before=cutoff, audited=True)

    def _purge(
        self,
        caller: Caller,
        *,
        deleted_before: dt.datetime | None = None,
        study_instance_uid: str | None = None,
        audited: bool = False,
        limit: int | None = None,
    ) -> PurgeResult:
        studies: dict[str, list[TrashEntry]] = {}
        not_removed = 0
        total = 0
        while limit is None or total < limit:
            batch = self.repository.claim_for_purge(
                deleted_before=deleted_before, study_instance_uid=study_instance_uid, limit=_BATCH
            )
            if not batch:
                break
            total += len(batch)
            for entry in batch:
                studies.setdefault(entry.study_instance_uid, []).append(entry)
                try:
                    self.blobs.delete(entry.blob_key)
                except DicomhubError:  # the row is gone: a leftover blob is an orphan for `check`
                    not_removed += 1
                    LOGGER.exception("could not remove blob %s of a purged instance", entry.blob_key)
            if len(batch) < _BATCH:
                break
        if audited:
            for uid, entries in studies.items():
                self._record(caller, AuditAction.DELETE, AuditOutcome.SUCCESS, uid, entries,
                             {"operation": "purge-trash", "instances": len(entries)})  # fmt: skip
        if studies:
            LOGGER.info("purged %d instances of %d studies from the trash", total, len(studies))
        return PurgeResult(tuple(studies), total, not_removed)

    # ------------------------------------------------------------ the background purge

    def step(self) -> int:
        """Purge what has been in the trash for ``keep`` seconds (at most 500 a turn); how many."""
        cutoff = self._clock() - dt.timedelta(seconds=self.keep)
        return self._purge(_PURGER, deleted_before=cutoff, audited=True, limit=_BATCH).instances

    def run_worker(self, stop: threading.Event) -> None:
        """Purge until ``stop``, looking about four times per keep time (at least every minute)."""
        claim = self._claim
        run_until_stopped(
            stop,
            self.step,
            "trash purge",
            LOGGER,
            idle=min(60.0, max(0.5, self.keep / 4)),
            claim=(lambda: claim("trash-purge")) if claim is not None else None,
        )

    # ------------------------------------------------------------ audit

    def _record(
        self,
        caller: Caller,
        action: AuditAction,
        outcome: AuditOutcome,
        study_instance_uid: str,
        entries: Sequence[TrashEntry],
        detail: dict[str, object],
    ) -> None:
        if self._audit is None:
            return
        series = tuple(sorted({e.series_instance_uid for e in entries}))
        patient = entries[0].patient_id if entries else ""
        studied = AuditedStudy(study_instance_uid[:64], patient, series, len(entries))
        self._audit.record(AuditEvent(action, outcome, caller, (studied,), detail))
