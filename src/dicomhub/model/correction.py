"""Corrections of stored studies: which attributes an operator may set, and
writing an object again under new UIDs (IHE IOCM "move"/"copy" semantics).

*Which attributes.* A correction sets study-level attributes (the General Study
module's identifying and descriptive ones) and the Patient module attributes
the index holds. The UIDs are never set by hand: a correction that needs new
UIDs makes them itself and records the old -> new map. Any other keyword is
refused, so a correction cannot quietly change series- or instance-level data.

*Writing again.* :func:`reissue` gives a copy of a stored object its new Study,
Series and SOP Instance UIDs and the new values, and keeps every value it
replaced (the UIDs included) in a new item of Original Attributes Sequence
(0400,0561) with the Reason for the Attribute Modification ``CORRECT``, as
PS3.3 C.12.1.1.9 asks of a system that corrects an object.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import enum
from collections.abc import Iterable, Mapping, MutableMapping

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid
from pydicom.valuerep import validate_value

from dicomhub.errors import InvalidRequest
from dicomhub.model.coercion import PATIENT_KEYWORDS, STUDY_KEYWORDS

__all__ = [
    "PATIENT_KEYWORDS",
    "STUDY_KEYWORDS",
    "CorrectionKind",
    "Reissue",
    "SourceDisposition",
    "new_uid",
    "parse_assignments",
    "reissue",
]

# The identifying UIDs a correction makes itself (and records in the UID map).
_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class CorrectionKind(enum.Enum):
    MODIFY = "modify"
    SPLIT = "split"
    MERGE_STUDIES = "merge-studies"
    MERGE_PATIENTS = "merge-patients"


class SourceDisposition(enum.Enum):
    """What becomes of the originals of objects written again under new UIDs."""

    REJECT = "reject"  # an IOCM rejection note hides them (still stored, listed by the record)
    KEEP = "keep"  # both stay visible (Orthanc's KeepSource)

    @classmethod
    def parse(cls, value: str) -> SourceDisposition:
        try:
            return cls(value)
        except ValueError:
            raise InvalidRequest(f"source must be reject or keep, not {value!r}") from None


def new_uid() -> str:
    """A new UID under the 2.25 (UUID) root: unique without a registered root."""
    return str(generate_uid(prefix=None))


def parse_assignments(assignments: Iterable[str] | Mapping[str, str]) -> dict[str, str]:
    """``Keyword=Value`` items (CLI) or a mapping (REST) as checked ``{keyword: value}``.

    Raises :class:`InvalidRequest` for a malformed item, an unknown keyword, a
    UID or any attribute outside :data:`STUDY_KEYWORDS` and the Patient module,
    a keyword given twice, and a value its VR does not allow.
    """
    pairs: list[tuple[str, str]] = []
    if isinstance(assignments, Mapping):
        pairs = [(str(k), v) for k, v in assignments.items()]
    else:
        for item in assignments:
            keyword, sep, value = item.partition("=")
            if not sep or not keyword:
                raise InvalidRequest(f"expected Keyword=Value, got {item!r}")
            pairs.append((keyword.strip(), value))
    values: dict[str, str] = {}
    for keyword, value in pairs:
        if not isinstance(value, str):
            raise InvalidRequest(f"{keyword}: the value must be a string")
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise InvalidRequest(f"{keyword} is not a DICOM keyword")
        if keyword in _UID_KEYWORDS or dictionary_VR(tag) == "UI":
            raise InvalidRequest(
                f"{keyword} is a UID: a correction makes new UIDs itself (--new-uids) and records the map"
            )
        if keyword not in STUDY_KEYWORDS and keyword not in PATIENT_KEYWORDS:
            allowed = ", ".join((*STUDY_KEYWORDS, *PATIENT_KEYWORDS))
            raise InvalidRequest(f"{keyword} cannot be corrected here (allowed: {allowed})")
        if keyword in values:
            raise InvalidRequest(f"{keyword} is given twice")
        vr = dictionary_VR(tag)
        try:
            validate_value(vr, value, pydicom_config.RAISE)
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"{keyword} ({vr}): {exc}") from exc
        values[keyword] = value
    return values


@dataclasses.dataclass(frozen=True, slots=True)
class Reissue:
    """How to write one object again: its new study, the values to set, and who."""

    study_instance_uid: str
    values: Mapping[str, str]
    modifying_system: str
    modified_at: dt.datetime


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)


def reissue(ds: Dataset, how: Reissue, uid_map: MutableMapping[str, str]) -> dict[str, str]:
    """Give ``ds`` (modified in place) the new study, series and SOP Instance
    UIDs and ``how.values``; returns the values it replaced, by keyword.

    ``uid_map`` (old -> new) is shared by the objects of one correction: a
    series keeps one new Series Instance UID for all its instances, and the
    study's entry is added too.
    """
    old_study = _text(ds, "StudyInstanceUID")
    if old_study != how.study_instance_uid:
        uid_map.setdefault(old_study, how.study_instance_uid)
    wanted = {
        "StudyInstanceUID": how.study_instance_uid,
        "SeriesInstanceUID": uid_map.setdefault(_text(ds, "SeriesInstanceUID"), new_uid()),
        "SOPInstanceUID": uid_map.setdefault(_text(ds, "SOPInstanceUID"), new_uid()),
        **how.values,
    }
    changed = [k for k, v in wanted.items() if _text(ds, k) != v]
    old = Dataset()
    replaced: dict[str, str] = {}
    for keyword in changed:
        replaced[keyword] = _text(ds, keyword)
        if keyword in ds:
            old[keyword] = copy.deepcopy(ds[keyword])
    for keyword in changed:
        setattr(ds, keyword, wanted[keyword])
    if getattr(ds, "file_meta", None) is not None and "MediaStorageSOPInstanceUID" in ds.file_meta:
        ds.file_meta.MediaStorageSOPInstanceUID = UID(wanted["SOPInstanceUID"])
    if changed:
        item = Dataset()
        item.SourceOfPreviousValues = ""
        item.AttributeModificationDateTime = how.modified_at.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")
        item.ModifyingSystem = how.modifying_system[:64]
        item.ReasonForTheAttributeModification = "CORRECT"
        item.ModifiedAttributesSequence = Sequence([old])
        ds.OriginalAttributesSequence = Sequence([*(ds.get("OriginalAttributesSequence") or []), item])
    return replaced
