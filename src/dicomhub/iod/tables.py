"""The standard's IOD tables, compacted to what the validator checks.

Three sources, all read once per process and only when first needed:

* highdicom's copies of the innolitics/dicom-standard tables
  (``highdicom/_standard/*.json``, read as package data through
  :mod:`importlib.resources`, never through highdicom's Python code):
  SOP Class UID -> IOD, IOD -> modules with their usage (M/C/U), and
  module -> attributes with their type (1, 1C, 2, 2C, 3) and the path of
  sequences they sit in;
* ``dicomhub/iod/data/names.json``: IOD, module and SOP class names taken
  from the same project's ``ciods.json``, ``modules.json`` and ``sops.json``
  (MIT licence, ``data/LICENSE.txt``), for messages;
* pydicom's data dictionary for keyword -> tag.

The module table is 22 MB of JSON (about 90 MB of Python objects when loaded
whole). It is parsed with an ``object_hook`` that turns each attribute entry
into a small tuple as soon as it is read, and drops the entries no check uses
(Type 3, Type 1C/2C except the few conditions the validator evaluates), so
the full object graph never exists. What stays is one tree of requirements per
module (shared by every IOD that uses the module) and, per SOP class asked
for, an :class:`IodTable` built from those trees on first use.

References
----------
PS3.3 Annex A (IODs), Annex C (modules), PS3.4 Annex B (SOP classes);
https://github.com/innolitics/dicom-standard.
"""

from __future__ import annotations

import functools
import json
import sys
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any

from pydicom.datadict import tag_for_keyword

__all__ = [
    "CONDITIONAL_CHECKED",
    "IodTable",
    "ModuleTable",
    "Requirement",
    "iod_for_sop_class",
    "module_name",
    "sop_class_name",
]

# Type 1C/2C attributes whose condition is simple and well known; the
# validator evaluates these (``validate._CONDITIONS``). Every other
# conditional attribute is skipped: its condition is free text.
CONDITIONAL_CHECKED: frozenset[tuple[str, str]] = frozenset(
    {
        ("image-pixel", "PlanarConfiguration"),  # required if Samples per Pixel > 1
        ("image-pixel", "PixelData"),  # required if Pixel Data Provider URL is absent
        ("voi-lut", "WindowWidth"),  # required if Window Center is present
    }
)

_REQUIRED_TYPES = frozenset({"1", "2"})
_CONTENT_ITEM_KEPT = frozenset({"ValueType", "RelationshipType"})


@dataclass(frozen=True, slots=True)
class Requirement:
    """An attribute of a module, with the requirements nested in its items.

    ``type`` is the attribute's own type ("1", "2", "1C", "2C" or "3"); a
    Type 3 (or conditional) sequence is kept only for the Type 1/2 attributes
    of its items, which apply when the sequence is present.
    """

    keyword: str
    tag: int
    type: str
    children: tuple[Requirement, ...] = ()

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
class _Standard:
    sop_to_iod: dict[str, str]
    iod_modules: dict[str, tuple[tuple[str, str], ...]]  # IOD -> ((module, usage), ...)
    modules: dict[str, _Module]
    iod_names: dict[str, str]
    module_names: dict[str, str]
    sop_names: dict[str, str]


_STANDARD: _Standard | None = None


@dataclass(frozen=True, slots=True)
class _Module:
    attributes: tuple[Requirement, ...]  # Type 1/2 and checked conditional ones, as trees
    keywords: frozenset[int]  # tags of every top-level attribute, whatever its type


def _standard() -> _Standard:
    global _STANDARD
    if _STANDARD is None:
        with _LOCK:
            if _STANDARD is None:
                _STANDARD = _load()
    return _STANDARD


def _read(package: str, name: str) -> bytes:
    return (resources.files(package) / name).read_bytes()


def _load() -> _Standard:
    sop_to_iod = {
        str(k): str(v) for k, v in json.loads(_read("highdicom", "_standard/sop_class_iod_map.json")).items()
    }
    iod_modules = {
        str(iod): tuple((sys.intern(m["key"]), str(m["usage"])) for m in mods)
        for iod, mods in json.loads(_read("highdicom", "_standard/iod_module_map.json")).items()
    }
    modules = _load_modules(_read("highdicom", "_standard/module_attribute_map.json"))
    names = json.loads(_read("dicomhub.iod", "data/names.json"))
    return _Standard(
        sop_to_iod=sop_to_iod,
        iod_modules=iod_modules,
        modules=modules,
        iod_names=names["iods"],
        module_names=names["modules"],
        sop_names=names["sop_classes"],
    )


# An attribute entry once read: (path, keyword, type); None when no check uses it.
_Entry = tuple[tuple[str, ...], str, str]


def _load_modules(raw: bytes) -> dict[str, _Module]:
    paths: dict[tuple[str, ...], tuple[str, ...]] = {}

    def hook(obj: dict[str, Any]) -> Any:
        keyword = obj.get("keyword")
        if keyword is None or "path" not in obj:
            return obj  # the top-level mapping
        kind = str(obj.get("type"))
        path = tuple(sys.intern(p) for p in obj["path"])
        # Keep Type 1/2 entries, every top-level keyword (module presence is
        # told by attributes no other module has, of any type) and the
        # conditional ones some check evaluates (the module is not known
        # here: the tree builder filters by module).
        if kind in _REQUIRED_TYPES or not path:
            return (paths.setdefault(path, path), sys.intern(keyword), sys.intern(kind))
        return None

    data = json.loads(raw, object_hook=hook)
    del raw
    return {
        sys.intern(key): _module(key, [e for e in entries if e is not None]) for key, entries in data.items()
    }


def _module(key: str, entries: list[_Entry]) -> _Module:
    top = frozenset(
        t for path, keyword, _kind in entries if not path and (t := tag_for_keyword(keyword)) is not None
    )
    return _Module(_tree(key, entries), top)


def _tree(module: str, entries: list[_Entry]) -> tuple[Requirement, ...]:
    """Nest the flat (path, keyword, type) entries of a module into requirement trees."""
    # node: keyword -> [type, children]; a sequence only seen as a path gets type "3".
    root: dict[str, list[Any]] = {}
    for path, keyword, kind in entries:
        if kind not in _REQUIRED_TYPES and (path or (module, keyword) not in CONDITIONAL_CHECKED):
            continue
        level = root
        for parent in path:
            node = level.setdefault(parent, ["3", {}])
            level = node[1]
        node = level.setdefault(keyword, [kind, {}])
        node[0] = kind
    return _freeze(root)


def _freeze(level: dict[str, list[Any]]) -> tuple[Requirement, ...]:
    out = []
    content_item = "ValueType" in level
    for keyword, (kind, children) in level.items():
        if content_item and keyword not in _CONTENT_ITEM_KEPT and kind in _REQUIRED_TYPES:
            # A content item (SR, acquisition context, ...): the tables list the
            # attributes of every value type's macro as if all were required;
            # which apply depends on Value Type, so only these two are checked.
            kind = "3"
            if not children:
                continue
        tag = tag_for_keyword(keyword)
        if tag is None:  # newer than pydicom's dictionary: cannot be looked up
            continue
        out.append(Requirement(keyword, int(tag), kind, _freeze(children)))
    return tuple(out)


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
