"""Levels of the Patient > Study > Series > Instance hierarchy and UID checks.

References
----------
PS3.5 Section 9.1 (UID encoding rules), PS3.4 C.6 (information model levels).
"""

from __future__ import annotations

import enum
import re

from dicomhub.errors import InvalidIdentifier

__all__ = ["Level", "is_valid_uid", "require_uid"]

# PS3.5 9.1: components of digits separated by ".", no leading zero in a
# multi-digit component, at most 64 characters in all.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_UID_MAX = 64


class Level(enum.Enum):
    """A Query/Retrieve level (PS3.4 C.6), ordered from the top."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        return _DEPTH[self]

    @classmethod
    def parse(cls, value: str | Level) -> Level:
        """Normalise ``value`` (case-insensitive, ``INSTANCE`` allowed for IMAGE)."""
        if isinstance(value, Level):
            return value
        text = value.strip().upper()
        if text == "INSTANCE":
            text = "IMAGE"
        try:
            return cls(text)
        except ValueError as exc:
            raise InvalidIdentifier(f"unknown query/retrieve level {value!r}") from exc


_DEPTH = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}


def is_valid_uid(value: object) -> bool:
    """Return True when ``value`` is a syntactically valid UID (PS3.5 9.1)."""
    return isinstance(value, str) and 0 < len(value) <= _UID_MAX and bool(_UID_RE.match(value))


def require_uid(value: object, keyword: str) -> str:
    """Return ``value`` as a UID or raise :class:`InvalidIdentifier` naming ``keyword``."""
    if value is None or value == "":
        raise InvalidIdentifier(f"{keyword} is missing")
    text = str(value).rstrip("\x00 ")
    if len(text) > _UID_MAX:
        raise InvalidIdentifier(f"{keyword} is longer than {_UID_MAX} characters")
    if not _UID_RE.match(text):
        raise InvalidIdentifier(f"{keyword} is not a valid UID")
    return text
