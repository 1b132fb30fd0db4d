"""The protocol-neutral query model shared by C-FIND and QIDO-RS.

A C-FIND identifier or a set of QIDO-RS parameters becomes a :class:`Query`:
a level, a list of :class:`Condition` (attribute + matcher) and the return
keys. :mod:`dicomhub.index.compile` turns it into SQL; :func:`matches` applies
the same rules in Python to attributes that are not indexed in columns.

References
----------
PS3.4 C.2.2.2 (attribute matching): single value, list of UID, universal,
wildcard, range and sequence matching.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from dicomhub.errors import InvalidIdentifier, InvalidRequest
from dicomhub.model.identifiers import Level

__all__ = [
    "Condition",
    "ORDERABLE",
    "Matcher",
    "OrderKey",
    "Query",
    "Range",
    "SequenceMatch",
    "Single",
    "UidList",
    "Universal",
    "ValueList",
    "Wildcard",
    "matches",
    "parse_matcher",
    "parse_order_by",
    "query_from_identifier",
]

_RANGE_VRS = frozenset({"DA", "TM", "DT"})
_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})


@dataclass(frozen=True, slots=True)
class Universal:
    """Zero-length value: matches everything (C.2.2.2.3)."""


@dataclass(frozen=True, slots=True)
class Single:
    """Single value matching (C.2.2.2.1)."""

    value: str


@dataclass(frozen=True, slots=True)
class UidList:
    """List of UID matching (C.2.2.2.2)."""

    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ValueList:
    """A backslash-separated list of single values: any of them matches."""

    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Wildcard:
    """Wildcard matching with ``*`` and ``?`` (C.2.2.2.4)."""

    pattern: str


@dataclass(frozen=True, slots=True)
class Range:
    """Range matching for DA, TM and DT (C.2.2.2.5); a bound may be open."""

    lower: str | None
    upper: str | None


@dataclass(frozen=True, slots=True)
class SequenceMatch:
    """Sequence matching of one level (C.2.2.2.6): any item matches all conditions."""

    conditions: tuple[Condition, ...]


Matcher = Universal | Single | UidList | ValueList | Wildcard | Range | SequenceMatch


@dataclass(frozen=True, slots=True)
class Condition:
    """``keyword`` (of value representation ``vr``) must satisfy ``matcher``."""

    keyword: str
    vr: str
    matcher: Matcher


# dicomhub's sort extension (QIDO-RS ``orderby``): only keys held in indexed columns,
# so that a sorted page is an index walk and not a sort of the whole archive.
ORDERABLE = frozenset({"StudyDate", "PatientName", "PatientID", "AccessionNumber"})


@dataclass(frozen=True, slots=True)
class OrderKey:
    """Sort the matches by ``keyword``, newest/greatest first when ``descending``."""

    keyword: str
    descending: bool = False


def parse_order_by(text: str) -> tuple[OrderKey, ...]:
    """Parse ``StudyDate,-PatientName`` (a ``-`` sorts that key descending).

    Raises
    ------
    InvalidRequest
        For a key outside :data:`ORDERABLE` or a key given twice.
    """
    keys: list[OrderKey] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        descending = item.startswith("-")
        keyword = item.lstrip("+-").strip()
        if keyword not in ORDERABLE:
            raise InvalidRequest(
                f"cannot sort by {keyword!r}: orderby accepts {', '.join(sorted(ORDERABLE))} "
                "(prefix - for descending)"
            )
        if any(k.keyword == keyword for k in keys):
            raise InvalidRequest(f"orderby names {keyword} twice")
        keys.append(OrderKey(keyword, descending))
    return tuple(keys)


@dataclass(frozen=True, slots=True)
class Query:
    """A search at one level of the hierarchy.

    ``conditions`` holds only the non-universal conditions; ``return_keys``
    every attribute asked for (keywords), in request order.
    """

    level: Level
    conditions: tuple[Condition, ...] = ()
    return_keys: tuple[str, ...] = ()
    limit: int | None = None
    offset: int = 0
    fuzzy_person_names: bool = False
    extra: dict[str, str] = field(default_factory=dict)
    # Instances rejected by a rejection note (IHE IOCM) are hidden unless asked for
    # (QIDO-RS and WADO-RS ``includerejected=true``); see dicomhub.index.rejection.
    include_rejected: bool = False
    # dicomhub extensions of QIDO-RS: studies carrying any of ``labels``; matches
    # sorted by ``order_by`` (then by the order of storage) instead of storage order.
    labels: tuple[str, ...] = ()
    order_by: tuple[OrderKey, ...] = ()

    def condition(self, keyword: str) -> Condition | None:
        for cond in self.conditions:
            if cond.keyword == keyword:
                return cond
        return None


def parse_matcher(vr: str, value: object) -> Matcher:
    """Classify a query value of value representation ``vr`` (PS3.4 C.2.2.2).

    Raises
    ------
    InvalidIdentifier
        For a malformed range or a wildcard in a UID.
    """
    if value is None:
        return Universal()
    if isinstance(value, (list, tuple, MultiValue)):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.strip(" \x00")
    if text == "" or text == "*":
        return Universal()
    if vr == "UI":
        values = tuple(v.strip(" \x00") for v in text.split("\\") if v.strip(" \x00"))
        if any("*" in v or "?" in v for v in values):
            raise InvalidIdentifier("wildcards are not allowed in UID matching")
        return Single(values[0]) if len(values) == 1 else UidList(values)
    if vr in _RANGE_VRS and "-" in text:
        if text.count("-") != 1:
            raise InvalidIdentifier(f"malformed range {text!r}")
        lower, upper = (part.strip() for part in text.split("-"))
        if not lower and not upper:
            return Universal()
        return Range(lower or None, upper or None)
    if "\\" in text:
        values = tuple(v for v in text.split("\\") if v)
        return Single(values[0]) if len(values) == 1 else ValueList(values)
    if vr in _WILDCARD_VRS and ("*" in text or "?" in text):
        return Wildcard(text)
    return Single(text)


def query_from_identifier(identifier: Dataset, level: Level | str) -> Query:
    """Build a :class:`Query` from a C-FIND request identifier.

    Every element of the identifier except Query/Retrieve Level and Specific
    Character Set is a return key; the non-empty ones are also conditions.
    """
    level = Level.parse(level)
    conditions: list[Condition] = []
    return_keys: list[str] = []
    for elem in identifier:
        if elem.tag.group == 0x0008 and elem.tag.element in (0x0005, 0x0052):
            continue
        if elem.tag.is_private or not elem.keyword:
            continue
        return_keys.append(elem.keyword)
        matcher = _matcher_for_element(elem.VR, elem.value)
        if not isinstance(matcher, Universal):
            conditions.append(Condition(elem.keyword, elem.VR, matcher))
    return Query(level=level, conditions=tuple(conditions), return_keys=tuple(return_keys))


def _matcher_for_element(vr: str, value: object) -> Matcher:
    if vr == "SQ":
        seq = value if isinstance(value, Sequence) else None
        if not seq or len(seq) == 0:
            return Universal()
        item = seq[0]
        conds = []
        for sub in item:
            if not sub.keyword or sub.VR == "SQ":
                continue  # one level of sequence matching only
            matcher = parse_matcher(sub.VR, sub.value)
            if not isinstance(matcher, Universal):
                conds.append(Condition(sub.keyword, sub.VR, matcher))
        return SequenceMatch(tuple(conds)) if conds else Universal()
    return parse_matcher(vr, value)


# ---------------------------------------------------------------- in Python


def _wildcard_match(pattern: str, value: str) -> bool:
    # Iterative glob with only * and ?, no character classes (C.2.2.2.4).
    p = v = 0
    star = -1
    mark = 0
    while v < len(value):
        if p < len(pattern) and (pattern[p] == "?" or pattern[p] == value[v]):
            p += 1
            v += 1
        elif p < len(pattern) and pattern[p] == "*":
            star = p
            mark = v
            p += 1
        elif star != -1:
            p = star + 1
            mark += 1
            v = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def _as_values(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    text = str(value)
    return text.split("\\") if text else []


def matches(condition: Condition, value: object, items: Iterable[dict[str, object]] = ()) -> bool:
    """Apply ``condition`` to an attribute value held outside the indexed columns.

    ``value`` is the attribute's value (a string, list of strings or number);
    for a :class:`SequenceMatch`, ``items`` are the sequence items as mappings
    from keyword to value. An attribute without a value matches only universal
    matching (C.2.2.2: "an entity with no value does not match").
    """
    m = condition.matcher
    if isinstance(m, Universal):
        return True
    if isinstance(m, SequenceMatch):
        return any(all(matches(c, item.get(c.keyword)) for c in m.conditions) for item in items)
    values = _as_values(value)
    if not values:
        return False
    fold = condition.vr == "PN"
    if fold:
        values = [v.upper() for v in values]
    if isinstance(m, Single):
        target = m.value.upper() if fold else m.value
        return target in values
    if isinstance(m, (UidList, ValueList)):
        targets = {t.upper() if fold else t for t in m.values}
        return any(v in targets for v in values)
    if isinstance(m, Wildcard):
        pattern = m.pattern.upper() if fold else m.pattern
        return any(_wildcard_match(pattern, v) for v in values)
    if isinstance(m, Range):
        lower, upper = range_bounds(condition.vr, m)
        return any((lower is None or v >= lower) and (upper is None or v <= upper) for v in values)
    return False  # pragma: no cover


def range_bounds(vr: str, m: Range) -> tuple[str | None, str | None]:
    """Normalise range bounds so that string comparison of stored values is right.

    Times are compared as text, so an upper bound like ``1200`` must include
    ``120059.999``: pad upper TM bounds with the latest value of the missing
    components, and strip separators that old-style values may carry.
    """
    lower = m.lower.replace(":", "").replace(".", "", 0) if m.lower else None
    upper = m.upper.replace(":", "") if m.upper else None
    if vr == "TM" and upper is not None:
        digits = upper.split(".")[0]
        if len(digits) < 6:
            upper = digits + "595959"[len(digits) :] + ".999999"
        elif "." not in upper:
            upper = upper + ".999999"
    if vr == "DA" and lower is not None:
        lower = lower.replace(".", "")
    if vr == "DA" and upper is not None:
        upper = upper.replace(".", "")
    if vr == "DT" and upper is not None and len(upper) < 26:
        upper = upper + "\uffff"
    return lower, upper
