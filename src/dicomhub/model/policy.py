"""Store policies: what the archive does with a second copy of an instance."""

from __future__ import annotations

import enum

__all__ = ["DuplicatePolicy"]


class DuplicatePolicy(enum.Enum):
    """What to do with a second object under an already held SOP Instance UID."""

    KEEP = "keep"  # same content: success; other content: refused, quarantined
    OVERWRITE = "overwrite"  # the new copy replaces the old
    REJECT = "reject"  # any second copy is refused
