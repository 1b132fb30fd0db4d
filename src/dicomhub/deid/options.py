"""The options of the Basic Application Level Confidentiality Profile (PS3.15 Annex E)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from dicomhub.errors import DeidentificationError

if TYPE_CHECKING:
    from dicomhub.deid.recipe import Recipe

__all__ = ["OPTION_CODES", "OPTION_COLUMNS", "Options", "Profile"]


@dataclass(frozen=True, slots=True)
class Options:
    """Which options of Table E.1-1 apply on top of the Basic Profile (all off by default)."""

    retain_safe_private: bool = False
    retain_uids: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_patient_characteristics: bool = False
    retain_long_full_dates: bool = False
    retain_long_modified_dates: bool = False
    clean_descriptors: bool = False
    clean_structured_content: bool = False
    clean_graphics: bool = False

    def __post_init__(self) -> None:
        if self.retain_long_full_dates and self.retain_long_modified_dates:
            # PS3.15 E.3.6: the two variants of the Longitudinal Temporal option exclude each other.
            raise DeidentificationError(
                "retain-long-full-dates and retain-long-modified-dates exclude each other"
            )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option words accepted by :meth:`parse` (CLI and configuration)."""
        return tuple(f.name.replace("_", "-") for f in fields(cls))

    @classmethod
    def parse(cls, names: Iterable[str]) -> Options:
        """Options from words like ``retain-uids`` or ``clean_descriptors``."""
        known = {f.name for f in fields(cls)}
        chosen: dict[str, bool] = {}
        for raw in names:
            name = raw.strip().lower().replace("-", "_")
            if not name:
                continue
            if name not in known:
                raise DeidentificationError(
                    f"unknown de-identification option {raw!r}; known: {', '.join(cls.names())}"
                )
            chosen[name] = True
        return cls(**chosen)

    @property
    def chosen(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self) if getattr(self, f.name))


# Options field -> the column of the standard's table (JSON key) it switches on.
OPTION_COLUMNS: dict[str, str] = {
    "retain_safe_private": "rtnSafePrivOpt",
    "retain_uids": "rtnUIDsOpt",
    "retain_device_identity": "rtnDevIdOpt",
    "retain_institution_identity": "rtnInstIdOpt",
    "retain_patient_characteristics": "rtnPatCharsOpt",
    "retain_long_full_dates": "rtnLongFullDatesOpt",
    "retain_long_modified_dates": "rtnLongModifDatesOpt",
    "clean_descriptors": "cleanDescOpt",
    "clean_structured_content": "cleanStructContOpt",
    "clean_graphics": "cleanGraphOpt",
}

# Options field -> (code value, code meaning) in CID 7050 "De-identification Method" (DCM).
OPTION_CODES: dict[str, tuple[str, str]] = {
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_long_full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_long_modified_dates": (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_graphics": ("113103", "Clean Graphics Option"),
}
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")


@dataclass(frozen=True, slots=True)
class Profile:
    """What a de-identification applies: the Basic Profile, its options and a project recipe."""

    name: str = "basic"
    options: Options = Options()
    recipe: Recipe | None = None
