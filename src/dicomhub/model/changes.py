"""The change log as downstream systems follow it: one entry per created, updated or
deleted patient, study, series or instance, in the order the index committed them.

``seq`` is the change log's own monotonic key, so a follower that remembers the last
``seq`` it handled resumes exactly there (``since``), across restarts of either side.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

__all__ = ["Change", "ChangePage"]


@dataclass(frozen=True, slots=True)
class Change:
    """One change log entry: what happened (``change_type``) to which entity."""

    seq: int
    change_type: str  # created, updated, deleted, ...
    level: str  # PATIENT, STUDY, SERIES, IMAGE
    uid: str  # the entity's UID (the Patient ID at the patient level)
    at: dt.datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "change_type": self.change_type,
            "level": self.level,
            "uid": self.uid,
            "at": self.at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class ChangePage:
    """The changes after ``since``, at most the limit asked for.

    ``last`` is where the next request continues (``since=last``): the last change
    returned, or ``since`` itself when there was none. ``done`` says the page reached
    the newest change, as Orthanc's ``/changes`` says it.
    """

    changes: tuple[Change, ...]
    last: int
    done: bool

    def as_json(self) -> dict[str, Any]:
        return {"changes": [c.as_json() for c in self.changes], "last": self.last, "done": self.done}
