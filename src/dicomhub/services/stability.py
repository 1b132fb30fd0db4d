"""Stable studies and series: the background job that announces them.

A study (or series) is stable once ``stable_age`` seconds have passed without an
instance stored into it: the moment a router forwards a whole study, a webhook says
"study complete", an AI node starts. The announcement is a ``stable`` entry in the
change log (see :mod:`dicomhub.index.stability`), so it reaches every follower of the
change feed, on every node. With several nodes the job runs on the one holding its
claim; a store into an announced study makes it unstable again, and it is announced
again once it has been quiet for ``stable_age`` once more.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from dicomhub.model.timestamps import utc_now
from dicomhub.services.background import run_until_stopped

__all__ = ["StabilityService"]

LOGGER = logging.getLogger("dicomhub.stability")


class Announcer(Protocol):
    """What the job needs of the index (:class:`~dicomhub.index.stability.StabilityRepository`)."""

    def announce(self, cutoff: dt.datetime, now: dt.datetime, limit: int = 500) -> list[tuple[str, str]]: ...


class StabilityService:
    """Announces the studies and series that have been quiet for ``stable_age`` seconds."""

    def __init__(
        self,
        repository: Announcer,
        stable_age: float,
        claim: Callable[[str], AbstractContextManager[bool]] | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._repository = repository
        self.stable_age = stable_age
        self._claim = claim
        self._clock = clock

    def step(self) -> int:
        """Announce what is stable now (at most 500 of each level); how many were."""
        now = self._clock()
        announced = self._repository.announce(now - dt.timedelta(seconds=self.stable_age), now)
        for level, uid in announced:
            LOGGER.info("%s %s is stable (no new instance for %g s)", level.lower(), uid, self.stable_age)
        return len(announced)

    def run_worker(self, stop: threading.Event) -> None:
        """Announce until ``stop``; looks about four times per ``stable_age`` (at most every 2 s)."""
        claim = self._claim
        run_until_stopped(
            stop,
            self.step,
            "stable study detection",
            LOGGER,
            idle=min(2.0, max(0.25, self.stable_age / 4)),
            claim=(lambda: claim("stable-study-detection")) if claim is not None else None,
        )
