"""The Type (1, 2, 3) of an attribute in an object's IOD, for the combined actions of Table E.1-1.

PS3.15 E.1.1 defines X/Z, X/D, X/Z/D, Z/D and X/Z/U* by the attribute's Type in
the IOD: remove a Type 3 attribute, empty a Type 2 one, give a Type 1 one a
dummy value (or replaced UIDs). The PS3.3 module tables that say which is which
ship with dicomhub (``dicomhub/iod/data/iod_tables.json.gz``, written by
``scripts/make_iod_tables.py``); they are read here as package data, through
the ``dicomhub`` package rather than :mod:`dicomhub.iod`, which this layer does
not import. Where the SOP class is unknown, :func:`attribute_types` returns
None and the engine falls back to the alternative valid for any Type.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from functools import cache, lru_cache
from importlib import resources
from typing import Any

__all__ = ["KeywordPath", "attribute_types", "resolve_by_type"]

KeywordPath = tuple[str, ...]  # sequence keywords from the top, then the attribute's keyword
_STRICTNESS = {"1": 0, "1C": 1, "2": 2, "2C": 3, "3": 4}


@cache
def _tables() -> tuple[dict[str, str], dict[str, list[Any]], dict[str, list[Any]]] | None:
    """SOP class -> IOD, IOD -> [[module, usage], ...], module -> [[path, keyword, type, _], ...]."""
    source = resources.files("dicomhub") / "iod" / "data" / "iod_tables.json.gz"
    try:
        data = json.loads(gzip.decompress(source.read_bytes()))
        return data["sop_classes"], data["iods"], data["modules"]
    except (OSError, ValueError, KeyError):  # a broken installation: as if the IOD were unknown
        return None


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
        for module, _usage in iod_modules[iod]:
            for path, keyword, kind, _condition in module_attributes.get(module, []):
                key = (*path.split("/"), keyword) if path else (keyword,)
                old = types.get(key)
                if old is None or _STRICTNESS.get(kind, 4) < _STRICTNESS.get(old, 4):
                    types[key] = kind
    except (KeyError, TypeError, ValueError):  # a table of another layout: as if unknown
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
