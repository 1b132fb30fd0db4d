"""One DIMSE association as the operator statistics see it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AssociationRecord"]


@dataclass(slots=True)
class AssociationRecord:
    """One association as the worker saw it."""

    calling_ae_title: str
    called_ae_title: str
    peer_host: str
    started_at: dt.datetime
    outcome: str = "released"
    reason: str | None = None
    seconds: float = 0.0
    accepted_contexts: int = 0
    rejected_contexts: int = 0
    contexts: list[Any] | None = None
    # "store:success" -> count, "find:failure" -> count, ...
    operations: dict[str, int] = field(default_factory=dict)
    bytes_received: int = 0
