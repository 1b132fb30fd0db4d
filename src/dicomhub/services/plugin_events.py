"""Change log events to the plugins' event hooks (``stored``, ``stable_study``), at least once.

Like the webhooks (:mod:`dicomhub.services.webhooks`), each follower (one per plugin
with an event hook) has its own cursor in the change log, starting at the newest
entry when the follower is new. An entry is handed to the follower's handler; the
cursor moves past it only once the handler returned, so a crash or a failure repeats
it (at least once). A handler that raises is logged and retried after a backoff
(1 s, 2 s, 4 s ... 5 min) while that follower's later entries wait; after
``max_attempts`` the entry is given up (logged) and the next one goes. One follower's
failures never hold up another's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from dicomhub.model.webhooks import backoff, event_of
from dicomhub.services.background import run_until_stopped
from dicomhub.services.changes import ChangeLog

__all__ = ["EventFollower", "PluginEventService"]

LOGGER = logging.getLogger("dicomhub.plugins")


@dataclass(frozen=True, slots=True)
class EventFollower:
    """A handler of change log events: ``handle(event, entry)`` for each event in ``events``."""

    name: str  # its cursor's name
    events: frozenset[str]
    handle: Callable[[str, Mapping[str, Any]], None]
    max_attempts: int = 10


@dataclass
class _Retry:
    attempts: int = 0
    not_before: float = 0.0


class PluginEventService:
    """Hands the change log's events to each follower, in order, at least once."""

    def __init__(
        self,
        followers: Sequence[EventFollower],
        log: ChangeLog,
        position: Callable[[str], int],
        move: Callable[[str, int], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        claim: Callable[[str], AbstractContextManager[bool]] | None = None,
    ) -> None:
        """
        Parameters
        ----------
        position : callable
            The follower's cursor (the newest entry for a new follower, written so).
        move : callable
            Sets the follower's cursor, durably.
        """
        self.followers = tuple(followers)
        self._log = log
        self._position = position
        self._move = move
        self._clock = clock
        self._claim = claim
        self._retry = {f.name: _Retry() for f in self.followers}

    def begin(self) -> None:
        """Give each new follower its place at the newest entry (``serve``, before anything is stored)."""
        for follower in self.followers:
            self._position(follower.name)

    def step(self) -> int:
        """One turn over every follower; how many entries were finished."""
        return sum(self._advance(f) for f in self.followers)

    def _advance(self, follower: EventFollower) -> int:
        retry = self._retry[follower.name]
        if self._clock() < retry.not_before:
            return 0
        finished = 0
        position = self._position(follower.name)
        for row in self._log.changes(position, 100):
            seq = int(row["seq"])
            event = event_of(str(row["change_type"]), str(row["level"]))
            if event is not None and event in follower.events:
                try:
                    follower.handle(event, row)
                except Exception as exc:
                    retry.attempts += 1
                    if retry.attempts < follower.max_attempts:
                        wait = backoff(retry.attempts)
                        retry.not_before = self._clock() + wait
                        LOGGER.warning("%s: %s of %s failed (attempt %d of %d): %s: %s; retrying in %g s",
                                       follower.name, event, row["uid"], retry.attempts,
                                       follower.max_attempts, type(exc).__name__, exc, wait)  # fmt: skip
                        break
                    LOGGER.error("%s gave up %s of %s after %d attempts: %s: %s", follower.name, event,
                                 row["uid"], retry.attempts, type(exc).__name__, exc)  # fmt: skip
                retry.attempts = 0
            position = seq
            finished += 1
        if finished:
            self._move(follower.name, position)
        return finished

    def run_worker(self, stop: threading.Event) -> None:
        """Follow the change log until ``stop`` (nothing to do without followers)."""
        if not self.followers:
            return
        claim = self._claim
        run_until_stopped(
            stop,
            self.step,
            "plugin events",
            LOGGER,
            idle=0.5,
            claim=(lambda: claim("plugin-events")) if claim is not None else None,
        )
