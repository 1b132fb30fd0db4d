"""The change feed service on a fake change log and a fake clock: pages, the ``done``
flag, the long poll, and who may follow the feed."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from dicomhub.model.access import Access, Grant, Scope
from dicomhub.model.caller import Caller, Channel
from dicomhub.services.changes import ChangeFeedService
from dicomhub.services.governance import Forbidden

AT = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)


class FakeLog:
    """A change log that grows by one entry per sleep once ``grow_after`` sleeps passed."""

    def __init__(self, count: int, grow_after: int | None = None) -> None:
        self.rows = [self._row(seq) for seq in range(1, count + 1)]
        self.grow_after = grow_after
        self.now = 0.0
        self.sleeps = 0

    @staticmethod
    def _row(seq: int) -> dict[str, Any]:
        return {"seq": seq, "change_type": "created", "level": "IMAGE", "uid": f"1.2.{seq}", "at": AT}

    def changes(self, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["seq"] > since][:limit]

    def last_change(self) -> int:
        return self.rows[-1]["seq"] if self.rows else 0

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        if self.grow_after is not None and self.sleeps >= self.grow_after:
            self.rows.append(self._row(self.last_change() + 1))


def feed(log: FakeLog) -> ChangeFeedService:
    return ChangeFeedService(log, poll_interval=0.25, clock=lambda: log.now, sleep=log.sleep)


def caller(*grants: str) -> Caller:
    access = Access.of(Grant(g.split("@")[0], Scope.parse(g.split("@")[1])) for g in grants)
    return Caller(Channel.HTTP, "someone", principal="someone", access=access)


EVERYONE = Caller(Channel.HTTP, "anyone")  # access control off: unrestricted


def test_pages_follow_each_other_and_the_last_one_is_done() -> None:
    service = feed(FakeLog(5))
    first = service.page(EVERYONE, 0, 2)
    assert [c.seq for c in first.changes] == [1, 2] and first.last == 2 and not first.done
    second = service.page(EVERYONE, first.last, 2)
    third = service.page(EVERYONE, second.last, 2)
    assert [c.seq for c in third.changes] == [5] and third.done
    empty = service.page(EVERYONE, third.last, 2)
    assert empty.changes == () and empty.last == 5 and empty.done
    assert service.page(EVERYONE, 3, 2).as_json()["changes"][0] == {
        "seq": 4, "change_type": "created", "level": "IMAGE", "uid": "1.2.4", "at": AT.isoformat(),
    }  # fmt: skip


def test_a_long_poll_returns_the_change_that_arrives_while_it_waits() -> None:
    log = FakeLog(2, grow_after=3)
    page = feed(log).page(EVERYONE, 2, 10, wait=20)
    assert [c.seq for c in page.changes] == [3] and log.sleeps == 3 and log.now == pytest.approx(0.75)


def test_a_long_poll_with_nothing_new_ends_at_its_deadline() -> None:
    log = FakeLog(2)
    page = feed(log).page(EVERYONE, 2, 10, wait=2)
    assert page.changes == () and page.last == 2 and log.now == pytest.approx(2.0)
    log = FakeLog(2)
    feed(log).page(EVERYONE, 2, 10, wait=1000)  # capped at 30 s
    assert log.now == pytest.approx(30.0)


def test_only_callers_who_may_query_the_whole_archive_follow_the_feed() -> None:
    service = feed(FakeLog(1))
    assert service.last(caller("reader@archive")) == 1
    for grants in (("reader@label:alpha",), ("uploader@archive",), ("reader@patient:P1", "uploader@archive")):
        with pytest.raises(Forbidden, match="whole archive"):
            service.page(caller(*grants), 0, 10)
    with pytest.raises(ValueError):
        service.page(EVERYONE, -1, 10)
