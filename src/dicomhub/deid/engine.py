"""De-identify one data set: the profile's action for every element, at any sequence depth.

:func:`deidentify` never mutates its input: it builds a new data set element
by element (pixel data bytes are shared, not copied) and reports what it did
(:class:`AppliedAction`) and which identifiers it replaced (:class:`Replacement`).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]

from dicomhub.deid.burned_in import BurnedInRisk, burned_in_risk
from dicomhub.deid.iod_types import KeywordPath, attribute_types, resolve_by_type
from dicomhub.deid.key import ProjectKey
from dicomhub.deid.options import BASIC_PROFILE_CODE, OPTION_CODES, Options, Profile
from dicomhub.deid.recipe import RecipeRule
from dicomhub.deid.safe_private import SAFE_PRIVATE, SAFE_PRIVATE_CREATORS
from dicomhub.deid.table import ActionMap, compile_actions

__all__ = ["AppliedAction", "DeidResult", "Replacement", "deidentify", "is_well_known_uid"]


@dataclass(frozen=True, slots=True)
class Replacement:
    kind: str  # "uid", "patient_id", "patient_name", "accession_number", "person_name", ...
    original: str
    replacement: str


@dataclass(frozen=True, slots=True)
class AppliedAction:
    path: str  # e.g. "ReferencedSeriesSequence[0].SeriesInstanceUID"
    tag: str  # "(gggg,eeee)"
    name: str
    action: str  # D, Z, X, K, C, U, or a recipe word
    detail: str


@dataclass
class DeidResult:
    dataset: Dataset
    replacements: list[Replacement] = field(default_factory=list)
    actions: list[AppliedAction] = field(default_factory=list)
    burned_in: BurnedInRisk | None = None


# Identifiers that get a keyed pseudonym (not an empty or dummy value) so
# that the same patient / request keeps one identity across a project.
_PSEUDONYM_KINDS: dict[int, str] = {
    0x00100020: "patient_id",
    0x00100010: "patient_name",
    0x00080050: "accession_number",
}
# UID attributes that name a class, a syntax or a coding scheme, not an
# instance: they identify nobody and their meaning must survive (a private
# SOP class UID is not in pydicom's dictionary but is still a class).
_CLASS_UID_KEYWORDS = re.compile(r"(ClassUID|ClassesUID|SyntaxUID|SchemeUID|CreatorUID|ContextUID)s?$")
_DUMMY: dict[str, Any] = {
    "AE": "DEIDENTIFIED",
    "AS": "000D",
    "CS": "DEIDENTIFIED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "LO": "DEIDENTIFIED",
    "LT": "DEIDENTIFIED",
    "SH": "DEIDENTIFIED",
    "ST": "DEIDENTIFIED",
    "UT": "DEIDENTIFIED",
    "UC": "DEIDENTIFIED",
    "UR": "urn:deidentified",
    "PN": "DEIDENTIFIED",
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "UL": 0,
    "US": 0,
    "SV": 0,
    "UV": 0,
    "AT": 0,
}
_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UT", "UC", "PN", "CS"})
_GROUP_MASK_CURVE = 0x5000
_GROUP_MASK_OVERLAY = 0x6000
_SOURCE_AE_TAGS = (0x00020016, 0x00020017, 0x00020018)  # Source/Sending/Receiving AE in file meta
_MAX_LEN = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64}
_TEXT_VALUE = 0x0040A160


@lru_cache(maxsize=8192)
def is_well_known_uid(value: str) -> bool:
    """A UID the standard registers (classes, syntaxes, coding schemes, ...): kept, never mapped."""
    return value in UID_dictionary or value.startswith("1.2.840.10008.")


@lru_cache(maxsize=4096)
def _keyword(tag: int) -> str:
    return keyword_for_tag(tag) or ""


@lru_cache(maxsize=4096)
def _dict_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _tag_str(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Run:
    """The state of one :func:`deidentify` call."""

    def __init__(self, ds: Dataset, profile: Profile, key: ProjectKey) -> None:
        self.options: Options = profile.options
        self.amap: ActionMap = compile_actions(profile.options)
        self.rules: dict[int, RecipeRule] = dict(profile.recipe.rules) if profile.recipe else {}
        self.key = key
        self.replacements: dict[tuple[str, str], str] = {}
        self.actions: list[AppliedAction] = []
        self.top = ds
        self._offset: int | None = None
        self._scrub: re.Pattern[str] | None = None
        self._scrub_built = False
        self.content_action: str | None = None
        self.sop_class = str(ds.get("SOPClassUID", "") or "")
        self.kw_path: KeywordPath = ()

    # ---------------------------------------------------------- replacements

    def replace(self, kind: str, original: str, new: str) -> str:
        self.replacements[(kind, original)] = new
        return new

    def uid(self, value: str) -> str:
        value = value.strip("\x00 ")
        if not value or is_well_known_uid(value):
            return value
        return self.replace("uid", value, self.key.uid(value))

    def pseudonym(self, kind: str, value: str, vr: str) -> str:
        token = self.key.pseudonym(kind, value)
        new = f"ANON^{token}" if vr == "PN" else token
        return self.replace(kind, value, new[: _MAX_LEN.get(vr, 64)])

    @property
    def offset(self) -> int:
        if self._offset is None:
            self._offset = self.key.date_offset_days(str(self.top.get("PatientID", "") or ""))
        return self._offset

    def shift(self, vr: str, value: str) -> str:
        """``value`` moved by the patient's offset; DA and DT stay valid, TM is unchanged."""
        value = value.strip()
        if vr == "TM" or not value:
            return value
        try:
            day = dt.datetime.strptime(value[:8], "%Y%m%d").date()
        except ValueError:
            return ""  # not a full date: nothing trustworthy to shift, so nothing is kept
        shifted = (day + dt.timedelta(days=self.offset)).strftime("%Y%m%d")
        return shifted + value[8:] if vr == "DT" else shifted

    def scrub(self, text: str) -> str:
        """Clean free text: identifiers of this data set's patient are replaced by ``*``."""
        if not self._scrub_built:  # built on first use: most data sets clean no text
            self._scrub, self._scrub_built = _scrub_pattern(self.top), True
        if self._scrub is None:
            return text
        return self._scrub.sub(lambda m: "*" * len(m.group(0)), text)

    # ---------------------------------------------------------- walking

    def record(self, path: str, tag: int, name: str, action: str, detail: str) -> None:
        self.actions.append(AppliedAction(path, _tag_str(tag), name, action, detail))

    def walk(self, src: Dataset, prefix: str) -> Dataset:
        out = Dataset()
        creators: dict[tuple[int, int], str] = {}
        # elements() gives the elements as read, unconverted: an element kept as
        # it is (most of a data set, and the pixel data) is carried over without
        # decoding its value, and written back as the same bytes.
        for raw in src.elements():
            tag = int(raw.tag)
            group = tag >> 16
            if tag in self.rules:
                self.apply_rule(out, src[tag], prefix)
            elif group & 1:
                self.private(out, src, tag, prefix, creators)
            elif tag == 0x7FE00010:
                out[tag] = raw
            else:
                action = self.amap.by_tag.get(tag)
                if action is None:
                    action = self.pattern_action(tag)
                if action is not None:
                    combined = self.amap.combined.get(tag)
                    if combined is not None:
                        action = self.by_type(combined, tag, action)
                    self.apply(out, src[tag], prefix, action, self.amap.names.get(tag) or "")
                elif (raw.VR or _dict_vr(tag)) in ("SQ", "UI") or tag == _TEXT_VALUE:
                    self.unlisted(out, src[tag], prefix)
                else:
                    out[tag] = raw
        return out

    def by_type(self, combined: str, tag: int, fallback: str) -> str:
        """The combined action resolved by the attribute's Type in this object's IOD."""
        types = attribute_types(self.sop_class) if self.sop_class else None
        if types is None:
            return fallback  # IOD unknown: the alternative valid for any Type
        keyword = _keyword(tag)
        return resolve_by_type(combined, types.get((*self.kw_path, keyword)) if keyword else None)

    def pattern_action(self, tag: int) -> str | None:
        group, element = tag >> 16, tag & 0xFFFF
        if group & 0xFF01 == _GROUP_MASK_CURVE:
            return self.amap.curves
        if group & 0xFF01 == _GROUP_MASK_OVERLAY:
            if element == 0x4000:
                return self.amap.overlay_comments
            if element == 0x3000:
                return self.amap.overlay_data
            # An overlay plane without its Overlay Data is not a valid Overlay
            # Plane module: the whole group goes with the data, or stays with it.
            return "X" if self.amap.overlay_data == "X" else None
        return None

    def unlisted(self, out: Dataset, elem: DataElement, prefix: str) -> None:
        vr = elem.VR
        if self.content_action is not None and int(elem.tag) == _TEXT_VALUE:
            self.apply(out, elem, prefix, self.content_action, "Text Value")
        elif vr == "SQ":
            out.add(self.sequence(elem, prefix, None))
        elif vr == "UI" and not self.options.retain_uids and not _CLASS_UID_KEYWORDS.search(elem.keyword):
            # Not in Table E.1-1 yet an instance UID (e.g. a newer attribute):
            # mapped like the listed ones so references stay consistent.
            new = self.map_uids(elem)
            out.add(new)
            if new.value != elem.value:
                self.record(_path(prefix, elem), int(elem.tag), elem.name, "U", "UID mapped (not in table)")
        else:
            out.add(elem)

    def sequence(self, elem: DataElement, prefix: str, record: tuple[str, str] | None) -> DataElement:
        path = _path(prefix, elem)
        outer = self.content_action
        if record is not None and record[1] in ("D", "C"):
            # Text Value is not in Table E.1-1: the action of the sequence that holds
            # it (Content Sequence: D, or C under Clean Structured Content) applies.
            self.content_action = record[1]
        outer_path = self.kw_path
        self.kw_path = (*outer_path, elem.keyword)
        try:
            items = [self.walk(item, f"{path}[{i}].") for i, item in enumerate(elem.value or [])]
        finally:
            self.content_action, self.kw_path = outer, outer_path
        if record is not None:
            self.record(path, int(elem.tag), record[0], record[1], f"{len(items)} item(s) de-identified")
        return DataElement(elem.tag, "SQ", Sequence(items))

    def map_uids(self, elem: DataElement) -> DataElement:
        value = elem.value
        if isinstance(value, (list, MultiValue)):
            return DataElement(elem.tag, "UI", [self.uid(str(v)) for v in value])
        if not value:
            return DataElement(elem.tag, "UI", value)
        return DataElement(elem.tag, "UI", self.uid(str(value)))

    def apply(self, out: Dataset, elem: DataElement, prefix: str, action: str, name: str) -> None:
        tag, vr = int(elem.tag), elem.VR
        name = name or elem.name
        path = _path(prefix, elem)
        if action == "X":
            self.record(path, tag, name, "X", "removed")
            return
        if vr == "SQ":
            if action == "Z":
                out.add(DataElement(elem.tag, "SQ", Sequence()))
                self.record(path, tag, name, "Z", "emptied")
            else:
                out.add(self.sequence(elem, prefix, (name, action)))
            return
        if action == "K":
            out.add(elem)
            self.record(path, tag, name, "K", "kept")
            return
        if vr == "UI" and action in ("U", "D", "C", "Z"):
            out.add(self.map_uids(elem))
            self.record(path, tag, name, action, "UID mapped" if elem.value else "empty")
            return
        kind = _PSEUDONYM_KINDS.get(tag)
        if kind is None and vr == "PN" and action == "D":
            kind = "person_name"
        if kind is not None and action in ("Z", "D") and not elem.is_empty:
            value = self.pseudonym(kind, str(elem.value), vr)
            out.add(DataElement(elem.tag, vr, value))
            self.record(path, tag, name, action, f"replaced by {kind} pseudonym")
            return
        if action == "Z":
            out.add(DataElement(elem.tag, vr, None))
            self.record(path, tag, name, "Z", "emptied")
        elif action == "D":
            # an ambiguous VR ("US or SS", "OB or OW") takes its first reading
            out.add(DataElement(elem.tag, vr, _DUMMY.get(vr.split(" ")[0], b"\x00\x00")))
            self.record(path, tag, name, "D", "replaced by a dummy value")
        elif action == "C":
            new_value, detail = self.clean(elem)
            out.add(DataElement(elem.tag, vr, new_value))
            self.record(path, tag, name, "C", detail)
        else:  # pragma: no cover - the table has no other action
            raise AssertionError(action)

    def clean(self, elem: DataElement) -> tuple[Any, str]:
        vr, value = elem.VR, elem.value
        if elem.is_empty:
            return value, "empty"
        if vr in ("DA", "DT", "TM"):
            if vr == "TM":
                return value, "time kept (dates shift by whole days)"
            values = list(value) if isinstance(value, (list, MultiValue)) else [value]
            shifted = [self.shift(vr, str(v)) for v in values]
            return (shifted if len(shifted) > 1 else shifted[0]), f"shifted by {self.offset} days"
        if vr == "AE":
            return self.pseudonym("ae_title", str(value).strip(), "AE"), "replaced by AE pseudonym"
        if vr in _TEXT_VRS:
            if isinstance(value, (list, MultiValue)):
                return [self.scrub(str(v)) for v in value], "known identifiers scrubbed"
            return self.scrub(str(value)), "known identifiers scrubbed"
        # Binary (overlay, curve data) and numbers: nothing to scrub automatically;
        # keeping them is what the option asks for (the burned-in report flags overlays).
        return value, "kept (clean option)"

    def private(
        self, out: Dataset, src: Dataset, tag: int, prefix: str, creators: dict[tuple[int, int], str]
    ) -> None:
        group, element = tag >> 16, tag & 0xFFFF
        path = prefix + _tag_str(tag)
        if self.amap.private == "C":
            if 0x0010 <= element <= 0x00FF:
                creator = str(src[tag].value or "").strip()
                creators[(group, element)] = creator
                if (creator, group) in SAFE_PRIVATE_CREATORS:
                    out.add(src[tag])
                    return
            elif element > 0x00FF:
                creator = creators.get((group, element >> 8), "")
                what = SAFE_PRIVATE.get((creator, group, element & 0xFF))
                if what is not None:
                    out.add(src[tag])
                    self.record(path, tag, f"{creator} {what}", "C", "safe private kept")
                    return
        if element > 0x00FF:  # creators go silently with their blocks
            self.record(path, tag, "Private Attributes", "X", "private attribute removed")

    def apply_rule(self, out: Dataset, elem: DataElement, prefix: str) -> None:
        tag, vr = int(elem.tag), elem.VR
        rule = self.rules[tag]
        path, name = _path(prefix, elem), elem.name
        action = rule.action
        if action == "remove":
            self.record(path, tag, name, action, "removed (recipe)")
            return
        if action == "keep":
            out.add(elem)
            self.record(path, tag, name, action, "kept (recipe)")
            return
        if action == "replace":
            out.add(DataElement(elem.tag, vr, rule.value))
            self.record(path, tag, name, action, "replaced (recipe)")
            return
        if action == "shift-date":
            new_value, detail = self.clean(elem) if vr in ("DA", "DT") else (elem.value, "not a date")
            out.add(DataElement(elem.tag, vr, new_value))
            self.record(path, tag, name, action, detail + " (recipe)")
            return
        # hash: the keyed replacement, whatever the VR holds
        if vr == "UI":
            out.add(self.map_uids(elem))
        elif vr == "SQ":
            out.add(self.sequence(elem, prefix, None))
        elif not elem.is_empty:
            out.add(DataElement(elem.tag, vr, self.pseudonym(f"hash:{elem.keyword}", str(elem.value), vr)))
        else:
            out.add(elem)
        self.record(path, tag, name, action, "keyed hash (recipe)")


