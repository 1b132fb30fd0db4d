"""Who asks: the identity every query, retrieve and store path carries.

A caller is built by the adapter that received the request (the DIMSE
association, the HTTP request, the CLI) once it has authenticated it; its
``access`` is what the services consult. With access control off (the
loopback default) every caller holds :attr:`Access.UNRESTRICTED`.
"""

from __future__ import annotations

import enum
import getpass
from dataclasses import dataclass, field

from dicomhub.model.access import Access

__all__ = ["Caller", "Channel"]


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (containers)
        return "cli"


class Channel(enum.Enum):
    DIMSE = "dimse"
    HTTP = "http"
    CLI = "cli"
    HL7 = "hl7"  # an HL7 v2 message over MLLP (name: the sending application)
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class Caller:
    """The origin of a request: channel, name (calling AE title or user), address,
    the authenticated principal (None when access control is off) and its grants."""

    channel: Channel
    name: str = ""
    address: str = ""
    principal: str | None = None
    access: Access = field(default=Access.UNRESTRICTED)

    @classmethod
    def cli(cls) -> Caller:
        """The operator at the command line, named by the login of the process: the CLI
        works on the data dir or database directly, so the OS account is who it is."""
        return cls(Channel.CLI, _login())

    @property
    def ae_title(self) -> str | None:
        return self.name if self.channel is Channel.DIMSE else None

    @property
    def who(self) -> str:
        """The name the audit log records: the principal, else the AE title or user."""
        return self.principal or self.name or "anonymous"
