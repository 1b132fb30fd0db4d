"""Modality Worklist (PS3.4 Annex K) on the order records: the use case behind C-FIND.

Reading the worklist is reading orders, so it takes the same right as
:meth:`dicomhub.services.orders.OrderService.orders`: ``query`` at the archive
scope, or ``schedule`` (an order is not a study: a grant scoped to labels or
patients does not reach it). The matching is :mod:`dicomhub.index.worklist`'s.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.dataset import Dataset

from dicomhub.index.worklist import WorklistRepository
from dicomhub.model.access import Action
from dicomhub.model.caller import Caller
from dicomhub.model.worklist import WorklistEntry, WorklistQuery, worklist_query
from dicomhub.services.access import Forbidden

__all__ = ["WorklistService"]


class WorklistService:
    """Scheduled procedure steps offered to modalities."""

    def __init__(self, repo: WorklistRepository) -> None:
        self.repo = repo

    @staticmethod
    def query(identifier: Dataset) -> WorklistQuery:
        """The query a C-FIND identifier asks; InvalidIdentifier when it is malformed."""
        return worklist_query(identifier)

    def find(self, query: WorklistQuery, caller: Caller) -> Iterator[WorklistEntry]:
        """The steps matching ``query``, earliest first. Raises Forbidden before any is read."""
        access = caller.access
        if not (access.study_filter(Action.QUERY).everything or access.may(Action.SCHEDULE)):
            raise Forbidden(
                f"{caller.who} may not read the worklist (needs query at the archive scope, or schedule)"
            )
        return self.repo.find(query)
