"""Storage Commitment Push Model (PS3.4 Annex J): the request and the result, as values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "NO_SUCH_OBJECT_INSTANCE",
    "PROCESSING_FAILURE",
    "CLASS_INSTANCE_CONFLICT",
    "STORAGE_COMMITMENT_PUSH_MODEL",
    "STORAGE_COMMITMENT_INSTANCE",
    "CommitmentItem",
    "CommitmentRequest",
    "CommitmentResult",
]

#: Storage Commitment Push Model SOP Class and its well-known SOP Instance (PS3.4 J.3).
STORAGE_COMMITMENT_PUSH_MODEL: Final = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE: Final = "1.2.840.10008.1.20.1.1"

# Failure Reason (0008,1197) values, PS3.4 J.3.3.1.1.2.
PROCESSING_FAILURE: Final = 0x0110
NO_SUCH_OBJECT_INSTANCE: Final = 0x0112
CLASS_INSTANCE_CONFLICT: Final = 0x0119
REFERENCED_SOP_CLASS_NOT_SUPPORTED: Final = 0x0122


@dataclass(frozen=True, slots=True)
class CommitmentItem:
    """One Referenced SOP Sequence item: what the requestor wants committed."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class CommitmentRequest:
    """An N-ACTION-RQ (Request Storage Commitment) as received."""

    transaction_uid: str
    items: tuple[CommitmentItem, ...]
    calling_ae_title: str
    peer_host: str = ""


@dataclass(frozen=True, slots=True)
class CommitmentResult:
    """What the N-EVENT-REPORT says: committed items, and failed ones with their reason."""

    transaction_uid: str
    successes: tuple[CommitmentItem, ...] = ()
    failures: tuple[tuple[CommitmentItem, int], ...] = field(default=())

    @property
    def event_type_id(self) -> int:
        """1: Storage Commitment Request Successful; 2: Complete, Failures Exist."""
        return 2 if self.failures else 1
