"""What the index stores about one instance, level by level."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["InstanceHeader", "InstanceRow"]


@dataclass(frozen=True, slots=True)
class InstanceRow:
    """An indexed instance as retrieval and duplicate checks need it."""

    pk: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    sha256: str
    content_sha256: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""


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
