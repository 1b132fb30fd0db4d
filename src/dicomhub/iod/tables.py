"""The standard's IOD tables, compacted to what the validator checks.

Sources, all read once per process and only when first needed, as package data
of dicomhub (nothing is read from another package):

* ``dicomhub/iod/data/iod_tables.json.gz``, written by
  ``scripts/make_iod_tables.py`` from the innolitics/dicom-standard tables (MIT
  licence, ``data/LICENSE.txt``): SOP Class UID -> IOD, IOD -> modules with
  their usage (M/C/U), module -> attributes with their type (1, 1C, 2, 2C, 3),
  the path of sequences they sit in and, for Type 1C/2C, the sentence of the
  standard that states the condition;
* ``dicomhub/iod/data/names.json``: IOD, module and SOP class names taken
  from the same project's ``ciods.json``, ``modules.json`` and ``sops.json``,
  for messages;
* pydicom's data dictionary for keyword -> tag.

What stays in memory is one tree of requirements per module (shared by every
IOD that uses the module): Type 1/2 attributes, and Type 1C/2C attributes whose
condition :func:`dicomhub.iod.conditions.parse_condition` can evaluate (inside
a sequence item only when the condition looks at attributes of the same item);
per SOP class asked for, an :class:`IodTable` is built from those trees on
first use.

References
----------
PS3.3 Annex A (IODs), Annex C (modules), PS3.4 Annex B (SOP classes);
https://github.com/innolitics/dicom-standard.
"""

from __future__ import annotations

import functools
import gzip
import json
import sys
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any

from pydicom.datadict import tag_for_keyword

from dicomhub.iod.conditions import Condition, parse_condition

__all__ = [
    "CONDITIONAL_CHECKED",
    "ConditionCount",
    "condition_counts",
    "IodTable",
    "ModuleTable",
    "Requirement",
    "iod_for_sop_class",
    "module_name",
    "sop_class_name",
]

# Type 1C/2C attributes whose condition the validator words itself
# (``validate._CONDITIONS``): Pixel Data is read without its value, and the other
# two are the conditions the validator checked before it read the standard's text.
CONDITIONAL_CHECKED: frozenset[tuple[str, str]] = frozenset(
    {
        ("image-pixel", "PlanarConfiguration"),  # required if Samples per Pixel > 1
        ("image-pixel", "PixelData"),  # required if Pixel Data Provider URL is absent
        ("voi-lut", "WindowWidth"),  # required if Window Center is present
    }
)

_REQUIRED_TYPES = frozenset({"1", "2"})
_CONDITIONAL = frozenset({"1C", "2C"})
_CONTENT_ITEM_KEPT = frozenset({"ValueType", "RelationshipType"})


@dataclass(frozen=True, slots=True)
class Requirement:
    """An attribute of a module, with the requirements nested in its items.

    ``type`` is the attribute's own type ("1", "2", "1C", "2C" or "3"); a
    Type 3 (or conditional) sequence is kept only for the Type 1/2 (and
    evaluable 1C/2C) attributes of its items, which apply when the sequence is
    present. ``condition`` is the parsed condition of a Type 1C/2C attribute.
    """

    keyword: str
    tag: int
    type: str
    children: tuple[Requirement, ...] = ()
    condition: Condition | None = None

    @property
    def required(self) -> bool:
        return self.type in _REQUIRED_TYPES


@dataclass(frozen=True, slots=True)
class ModuleTable:
    """A module as used by one IOD."""

    key: str
    name: str
    usage: str  # "M", "C" or "U"
    attributes: tuple[Requirement, ...]
    # Top-level attributes (of any type) of this module that no other module of
    # the IOD has: the presence of any of them shows that a C or U module is there.
    markers: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class IodTable:
    """The modules of the IOD that a SOP class uses."""

    key: str
    name: str
    sop_class_uid: str
    sop_class_name: str
    modules: tuple[ModuleTable, ...]


