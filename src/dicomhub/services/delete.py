"""Delete a study, series or instance: index rows first, then the blobs.

The index rows go in one committed transaction (with ``deleted`` rows in the
change log and the parents' counts brought up to date); only then are the
blobs removed. A crash in between leaves blobs without rows, which are
orphans for reconciliation to find, never rows without blobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from dicomhub.errors import NotFound
from dicomhub.index.repository import IndexRepository
from dicomhub.model.access import Action, StudyFacts
from dicomhub.model.caller import Caller
from dicomhub.model.identifiers import Level
from dicomhub.services.access import Forbidden
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


class DeleteService:
    """Removes entities from the index and their blobs from the store."""

    def __init__(
        self,
        index: IndexRepository,
        blobs: BlobStore,
        study_facts: Callable[[str], StudyFacts | None] | None = None,
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.study_facts = study_facts

    def _authorize(self, caller: Caller, study_instance_uid: str) -> None:
        """Refuse a caller without DELETE on the study: as a missing study when it may
        not even see it, else :class:`Forbidden`."""
        access = caller.access
        if access.unrestricted or self.study_facts is None:
            return
        facts = self.study_facts(study_instance_uid)
        if facts is None or access.permits(Action.DELETE, facts):
            return  # a missing study is reported by the delete itself
        if access.permits(Action.QUERY, facts) or access.permits(Action.RETRIEVE, facts):
            raise Forbidden(f"{caller.who} may not delete study {study_instance_uid}")
        raise NotFound(f"no study {study_instance_uid}")

    def delete_study(self, study_instance_uid: str, caller: Caller) -> DeleteResult:
        """Delete a study with all its series and instances.

        Raises
        ------
        NotFound
            The study is not held.
        """
        return self._delete(caller, Level.STUDY, study_instance_uid)

    def delete_series(
        self, study_instance_uid: str, series_instance_uid: str, caller: Caller
    ) -> DeleteResult:
        """Delete a series of a study (and the study when it is left empty).

        Raises
        ------
        NotFound
            The series is not held in that study.
        """
        return self._delete(caller, Level.SERIES, study_instance_uid, series_instance_uid)

    def delete_instance(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        caller: Caller,
    ) -> DeleteResult:
        """Delete one instance (and the parents it leaves empty).

        Raises
        ------
        NotFound
            The instance is not held in that series of that study.
        """
        return self._delete(caller, Level.IMAGE, study_instance_uid, series_instance_uid, sop_instance_uid)

    def _delete(
        self,
        caller: Caller,
        level: Level,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> DeleteResult:
        self._authorize(caller, study_instance_uid)
        removed = self.index.delete_entity(level, study_instance_uid, series_instance_uid, sop_instance_uid)
        failed = 0
        for key in removed["blob_keys"]:
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
        )
        LOGGER.info(
            "deleted %s %s for %s: %d instances, %d series, %d studies, %d patients",
            level.value,
            sop_instance_uid or series_instance_uid or study_instance_uid,
            caller.name or caller.address or caller.channel.value,
            len(result.instances),
            len(result.series),
            len(result.studies),
            len(result.patients),
        )
        return result
