"""Rejecting on an operator's request (IHE IOCM).

:class:`RejectionService` makes and stores a note itself (``dicomhub reject``,
``POST /studies/{study}/reject``), as dcm4chee-arc's REST reject does: the note
goes through the same ingest path as one received, where
:class:`~dicomhub.services.rejection_notes.RejectionNotes` applies it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

from dicomhub.errors import NotFound
from dicomhub.model.access import Access, Action, StudyFacts
from dicomhub.model.caller import Caller
from dicomhub.model.identifiers import require_uid
from dicomhub.model.ingest import InstanceOrigin, OriginKind, StoreResult
from dicomhub.model.rejection import (
    KEY_OBJECT_SELECTION_DOCUMENT,
    RejectionReason,
    SOPReference,
    build_rejection_note,
    part10_bytes,
)
from dicomhub.services.access import refuse_unless
from dicomhub.services.headers import HeaderService
from dicomhub.services.ingest import IngestService
from dicomhub.services.wado import WadoService

__all__ = ["RejectionService"]


class RejectionService:
    """Rejects instances on request by making a rejection note and storing it."""

    def __init__(
        self,
        ingest: IngestService,
        wado: WadoService,
        headers: HeaderService,
        study_facts: Callable[[str], StudyFacts | None] | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.ingest = ingest
        self.wado = wado
        self.headers = headers
        self.study_facts = study_facts
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))

    def reject(
        self,
        caller: Caller,
        reason: RejectionReason | str,
        study: str,
        series: str | None = None,
        instance: str | None = None,
    ) -> StoreResult:
        """Reject a study, a series or one instance: store a rejection note for it.

        Needs the DELETE right on the study (a rejection hides the instances,
        or deletes them for an expired retention period).

        Returns
        -------
        StoreResult
            The stored note (its SOP Instance UID and series).

        Raises
        ------
        NotFound
            Nothing (not yet rejected) to reject there.
        Forbidden
            The caller may not delete in the study.
        InvalidRequest
            An unknown reason or a malformed UID.
        """
        reason = reason if isinstance(reason, RejectionReason) else RejectionReason.parse(reason)
        require_uid(study, "StudyInstanceUID")
        if not caller.access.unrestricted and self.study_facts is not None:
            facts = self.study_facts(study)
            if facts is None:
                raise NotFound(f"no study {study}")
            refuse_unless(caller.access, Action.DELETE, facts, caller.who)
        # The instances that are not rejected yet (rejected ones are hidden from this query).
        rows = self.wado.instances(caller, study, series, instance)
        refs = [
            SOPReference(r.study_instance_uid, r.series_instance_uid, r.sop_class_uid, r.sop_instance_uid)
            for r in rows
            if r.sop_class_uid != KEY_OBJECT_SELECTION_DOCUMENT or instance is not None
        ]
        if not refs:
            raise NotFound("nothing to reject")
        header = self.headers.headers([rows[0].pk]).get(rows[0].pk)
        if header is None:
            raise NotFound(f"cannot read a header of study {study}")
        now = self.clock()
        note = build_rejection_note(
            reason, refs, header, content_date=now.strftime("%Y%m%d"), content_time=now.strftime("%H%M%S")
        )
        origin = InstanceOrigin(OriginKind.REJECTION, principal=caller.principal)
        # The archive stores the note on the caller's behalf: DELETE was checked
        # above, and a curator need not hold STORE as well.
        on_behalf = dataclasses.replace(caller, access=Access.UNRESTRICTED)
        return self.ingest.store_part10(part10_bytes(note), on_behalf, origin=origin)