# ------------------------------------------------------------------ loading

_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class ConditionCount:
    """How many Type 1C/2C attribute entries of the tables the validator evaluates.

    ``evaluated``: the condition parsed (or the validator words it itself);
    ``not_parsed``: the condition text is not one of the known forms, or looks
    outside the sequence item; ``no_text``: the tables give no condition text.
    """

    evaluated: int
    not_parsed: int
    no_text: int


@dataclass(frozen=True, slots=True)
class _Standard:
    sop_to_iod: dict[str, str]
    iod_modules: dict[str, tuple[tuple[str, str], ...]]  # IOD -> ((module, usage), ...)
    modules: dict[str, _Module]
    iod_names: dict[str, str]
    module_names: dict[str, str]
    sop_names: dict[str, str]
    counts: ConditionCount


_STANDARD: _Standard | None = None


@dataclass(frozen=True, slots=True)
class _Module:
    attributes: tuple[Requirement, ...]  # Type 1/2 and evaluable conditional ones, as trees
    keywords: frozenset[int]  # tags of every top-level attribute, whatever its type


def _standard() -> _Standard:
    global _STANDARD
    if _STANDARD is None:
        with _LOCK:
            if _STANDARD is None:
                _STANDARD = _load()
    return _STANDARD


def _read(name: str) -> bytes:
    return (resources.files("dicomhub.iod") / "data" / name).read_bytes()


def _load() -> _Standard:
    data = json.loads(gzip.decompress(_read("iod_tables.json.gz")))
    sop_to_iod = {str(k): str(v) for k, v in data["sop_classes"].items()}
    iod_modules = {
        str(iod): tuple((sys.intern(key), str(usage)) for key, usage in mods)
        for iod, mods in data["iods"].items()
    }
    # Each distinct sentence is parsed once; most are shared by many modules (code sequence macros).
    conditions = [parse_condition(text) for text in data["conditions"]]
    counter = _Counter()
    modules = {
        sys.intern(key): _module(key, rows, conditions, counter) for key, rows in data["modules"].items()
    }
    names = json.loads(_read("names.json"))
    return _Standard(
        sop_to_iod=sop_to_iod,
        iod_modules=iod_modules,
        modules=modules,
        iod_names=names["iods"],
        module_names=names["modules"],
        sop_names=names["sop_classes"],
        counts=ConditionCount(counter.evaluated, counter.not_parsed, counter.no_text),
    )


class _Counter:
    def __init__(self) -> None:
        self.evaluated = 0
        self.not_parsed = 0
        self.no_text = 0


# An attribute entry once read: (path, keyword, type, condition or None).
_Entry = tuple[tuple[str, ...], str, str, Condition | None]


def _module(
    key: str, rows: list[list[Any]], conditions: list[Condition | None], counter: _Counter
) -> _Module:
    paths: dict[str, tuple[str, ...]] = {}
    entries: list[tuple[tuple[str, ...], str, str, Condition | None, bool]] = []
    # Tags of every attribute at each level (path) of the module: a condition inside a
    # sequence item is evaluated on that item, so it may only look at the item's own attributes.
    level_tags: dict[tuple[str, ...], set[int]] = {}
    for raw_path, keyword, kind, index in rows:
        path = paths.get(raw_path)
        if path is None:
            path = paths[raw_path] = tuple(sys.intern(p) for p in raw_path.split("/")) if raw_path else ()
        tag = tag_for_keyword(keyword)
        if tag is not None:
            level_tags.setdefault(path, set()).add(int(tag))
        condition = conditions[index] if index >= 0 else None
        entries.append((path, sys.intern(keyword), sys.intern(kind), condition, index >= 0))
    kept: list[_Entry] = []
    for path, keyword, kind, condition, has_text in entries:
        if kind in _CONDITIONAL:
            if (key, keyword) in CONDITIONAL_CHECKED and not path:
                counter.evaluated += 1
                kept.append((path, keyword, kind, None))
                continue
            if condition is None:
                if has_text:
                    counter.not_parsed += 1
                else:
                    counter.no_text += 1
                continue
            if path and not condition.tags <= level_tags.get(path, set()):
                counter.not_parsed += 1
                continue
            counter.evaluated += 1
        kept.append((path, keyword, kind, condition))
    top = frozenset(
        t for path, keyword, *_rest in entries if not path and (t := tag_for_keyword(keyword)) is not None
    )
    return _Module(_tree(kept), top)



