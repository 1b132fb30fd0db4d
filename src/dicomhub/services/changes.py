"""The change feed: the index's change log, paged and waited on, for the callers
allowed to see the whole archive.

Every entry names a patient or a study that the entry itself does not tie to a
label, and a deleted entity can no longer be looked up, so a reader limited to some
studies cannot be shown a filtered feed without revealing (or guessing at) the rest:
the feed needs query rights on the whole archive, and anyone else gets
:class:`~dicomhub.services.governance.Forbidden` with that reason.

Waiting polls the index, not a process-local event: on PostgreSQL with several
nodes a change committed by any node wakes the follower of every node.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from dicomhub.model.access import Action
from dicomhub.model.caller import Caller
from dicomhub.model.changes import Change, ChangePage
from dicomhub.services.governance import Forbidden

__all__ = ["ChangeFeedService", "ChangeLog"]

MAX_LIMIT: Final = 1000
MAX_WAIT: Final = 30.0


class ChangeLog(Protocol):
    """What the feed reads from the index (:class:`~dicomhub.index.repository.IndexRepository`)."""

    def changes(self, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]: ...
    def last_change(self) -> int: ...


class ChangeFeedService:
    """Pages of the change log after a sequence number, optionally waited for."""

    def __init__(
        self,
        log: ChangeLog,
        poll_interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._log = log
        self._poll = poll_interval
        self._clock = clock
        self._sleep = sleep

    @staticmethod
    def check_may_follow(caller: Caller) -> None:
        """Raise :class:`Forbidden` unless the caller may query the whole archive."""
        if not caller.access.study_filter(Action.QUERY).everything:
            raise Forbidden(
                f"{caller.who} may not follow the change feed: it names every patient and study,"
                " so it needs query rights on the whole archive"
            )

    def last(self, caller: Caller) -> int:
        """The newest sequence number (0 for an empty archive): where a new follower starts."""
        self.check_may_follow(caller)
        return self._log.last_change()

    def page(self, caller: Caller, since: int, limit: int, wait: float = 0.0) -> ChangePage:
        """The changes after ``since`` (at most ``limit``, 1 to 1000).

        With ``wait`` (seconds, at most 30) and nothing new yet, the call returns as soon
        as a change arrives, or with an empty page when the time is up (a long poll).
        """
        self.check_may_follow(caller)
        if since < 0:
            raise ValueError("since must not be negative")
        limit = max(1, min(limit, MAX_LIMIT))
        deadline = self._clock() + max(0.0, min(wait, MAX_WAIT))
        while True:
            # One more than asked for tells whether this page reaches the newest change.
            rows = self._log.changes(since, limit + 1)
            if rows or self._clock() >= deadline:
                break
            self._sleep(min(self._poll, max(0.0, deadline - self._clock())))
        changes = tuple(
            Change(int(r["seq"]), str(r["change_type"]), str(r["level"]), str(r["uid"]), r["at"])
            for r in rows[:limit]
        )
        return ChangePage(changes, changes[-1].seq if changes else since, len(rows) <= limit)