def _path(prefix: str, elem: DataElement) -> str:
    return prefix + (elem.keyword or _tag_str(int(elem.tag)))


_SCRUB_IDENTIFIERS = (
    "PatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "PatientBirthDate",
    "MedicalRecordLocator",
)


def _scrub_pattern(ds: Dataset) -> re.Pattern[str] | None:
    words: set[str] = set()
    for keyword in ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName"):
        for value in _values(ds.get(keyword)):
            words.update(w for w in re.split(r"[\^= ,]+", value) if len(w) >= 2)
    for keyword in _SCRUB_IDENTIFIERS:
        words.update(v for v in _values(ds.get(keyword)) if len(v) >= 2)
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<![0-9A-Za-z])(?:{alternatives})(?![0-9A-Za-z])", re.IGNORECASE)


def _values(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, MultiValue)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [str(value).strip()]


def _method(profile: Profile) -> tuple[list[str], Sequence]:
    codes = [BASIC_PROFILE_CODE] + [OPTION_CODES[name] for name in profile.options.chosen]
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    text = ["dicomhub PS3.15 Basic Profile"] + [name.replace("_", " ") for name in profile.options.chosen]
    if profile.recipe is not None:
        text.append(f"project recipe ({profile.name})"[:64])
    return text, Sequence(items)


