"""Search: a :class:`Query` in, identifiers (pydicom data sets) out.

Shared by C-FIND and QIDO-RS. Indexed attributes come from columns;
computed ones (counts, ModalitiesInStudy) from aggregates; anything else
from the header of the first instance below each match. Conditions on
attributes that are not indexed are applied here, in Python, to that header.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dicomhub.index.repository import IndexRepository, SearchRow
from dicomhub.model.access import Action, StudyFilter
from dicomhub.model.attributes import BY_KEYWORD
from dicomhub.model.caller import Caller
from dicomhub.model.identifiers import Level
from dicomhub.model.match import Match
from dicomhub.model.query import Condition, Query, SequenceMatch, matches
from dicomhub.model.records import InstanceRow
from dicomhub.services.headers import HeaderService

__all__ = ["SearchService"]

_COUNT_COLUMNS = {
    "NumberOfPatientRelatedStudies": "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries": "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances": "NumberOfPatientRelatedInstances",
    "NumberOfStudyRelatedSeries": "number_of_series",
    "NumberOfStudyRelatedInstances": "study_number_of_instances",
    "NumberOfSeriesRelatedInstances": "series_number_of_instances",
}


def _items(value: object) -> list[dict[str, object]]:
    if not isinstance(value, DicomSequence):
        return []
    return [{e.keyword: e.value for e in item if e.keyword} for item in value]


def _permitted(caller: Caller, action: Action) -> StudyFilter | None:
    """The caller's study filter for ``action``; None when everything is permitted,
    so that the unrestricted path builds exactly the SQL it always did."""
    if caller.access.unrestricted:
        return None
    permitted = caller.access.study_filter(action)
    return None if permitted.everything else permitted


class SearchService:
    """Answers queries from the index."""

    def __init__(self, index: IndexRepository, headers: HeaderService) -> None:
        self.index = index
        self.headers = headers

    def search(self, query: Query, caller: Caller, action: Action = Action.QUERY) -> Iterator[Match]:
        """Yield one :class:`Match` per matching entity, with every return key of ``query``.

        Only studies the ``caller`` may ``action`` are seen: the index filters by
        its grants inside the query itself, so limit and offset page permitted rows.
        """
        permitted = _permitted(caller, action)
        if permitted is not None and permitted.nothing:
            return
        rows, residual = self.index.search(query, permitted=permitted)
        need_headers = bool(residual) or any(
            k not in BY_KEYWORD and k not in _COUNT_COLUMNS and k != "ModalitiesInStudy"
            for k in query.return_keys
        )
        if residual:
            rows = list(self._filter(rows, residual))
            rows = rows[query.offset :]
            if query.limit is not None:
                rows = rows[: query.limit]
        for chunk_start in range(0, len(rows), 500):
            chunk = rows[chunk_start : chunk_start + 500]
            headers: dict[int, Dataset] = {}
            if need_headers:
                headers = self.headers.headers(
                    [r.representative_pk for r in chunk if r.representative_pk]
                )
            for row in chunk:
                yield self._identifier(query, row, headers.get(row.representative_pk or -1))

    def count(self, query: Query, caller: Caller, action: Action = Action.QUERY) -> int:
        """How many matches :meth:`search` would yield without ``query``'s limit and
        offset: one COUNT over the same SQL, or the filtered rows when conditions
        on non-indexed attributes remain."""
        permitted = _permitted(caller, action)
        if permitted is not None and permitted.nothing:
            return 0
        counted = self.index.count(query, permitted)
        if counted is not None:
            return counted
        rows, residual = self.index.search(replace(query, limit=None, offset=0), permitted=permitted)
        return sum(1 for _row in self._filter(rows, residual))

    def _filter(
        self, rows: list[SearchRow], residual: tuple[Condition, ...]
    ) -> Iterator[SearchRow]:
        for start in range(0, len(rows), 500):
            chunk = rows[start : start + 500]
            headers = self.headers.headers(
                [r.representative_pk for r in chunk if r.representative_pk]
            )
            for row in chunk:
                ds = headers.get(row.representative_pk or -1)
                if ds is None:
                    continue
                if all(self._matches(cond, ds) for cond in residual):
                    yield row

    @staticmethod
    def _matches(cond: Condition, ds: Dataset) -> bool:
        value = ds.get(cond.keyword)
        if isinstance(cond.matcher, SequenceMatch):
            return matches(cond, None, _items(value))
        return matches(cond, value)

    def _identifier(self, query: Query, row: SearchRow, header: Dataset | None) -> Match:
        match = Match()
        values = row.values
        for keyword in query.return_keys:
            attr = BY_KEYWORD.get(keyword)
            value: Any = None
            if attr is not None and attr.level.depth <= query.level.depth:
                value = values.get(attr.column)
                if value is not None and attr.integer:
                    value = str(value)
            elif keyword == "ModalitiesInStudy" and query.level.depth >= Level.STUDY.depth:
                value = [m for m in (values.get("modalities_in_study") or "").split("\\") if m]
            elif keyword in _COUNT_COLUMNS and _COUNT_COLUMNS[keyword] in values:
                value = str(values[_COUNT_COLUMNS[keyword]])
            elif header is not None and attr is None and keyword in header:
                value = header[keyword]
            match.set(keyword, value)
        return match

    def instances(
        self, query: Query, caller: Caller, action: Action = Action.RETRIEVE
    ) -> list[InstanceRow]:
        """The instances below the matches of a retrieve identifier (C-GET/C-MOVE) in
        the studies the ``caller`` may ``action``."""
        permitted = _permitted(caller, action)
        if permitted is not None and permitted.nothing:
            return []
        pairs, residual = self.index.instances_matching(query, permitted)
        if not residual:
            return [row for row, _pk in pairs]
        headers = self.headers.headers([pk for _row, pk in pairs])
        return [
            row
            for row, pk in pairs
            if pk in headers and all(self._matches(c, headers[pk]) for c in residual)
        ]

    def instances_with_header_json(
        self, query: Query, caller: Caller, action: Action = Action.RETRIEVE
    ) -> list[tuple[InstanceRow, str | None]]:
        """Instances below the matches of ``query`` with their stored header JSON (or None),
        in the studies the ``caller`` may ``action``."""
        permitted = _permitted(caller, action)
        if permitted is not None and permitted.nothing:
            return []
        pairs, residual = self.index.instances_with_header_json(query, permitted)
        if not residual:
            return pairs
        headers = self.headers.headers([row.pk for row, _text in pairs])
        return [
            (row, text)
            for row, text in pairs
            if row.pk in headers and all(self._matches(c, headers[row.pk]) for c in residual)
        ]
