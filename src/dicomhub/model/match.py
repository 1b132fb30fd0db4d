"""One query match: the requested attributes of one entity, cheap to build.

A C-FIND over a large archive returns hundreds of matches with a dozen
attributes each; building a pydicom Dataset per match costs more than the SQL.
A :class:`Match` holds (tag -> VR, value) with plain values, and becomes a
Dataset, DIMSE bytes or DICOM JSON only at the edge that needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

__all__ = ["Match", "vr_of"]

_VR_CACHE: dict[str, tuple[int, str] | None] = {}


def vr_of(keyword: str) -> tuple[int, str] | None:
    """(tag, VR) of a dictionary keyword, or None for an unknown keyword."""
    try:
        return _VR_CACHE[keyword]
    except KeyError:
        tag = tag_for_keyword(keyword)
        # Ambiguous dictionary VRs ("US or SS") only matter for empty values
        # here: take the first.
        found = None if tag is None else (int(tag), str(dictionary_VR(tag)).split(" or ")[0])
        _VR_CACHE[keyword] = found
        return found


@dataclass(slots=True)
class Match:
    """Attributes of one match by tag: (VR, value).

    A value is ``None`` (returned empty), a ``str``, a list of ``str``, or a
    pydicom :class:`DataElement` taken from the stored header (sequences and
    anything that is not plain text).
    """

    values: dict[int, tuple[str, Any]] = field(default_factory=dict)

    def set(self, keyword: str, value: Any) -> None:
        found = vr_of(keyword)
        if found is not None:
            self.values[found[0]] = (found[1], value)

    def get(self, keyword: str) -> Any:
        found = vr_of(keyword)
        if found is None or found[0] not in self.values:
            return None
        value = self.values[found[0]][1]
        return value.value if isinstance(value, DataElement) else value

    def __contains__(self, keyword: str) -> bool:
        found = vr_of(keyword)
        return found is not None and found[0] in self.values

    def to_dataset(self) -> Dataset:
        """The match as a pydicom Dataset (for callers that want one)."""
        ds = Dataset()
        for tag, (vr, value) in sorted(self.values.items()):
            if isinstance(value, DataElement):
                ds.add(value)
            elif vr == "SQ":
                ds.add_new(tag, vr, DicomSequence([]))
            else:
                ds.add_new(tag, vr, value if value not in (None, "", []) else None)
        return ds
