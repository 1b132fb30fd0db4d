"""Retention: which studies leave the archive when they are old enough, and durations.

A retention rule is a ``[[retention]]`` table of the configuration file::

    [[retention]]
    name = "old-mr"            # letters, digits, . _ - (at most 32)
    older_than = "5y"          # a duration: seconds, or a number with s, m, h, d, w or y
    by = "study_date"          # or "received": the last time an instance arrived
    modality = "MR"            # optional: studies with a series of this modality
    label = "research"         # optional: studies carrying this label
    source = "OLD_CT"          # optional: studies with an instance sent by this AE title
    action = "delete"          # or "reject": an IOCM rejection (113039, see below)

The conditions of one rule all have to hold. A study's age ``by = "study_date"`` is
counted from its Study Date (a study without a valid one, YYYYMMDD, is never old by
it); ``by = "received"`` from the last time an instance of it was received, so a
study still receiving instances is never taken. What a rule deletes goes to the
trash like any delete (for ``trash_keep``), where it can be restored. A ``reject``
rule stores a rejection note (IHE IOCM) with the title (113039, DCM, "Data Retention
Policy Expired", CID 7011) for the study instead: its instances are hidden from
queries and retrievals like every rejected instance, then deleted, as a note of that
title received from a modality would have them; a study already rejected is not
taken again.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from dicomhub.errors import ConfigurationError
from dicomhub.model.tables import named_tables

__all__ = [
    "Duration",
    "RetentionAction",
    "RetentionBasis",
    "RetentionRule",
    "parse_duration",
    "parse_retention_rules",
]

# Seconds per unit; a year is 365 days (a retention period, not a calendar computation).
_UNITS: Final[dict[str, int]] = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdwy]?)\s*$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
_FIELDS: Final = {"name", "older_than", "by", "modality", "label", "source", "action"}
_DATE = re.compile(r"^\d{8}$")


class Duration(float):
    """A number of seconds, written in the configuration as seconds or with a unit."""

    def __str__(self) -> str:
        seconds = float(self)
        for unit in ("y", "d", "h", "m"):  # days rather than weeks: "7d" reads as the week it is
            size = _UNITS[unit]
            if seconds >= size and seconds % size == 0:
                return f"{int(seconds // size)}{unit}"
        return f"{int(seconds)}s" if seconds.is_integer() else f"{seconds:g}s"


def parse_duration(value: Any) -> Duration:
    """``value`` (a number of seconds, or text such as ``90``, ``30m``, ``12h``, ``7d``,
    ``2w``, ``5y``) as a :class:`Duration`.

    Raises
    ------
    ConfigurationError
        For anything else, a negative number included.
    """
    if isinstance(value, Duration):
        return value
    if isinstance(value, bool):
        raise ConfigurationError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if not value >= 0:  # also refuses NaN
            raise ConfigurationError(f"{value!r} is not a duration (seconds from 0)")
        return Duration(value)
    found = _DURATION.match(value) if isinstance(value, str) else None
    if found is None:
        raise ConfigurationError(
            f"{value!r} is not a duration: seconds, or a number with s, m, h, d, w or y (7d)"
        )
    return Duration(float(found.group(1)) * _UNITS[found.group(2) or "s"])


class RetentionBasis(enum.Enum):
    """What a study's age is counted from."""

    STUDY_DATE = "study_date"
    RECEIVED = "received"


class RetentionAction(enum.Enum):
    """What happens to a study a rule takes: ``delete`` moves it to the trash,
    ``reject`` rejects it for an expired retention period (IOCM)."""

    DELETE = "delete"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """One ``[[retention]]`` table (see the module docstring)."""

    name: str
    older_than: Duration
    by: RetentionBasis = RetentionBasis.STUDY_DATE
    modality: str | None = None
    label: str | None = None
    source: str | None = None
    action: RetentionAction = RetentionAction.DELETE

    def cutoff(self, now: dt.datetime) -> dt.datetime:
        """Studies whose age is counted from before this instant are old enough."""
        return now - dt.timedelta(seconds=float(self.older_than))

    def study_date_cutoff(self, now: dt.datetime) -> str:
        """The Study Date (YYYYMMDD) a study must be before, by :meth:`cutoff`'s day."""
        return self.cutoff(now).strftime("%Y%m%d")

    def old_by_study_date(self, study_date: str | None, now: dt.datetime) -> bool:
        """Whether a Study Date is a valid date before the cutoff day."""
        return bool(study_date and _DATE.match(study_date)) and str(study_date) < self.study_date_cutoff(now)

    def __str__(self) -> str:
        parts = [f"older than {self.older_than} by {self.by.value}"]
        parts += [f"{k} {v}" for k, v in (("modality", self.modality), ("label", self.label),
                                           ("source", self.source)) if v]  # fmt: skip
        return f"{self.name}: {self.action.value} " + ", ".join(parts)


def _optional(table: Mapping[str, Any], key: str, where: str, most: int) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value.strip()) <= most or "\\" in value:
        raise ConfigurationError(f"{where}: {key} must be a text of 1 to {most} characters")
    return value.strip()


def _rule(table: Mapping[str, Any], where: str) -> RetentionRule:
    unknown = set(table) - _FIELDS
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(_FIELDS))})"
        )
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(f"{where}: name must be 1 to 32 letters, digits, '.', '_' or '-'")
    if "older_than" not in table:
        raise ConfigurationError(f"{where}: older_than is required (a duration such as 365d or 5y)")
    try:
        older_than = parse_duration(table["older_than"])
        by = RetentionBasis(table.get("by", RetentionBasis.STUDY_DATE.value))
        action = RetentionAction(table.get("action", RetentionAction.DELETE.value))
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: older_than: {exc}") from None
    except ValueError:
        raise ConfigurationError(
            f"{where}: by must be study_date or received, and action delete or reject"
        ) from None
    if older_than <= 0:
        raise ConfigurationError(f"{where}: older_than must be more than 0")
    return RetentionRule(
        name,
        older_than,
        by,
        _optional(table, "modality", where, 16),
        _optional(table, "label", where, 64),
        _optional(table, "source", where, 16),
        action,
    )


def parse_retention_rules(value: Any) -> tuple[RetentionRule, ...]:
    """The ``[[retention]]`` tables of a configuration file, checked (names unique).

    Raises
    ------
    ConfigurationError
        Naming the table and the key that is wrong.
    """
    return named_tables(value, RetentionRule, _rule, "retention", "retention rules")
