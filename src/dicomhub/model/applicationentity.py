"""Registered application entities: the DIMSE peers the archive knows by name.

An application entity is registered with the host (name or address) it
connects from, the port it listens on when it is also a C-MOVE destination or
a Storage Commitment report receiver, the principal whose grants it acts
with, and, for DICOM TLS, the Common Name its client certificate must carry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

__all__ = ["ApplicationEntity", "check_ae_title"]

# PS3.5 6.2 AE: 16 characters of the default repertoire, no backslash or control
# characters; leading and trailing spaces are not significant.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def check_ae_title(title: str) -> str:
    """``title`` stripped, or ValueError when it is not a valid AE title."""
    stripped = title.strip()
    if not stripped or not _AE_TITLE.match(stripped):
        raise ValueError(f"AE title {title!r}: 1-16 characters, no backslash or control characters")
    return stripped


@dataclass(frozen=True, slots=True)
class ApplicationEntity:
    ae_title: str
    host: str
    port: int | None = None  # None: it only calls us
    principal: str = ""  # "" : the AE title itself
    tls_subject: str = ""  # the client certificate's subject Common Name, when required
    description: str = ""
    created_at: datetime | None = None

    @property
    def principal_name(self) -> str:
        return self.principal or self.ae_title
