"""A project's per-attribute overrides of the profile, read from TOML.

::

    [attributes]
    PatientSex = "keep"
    "(0010,1010)" = "remove"
    StudyDescription = { action = "replace", value = "RESEARCH" }
    OtherPatientIDs = "hash"
    AcquisitionDate = "shift-date"

Keys are data element keywords or tags ``(gggg,eeee)``; a rule applies wherever
the attribute occurs, at any sequence depth, and wins over the profile.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from dicomhub.errors import DeidentificationError

__all__ = ["RECIPE_ACTIONS", "Recipe", "RecipeRule"]

RECIPE_ACTIONS = ("keep", "remove", "replace", "hash", "shift-date")
_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")
_DATE_VRS = {"DA", "DT"}


@dataclass(frozen=True, slots=True)
class RecipeRule:
    action: str
    value: str | None = None


@dataclass(frozen=True, eq=False)
class Recipe:
    """Overrides by tag (an int ``0xggggeeee``); hashed by identity so a Profile can key a cache."""

    rules: Mapping[int, RecipeRule]
    source: str = "<recipe>"

    @classmethod
    def load(cls, path: Path | str) -> Recipe:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise DeidentificationError(f"cannot read recipe {path}: {exc.strerror}") from exc
        return cls.parse(text, source=str(path))

    @classmethod
    def parse(cls, text: str, source: str = "<recipe>") -> Recipe:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise DeidentificationError(f"recipe {source}: not valid TOML: {exc}") from exc
        unknown = set(doc) - {"attributes"}
        if unknown:
            raise DeidentificationError(
                f"recipe {source}: unknown tables {sorted(unknown)}; use [attributes]"
            )
        attributes = doc.get("attributes", {})
        if not isinstance(attributes, dict):
            raise DeidentificationError(f"recipe {source}: [attributes] must be a table")
        rules: dict[int, RecipeRule] = {}
        for key, spec in attributes.items():
            tag = _tag_of(key, source)
            rules[tag] = _rule_of(key, tag, spec, source)
        return cls(MappingProxyType(rules), source)


def _tag_of(key: str, source: str) -> int:
    m = _TAG.match(key.strip())
    if m:
        return int(m.group(1) + m.group(2), 16)
    tag = tag_for_keyword(key.strip())
    if tag is None:
        raise DeidentificationError(f"recipe {source}: {key!r} is neither a DICOM keyword nor a tag")
    return tag


def _rule_of(key: str, tag: int, spec: Any, source: str) -> RecipeRule:
    action: Any
    value: Any
    if isinstance(spec, str):
        action, value = spec, None
    elif isinstance(spec, dict):
        action, value = spec.get("action"), spec.get("value")
        extra = set(spec) - {"action", "value"}
        if extra:
            raise DeidentificationError(f"recipe {source}: {key}: unknown fields {sorted(extra)}")
    else:
        raise DeidentificationError(f"recipe {source}: {key}: expected an action word or a table")
    if action not in RECIPE_ACTIONS:
        raise DeidentificationError(
            f"recipe {source}: {key}: unknown action {action!r}; one of {', '.join(RECIPE_ACTIONS)}"
        )
    if action == "replace":
        if not isinstance(value, str):
            raise DeidentificationError(f"recipe {source}: {key}: replace needs a string value")
    elif value is not None:
        raise DeidentificationError(f"recipe {source}: {key}: only replace takes a value")
    if action == "shift-date":
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = ""
        if vr not in _DATE_VRS:
            raise DeidentificationError(f"recipe {source}: {key}: shift-date needs a DA or DT attribute")
    return RecipeRule(action, value)
