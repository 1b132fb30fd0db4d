"""Rejection notes (IHE IOCM) on the one ingest path.

:class:`RejectionNotes` is what :class:`~dicomhub.services.ingest.steps.IngestSteps`
asks for every object:

- an object whose SOP Instance UID was rejected is refused before anything is
  written (:class:`~dicomhub.errors.RejectedObject`, as dcm4chee-arc's
  "Subsequent occurrence of rejected object", 0xA771);
- a rejection note (:mod:`dicomhub.model.rejection`) becomes a
  :class:`~dicomhub.index.rejection.RejectionWrite` that goes into the note's own
  row transaction; a note referencing an instance that is not held is refused
  (:class:`~dicomhub.errors.RejectionFailed`, dcm4chee-arc's 0xA772);
- once the note is committed, the rejection is audited, and the instances of a
  "Data Retention Policy Expired" note are deleted (as dcm4chee-arc deletes
  them), when the sender may delete them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from dicomhub.errors import DicomhubError, InvalidRequest, NotFound, RejectedObject, RejectionFailed
from dicomhub.index.rejection import RejectionRepository, RejectionWrite
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditEvent, AuditOutcome
from dicomhub.model.caller import Caller
from dicomhub.model.records import InstanceHeader
from dicomhub.model.rejection import KEY_OBJECT_SELECTION_DOCUMENT, RejectionReason, rejection_note_of
from dicomhub.services.audit import AuditService
from dicomhub.services.delete import DeleteService

__all__ = ["RejectionNotes"]

LOGGER = logging.getLogger("dicomhub.rejection")

_DCM = "DCM"


class RejectionNotes:
    """What ingest asks about rejections (see the module docstring)."""

    def __init__(self, repository: RejectionRepository) -> None:
        self.repository = repository
        # Set once the archive's services exist (bootstrap): they are made after ingest.
        self.audit: AuditService | None = None
        self.delete: DeleteService | None = None

    def refuse_rejected(self, header: InstanceHeader) -> None:
        """Raise :class:`RejectedObject` when ``header``'s instance was rejected."""
        self.refuse(header, self.repository.rejection_of(header.sop_instance_uid))

    @staticmethod
    def refuse(header: InstanceHeader, found: Mapping[str, Any] | None) -> None:
        """Raise :class:`RejectedObject` when ``found`` (the instance's rejection row, read
        by the caller) says it was rejected."""
        if found is not None:
            raise RejectedObject(
                f"subsequent occurrence of rejected object {header.sop_instance_uid} "
                f"(rejected by {found['rejection_note_uid']} with code {found['code_value']})"
            )

    @staticmethod
    def may_be_note(header: InstanceHeader) -> bool:
        """Whether ``header``'s object may be a rejection note (is a KOS): only those are read."""
        return header.sop_class_uid == KEY_OBJECT_SELECTION_DOCUMENT

    def rejection_of(self, header: InstanceHeader, data: bytes, caller: Caller) -> RejectionWrite | None:
        """The rejections to write with this object when it is a rejection note, else None.

        Raises
        ------
        RejectionFailed
            It references an instance that is not held (in the series and study it names).
        InvalidRequest
            It is a malformed rejection note, or it references instances of another study.
        """
        if header.sop_class_uid != KEY_OBJECT_SELECTION_DOCUMENT:
            return None
        note = rejection_note_of(data)
        if note is None:
            return None
        # Access control grants storing per study: a note may only reject in its own.
        others = {r.study_instance_uid for r in note.references} - {note.study_instance_uid}
        if others:
            raise InvalidRequest(
                f"rejection note {note.sop_instance_uid} of study {note.study_instance_uid} "
                f"references instances of another study ({sorted(others)[0]})"
            )
        missing = self.repository.missing(note.references)
        if missing:
            names = ", ".join(r.sop_instance_uid for r in missing[:5])
            raise RejectionFailed(
                f"rejection note {note.sop_instance_uid} references {len(missing)} instance(s) "
                f"not held: {names}"
            )
        return RejectionWrite(
            rejection_note_uid=note.sop_instance_uid,
            code_value=note.reason.code_value,
            coding_scheme=_DCM,
            references=note.references,
            rejected_by=caller.who,
        )

    def applied(self, rejection: RejectionWrite, caller: Caller) -> None:
        """After the note's commit: audit it, and delete the instances of a retention
        expiry. Never raises: the note and its rejections are stored already."""
        try:
            self._audit(rejection, caller)
            if rejection.code_value == RejectionReason.RETENTION.code_value:
                self._delete_expired(rejection, caller)
        except Exception:
            LOGGER.exception("after rejection note %s", rejection.rejection_note_uid)

    def _audit(self, rejection: RejectionWrite, caller: Caller) -> None:
        if self.audit is None:
            return
        by_study: dict[str, set[str]] = {}
        counts: dict[str, int] = {}
        for ref in rejection.references:
            by_study.setdefault(ref.study_instance_uid, set()).add(ref.series_instance_uid)
            counts[ref.study_instance_uid] = counts.get(ref.study_instance_uid, 0) + 1
        studies = tuple(
            AuditedStudy(uid, series_instance_uids=tuple(sorted(series)), number_of_instances=counts[uid])
            for uid, series in by_study.items()
        )
        self.audit.record(
            AuditEvent(
                AuditAction.DELETE,
                AuditOutcome.SUCCESS,
                caller,
                studies,
                {"rejected": rejection.code_value, "rejection_note": rejection.rejection_note_uid},
            )
        )

    def _delete_expired(self, rejection: RejectionWrite, caller: Caller) -> None:
        """Delete the instances a "Data Retention Policy Expired" note rejected; what the
        sender may not delete stays rejected (hidden), and is logged."""
        if self.delete is None:
            return
        for ref in rejection.references:
            try:
                self.delete.delete_instance(
                    ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid, caller
                )
            except NotFound:
                continue  # deleted meanwhile
            except DicomhubError as exc:
                LOGGER.warning("rejected %s for retention expiry, not deleted: %s", ref.sop_instance_uid, exc)
