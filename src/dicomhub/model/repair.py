"""An instance as repair from a peer sees it: where it is, and what a copy is verified against."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RepairTarget"]


@dataclass(frozen=True, slots=True)
class RepairTarget:
    """An indexed instance with what a copy of it is verified against."""

    pk: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    sha256: str  # of the stored blob ('' when STOW-RS left it for later)
    content_sha256: str  # of the data set as received ('' pending, 'unreadable')
    study_instance_uid: str
    series_instance_uid: str
    source_ae_title: str | None
    original_transfer_syntax_uid: str | None  # set when compressed at rest
    original_sha256: str | None
