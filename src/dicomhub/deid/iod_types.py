"""The Type (1, 2, 3) of an attribute in an object's IOD, for the combined actions of Table E.1-1.

PS3.15 E.1.1 defines X/Z, X/D, X/Z/D, Z/D and X/Z/U* by the attribute's Type in
the IOD: remove a Type 3 attribute, empty a Type 2 one, give a Type 1 one a
dummy value (or replaced UIDs). The PS3.3 module tables that say which is which
come with highdicom (a dependency of dicomhub) as JSON derived from the
standard; they are read as data, without importing highdicom. Where they are
missing, or the SOP class is unknown, :func:`attribute_types` returns None and
the engine falls back to the alternative valid for any Type.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

__all__ = ["KeywordPath", "attribute_types", "resolve_by_type"]

KeywordPath = tuple[str, ...]  # sequence keywords from the top, then the attribute's keyword
_STRICTNESS = {"1": 0, "1C": 1, "2": 2, "2C": 3, "3": 4}


@cache
def _standard_dir() -> Path | None:
    spec = importlib.util.find_spec("highdicom")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "_standard"
        if (candidate / "module_attribute_map.json").is_file():
            return candidate
    return None


@cache
def _tables() -> tuple[dict[str, str], dict[str, list[Any]], dict[str, list[Any]]] | None:
    root = _standard_dir()
    if root is None:
        return None
    try:
        sop_iod = json.loads((root / "sop_class_iod_map.json").read_text(encoding="utf-8"))
        iod_modules = json.loads((root / "iod_module_map.json").read_text(encoding="utf-8"))
        module_attributes = json.loads((root / "module_attribute_map.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return sop_iod, iod_modules, module_attributes


@lru_cache(maxsize=256)
def attribute_types(sop_class_uid: str) -> Mapping[KeywordPath, str] | None:
    """Keyword path -> the strictest Type the attribute has in any module of the IOD."""
    tables = _tables()
    if tables is None:
        return None
    sop_iod, iod_modules, module_attributes = tables
    iod = sop_iod.get(sop_class_uid)
    if iod is None or iod not in iod_modules:
        return None
    types: dict[KeywordPath, str] = {}
    try:
        for module in iod_modules[iod]:
            for attribute in module_attributes.get(module["key"], []):
                key = (*attribute["path"], attribute["keyword"])
                kind = str(attribute["type"])
                old = types.get(key)
                if old is None or _STRICTNESS.get(kind, 4) < _STRICTNESS.get(old, 4):
                    types[key] = kind
    except (KeyError, TypeError):  # another layout of highdicom's tables: as if unknown
        return None
    return types


def resolve_by_type(combined: str, attribute_type: str | None) -> str:
    """The alternative of a combined action that the attribute's Type calls for.

    ``attribute_type`` None: the attribute is not part of the IOD at that place,
    so nothing requires it and it is removed (X), or emptied for Z/D.
    """
    level = attribute_type.rstrip("C") if attribute_type else "3"
    if combined == "Z/D":
        return "D" if level == "1" else "Z"
    if combined == "X/Z":
        return "X" if level == "3" else "Z"
    if combined == "X/D":
        return "X" if level == "3" else "D"
    if combined == "X/Z/D":
        return {"1": "D", "2": "Z"}.get(level, "X")
    if combined == "X/Z/U*":
        return {"1": "U", "2": "Z"}.get(level, "X")
    return combined