def _tree(entries: list[_Entry]) -> tuple[Requirement, ...]:
    """Nest the flat (path, keyword, type, condition) entries of a module into requirement trees."""
    # node: keyword -> [type, children, condition]; a sequence only seen as a path gets type "3".
    root: dict[str, list[Any]] = {}
    for path, keyword, kind, condition in entries:
        if kind not in _REQUIRED_TYPES and kind not in _CONDITIONAL:
            continue  # Type 3: nothing to check (top-level ones tell module presence: markers)
        level = root
        for parent in path:
            node = level.setdefault(parent, ["3", {}, None])
            level = node[1]
        node = level.setdefault(keyword, [kind, {}, condition])
        node[0] = kind
        node[2] = condition
    return _freeze(root)


def _freeze(level: dict[str, list[Any]]) -> tuple[Requirement, ...]:
    out = []
    content_item = "ValueType" in level
    for keyword, (kind, children, condition) in level.items():
        checked = kind in _REQUIRED_TYPES or kind in _CONDITIONAL
        if content_item and keyword not in _CONTENT_ITEM_KEPT and checked:
            # A content item (SR, acquisition context, ...): the tables list the
            # attributes of every value type's macro as if all were required;
            # which apply depends on Value Type, so only these two are checked.
            kind, condition = "3", None
            if not children:
                continue
        tag = tag_for_keyword(keyword)
        if tag is None:  # newer than pydicom's dictionary: cannot be looked up
            continue
        out.append(Requirement(keyword, int(tag), kind, _freeze(children), condition))
    return tuple(out)


def condition_counts() -> ConditionCount:
    """How many conditional attribute entries of all modules the validator evaluates."""
    return _standard().counts


# ------------------------------------------------------------------ per SOP class


@functools.lru_cache(maxsize=256)
def iod_for_sop_class(sop_class_uid: str) -> IodTable | None:
    """The IOD table of ``sop_class_uid``, or None for a SOP class without an IOD.

    Built on first use from the shared module trees and cached.
    """
    std = _standard()
    iod = std.sop_to_iod.get(sop_class_uid)
    if iod is None or iod not in std.iod_modules:
        return None
    empty = _Module((), frozenset())
    used = [(key, usage, std.modules.get(key, empty)) for key, usage in std.iod_modules[iod]]
    owners: dict[int, int] = {}
    for _key, _usage, module in used:
        for tag in module.keywords:
            owners[tag] = owners.get(tag, 0) + 1
    modules = tuple(
        ModuleTable(
            key=key,
            name=std.module_names.get(key, key),
            usage=usage,
            attributes=module.attributes,
            markers=tuple(sorted(tag for tag in module.keywords if owners.get(tag) == 1)),
        )
        for key, usage, module in used
    )
    return IodTable(
        key=iod,
        name=std.iod_names.get(iod, iod),
        sop_class_uid=sop_class_uid,
        sop_class_name=std.sop_names.get(sop_class_uid, sop_class_uid),
        modules=modules,
    )


def sop_class_name(sop_class_uid: str) -> str | None:
    """The SOP class's name in PS3.4, or None when it is not a standard one."""
    return _standard().sop_names.get(sop_class_uid)


def module_name(key: str) -> str:
    """The module's name in PS3.3 (``key`` itself when unknown)."""
    return _standard().module_names.get(key, key)
