"""Delete a study, series or instance: into the trash, or for good.

The index rows go in one committed transaction (with ``deleted`` rows in the
change log and the parents' counts brought up to date). With a trash
(``trash_keep`` above 0) the same transaction copies the instances into it
and the blobs stay where they are, to be restored or purged later
(:mod:`dicomhub.services.trash`). Without one the blobs are removed once the
transaction has committed: a crash in between leaves blobs without rows, which
are orphans for reconciliation to find, never rows without blobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from dicomhub.index.repository import IndexRepository
from dicomhub.index.trash import TrashRepository
from dicomhub.model.access import Action, StudyFacts
from dicomhub.model.caller import Caller
from dicomhub.model.identifiers import Level
from dicomhub.model.timestamps import utc_now
from dicomhub.services.access import refuse_unless
from dicomhub.storage.base import BlobStore

__all__ = ["DeleteResult", "DeleteService"]

LOGGER = logging.getLogger("dicomhub.delete")


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """What a delete removed (UIDs, and PatientIDs of patients left without studies)."""

    instances: tuple[str, ...]
    series: tuple[str, ...]
    studies: tuple[str, ...]
    patients: tuple[str, ...]
    blobs_not_removed: int = 0
    trashed: bool = False  # kept in the trash (restorable), not removed for good


class DeleteService:
    """Removes entities from the index, into the trash or with their blobs.

    ``trash`` with ``trash_keep`` seconds above 0 keeps what is deleted in the
    trash; otherwise the blobs are removed at once.
    """

    def __init__(
        self,
        index: IndexRepository,
        blobs: BlobStore,
        study_facts: Callable[[str], StudyFacts | None] | None = None,
        trash: TrashRepository | None = None,
        trash_keep: float = 0.0,
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.study_facts = study_facts
        self.trash = trash if trash_keep > 0 else None

    def _authorize(self, caller: Caller, study_instance_uid: str) -> None:
        """Refuse a caller without DELETE on the study (as a missing study when it may
        not even see it)."""
        if caller.access.unrestricted or self.study_facts is None:
            return
        facts = self.study_facts(study_instance_uid)
        if facts is not None:  # a missing study is reported by the delete itself
            refuse_unless(caller.access, Action.DELETE, facts, caller.who)

    def delete_study(self, study_instance_uid: str, caller: Caller, *, reason: str = "") -> DeleteResult:
        """Delete a study with all its series and instances (``reason``: kept in the trash).

        Raises
        ------
        NotFound
            The study is not held.
        """
        return self._delete(caller, reason, Level.STUDY, study_instance_uid)

    def delete_series(
        self, study_instance_uid: str, series_instance_uid: str, caller: Caller, *, reason: str = ""
    ) -> DeleteResult:
        """Delete a series of a study (and the study when it is left empty).

        Raises
        ------
        NotFound
            The series is not held in that study.
        """
        return self._delete(caller, reason, Level.SERIES, study_instance_uid, series_instance_uid)

    def delete_instance(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        caller: Caller,
        *,
        reason: str = "",
    ) -> DeleteResult:
        """Delete one instance (and the parents it leaves empty).

        Raises
        ------
        NotFound
            The instance is not held in that series of that study.
        """
        return self._delete(
            caller, reason, Level.IMAGE, study_instance_uid, series_instance_uid, sop_instance_uid
        )

    def _delete(
        self,
        caller: Caller,
        reason: str,
        level: Level,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> DeleteResult:
        self._authorize(caller, study_instance_uid)
        keeper = None
        if self.trash is not None:
            keeper = self.trash.keeper(caller.who, reason, utc_now())
        removed = self.index.delete_entity(
            level, study_instance_uid, series_instance_uid, sop_instance_uid, before_removal=keeper
        )
        failed = 0
        # In the trash the blobs stay: the purge removes them once the keep time is over.
        for key in removed["blob_keys"] if keeper is None else ():
            try:
                self.blobs.delete(key)
            except Exception:  # the rows are gone: a leftover blob is an orphan, not an error
                failed += 1
                LOGGER.exception("could not remove blob %s", key)
        result = DeleteResult(
            instances=tuple(removed["instances"]),
            series=tuple(removed["series"]),
            studies=tuple(removed["studies"]),
            patients=tuple(removed["patients"]),
            blobs_not_removed=failed,
            trashed=keeper is not None,
        )
        LOGGER.info(
            "deleted %s %s for %s%s: %d instances, %d series, %d studies, %d patients",
            level.value,
            sop_instance_uid or series_instance_uid or study_instance_uid,
            caller.name or caller.address or caller.channel.value,
            " (into the trash)" if keeper is not None else "",
            len(result.instances),
            len(result.series),
            len(result.studies),
            len(result.patients),
        )
        return result
