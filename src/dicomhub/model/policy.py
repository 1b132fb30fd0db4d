"""Store policies: duplicates, compression at rest, and the decode check."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "CompressionRule",
    "DecodeCheckMode",
    "DuplicatePolicy",
    "ValidationPolicy",
    "parse_compression_rule",
]


class DuplicatePolicy(enum.Enum):
    """What to do with a second object under an already held SOP Instance UID."""

    KEEP = "keep"  # same content: success; other content: refused, quarantined
    OVERWRITE = "overwrite"  # the new copy replaces the old
    REJECT = "reject"  # any second copy is refused


class DecodeCheckMode(enum.Enum):
    """Which newly stored objects have their pixel data decoded once, after ingest."""

    OFF = "off"
    # The first object of every (transfer syntax, SOP class) pair until one decodes:
    # a syntax this install cannot read shows up at its first object.
    SAMPLE = "sample"
    ALWAYS = "always"


@dataclass(frozen=True, slots=True)
class CompressionRule:
    """Store objects that match ``key`` in ``transfer_syntax`` (as configured).

    ``key`` is a Modality (``CT``), a SOP Class UID, or ``*`` for every
    object; ``transfer_syntax`` is a codec name or UID, resolved by the
    codec layer when the settings are validated.
    """

    key: str
    transfer_syntax: str

    def matches(self, modality: str | None, sop_class_uid: str) -> bool:
        if self.key == "*":
            return True
        if self.key[:1].isdigit():
            return self.key == sop_class_uid
        return self.key.upper() == (modality or "").upper()

    def __str__(self) -> str:
        return f"{self.key}={self.transfer_syntax}"


def parse_compression_rule(text: str) -> CompressionRule:
    """Parse ``KEY=SYNTAX`` (``CT=jpeg-ls-lossless``, ``*=1.2.840.10008.1.2.4.90``).

    Raises
    ------
    ValueError
        When the text is not of that form.
    """
    key, sep, syntax = text.partition("=")
    key, syntax = key.strip(), syntax.strip()
    if not sep or not key or not syntax:
        raise ValueError(f"compression rule {text!r} is not of the form KEY=SYNTAX")
    return CompressionRule(key, syntax)


class ValidationPolicy(enum.Enum):
    """What the store path does with an object that fails its IOD check."""

    RECORD = "record"  # accept; the background check records the findings
    WARN = "warn"  # accept with a warning status; findings recorded at once
    REJECT = "reject"  # refuse objects with error findings