def deidentify(ds: Dataset, profile: Profile, key: ProjectKey) -> DeidResult:
    """De-identify ``ds`` under ``profile`` with the project's ``key`` (``ds`` is not changed)."""
    run = _Run(ds, profile, key)
    out = run.walk(ds, "")
    options = profile.options
    out.PatientIdentityRemoved = "YES"
    text, codes = _method(profile)
    out.DeidentificationMethod = text
    out.DeidentificationMethodCodeSequence = codes
    if options.retain_long_modified_dates:
        out.LongitudinalTemporalInformationModified = "MODIFIED"
    elif options.retain_long_full_dates:
        out.LongitudinalTemporalInformationModified = "UNMODIFIED"
    else:
        out.LongitudinalTemporalInformationModified = "REMOVED"
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        new_meta = FileMetaDataset()
        for elem in meta:
            if int(elem.tag) not in _SOURCE_AE_TAGS:
                new_meta.add(elem)
        if "SOPInstanceUID" in out:
            new_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        out.file_meta = new_meta
    out.set_original_encoding(*_encoding(ds))
    return DeidResult(
        dataset=out,
        replacements=[Replacement(k, o, r) for (k, o), r in run.replacements.items()],
        actions=run.actions,
        burned_in=burned_in_risk(out),
    )


def _encoding(ds: Dataset) -> tuple[bool | None, bool | None, Any]:
    implicit, little = ds.original_encoding
    return implicit, little, ds.original_character_set
