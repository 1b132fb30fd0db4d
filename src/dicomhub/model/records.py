"""What the index stores about one instance, level by level."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["InstanceHeader"]


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """The indexed values of one instance, split by level.

    Each mapping goes from the column names of :mod:`dicomhub.model.attributes`
    to the value read from the header (``None`` when absent).
    """

    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    transfer_syntax_uid: str
    specific_character_set: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sop_instance_uid(self) -> str:
        return str(self.instance["sop_instance_uid"])

    @property
    def sop_class_uid(self) -> str:
        return str(self.instance["sop_class_uid"])

    @property
    def study_instance_uid(self) -> str:
        return str(self.study["study_instance_uid"])

    @property
    def series_instance_uid(self) -> str:
        return str(self.series["series_instance_uid"])

    @property
    def patient_id(self) -> str:
        return str(self.patient["patient_id"])
