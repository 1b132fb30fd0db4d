"""Who asks: the identity every query, retrieve and store path carries.

Today it is only recorded and logged; the access-control layer will turn it
into a predicate that the index applies inside each query.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Caller", "Channel"]


class Channel(enum.Enum):
    DIMSE = "dimse"
    HTTP = "http"
    CLI = "cli"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class Caller:
    """The origin of a request: channel, name (calling AE title or user) and address."""

    channel: Channel
    name: str = ""
    address: str = ""

    @classmethod
    def cli(cls) -> Caller:
        return cls(Channel.CLI, "cli")

    @property
    def ae_title(self) -> str | None:
        return self.name if self.channel is Channel.DIMSE else None
