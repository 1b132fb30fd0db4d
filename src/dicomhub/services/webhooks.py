"""Webhook delivery: the change log's entries, as events, to each configured webhook
(:mod:`dicomhub.model.webhooks`), in order and at least once.

Each webhook follows the change log with its own cursor. An entry that is no event
of the webhook is passed over; an event is posted as JSON with its HMAC signature.
A failed attempt (unreachable, timeout, a status other than 2xx) is logged and
retried after a backoff (1 s, 2 s, 4 s ... 5 min) while later entries wait, so a
receiver sees events in the archive's order; after ``max_attempts`` the entry is
given up (logged as such) and the next one goes. With several nodes one of them
delivers (the job's claim), and every attempt is in the delivery log of the index.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from dicomhub.errors import ConfigurationError
from dicomhub.index.webhooks import WebhookRepository
from dicomhub.model.timestamps import utc_now
from dicomhub.model.webhooks import Webhook, backoff, event_of, signature
from dicomhub.services.background import run_until_stopped
from dicomhub.services.changes import ChangeLog

__all__ = ["Poster", "WebhookService"]

LOGGER = logging.getLogger("dicomhub.webhooks")

#: Posts (url, body, headers, timeout) and returns the HTTP status; raises OSError
#: when the receiver cannot be reached or does not answer in time.
Poster = Callable[[str, bytes, Mapping[str, str], float], int]


@dataclass
class _Retry:
    attempts: int = 0  # failed attempts of the entry at the cursor
    not_before: float = 0.0  # monotonic time of the next attempt


class WebhookService:
    """Delivers the change log's events to the configured webhooks."""

    def __init__(
        self,
        hooks: Sequence[Webhook],
        log: ChangeLog,
        deliveries: WebhookRepository,
        post: Poster,
        environ: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.monotonic,
        claim: Callable[[str], AbstractContextManager[bool]] | None = None,
    ) -> None:
        self.hooks = tuple(hooks)
        self._log = log
        self._deliveries = deliveries
        self._post = post
        self._environ = environ
        self._clock = clock
        self._claim = claim
        self._retry = {h.name: _Retry() for h in self.hooks}

    def begin(self) -> None:
        """Give each new webhook its place at the newest change log entry.

        Called by ``serve`` before it accepts anything: a webhook reports what is
        stored from the start that configured it, not the archive's history, and not
        from whenever its first delivery turn happens to run.
        """
        for hook in self.hooks:
            self._deliveries.position(hook.name)

    def status(self) -> list[dict[str, Any]]:
        """Each webhook with its position in the change log and its latest attempts."""
        return [
            {
                "name": h.name,
                "url": h.url,
                "events": sorted(h.events),
                "position": self._deliveries.position(h.name),
                "deliveries": self._deliveries.deliveries(h.name, 20),
            }
            for h in self.hooks
        ]

    def deliveries(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        """The latest attempts of one webhook; KeyError for a name not configured."""
        if name not in self._retry:
            raise KeyError(name)
        return self._deliveries.deliveries(name, limit)

    def step(self) -> int:
        """One turn over every webhook; how many change log entries were finished."""
        return sum(self._advance(hook) for hook in self.hooks)

    def _advance(self, hook: Webhook) -> int:
        retry = self._retry[hook.name]
        if self._clock() < retry.not_before:
            return 0
        finished = 0
        passed_over: int | None = None  # the cursor's new place when entries were only passed over
        for row in self._log.changes(self._deliveries.position(hook.name), 100):
            seq, uid = int(row["seq"]), str(row["uid"])
            event = event_of(str(row["change_type"]), str(row["level"]))
            if event is None or not hook.wants(event):
                passed_over, finished = seq, finished + 1
                continue
            status, error = self._attempt(hook, event, row)
            attempt, now = retry.attempts + 1, utc_now()
            if not error or attempt >= hook.max_attempts:
                outcome = "delivered" if not error else "gave-up"
                self._deliveries.record(
                    hook.name, seq, event, uid, attempt, outcome, status, error, now, done_up_to=seq
                )
                if error:
                    LOGGER.error("webhook %s gave up %s of %s after %d attempts: %s", hook.name, event, uid,
                                 attempt, error)  # fmt: skip
                retry.attempts, passed_over, finished = 0, None, finished + 1
                continue
            self._deliveries.record(
                hook.name, seq, event, uid, attempt, "failed", status, error, now, done_up_to=None
            )
            retry.attempts, retry.not_before = attempt, self._clock() + backoff(attempt)
            LOGGER.warning("webhook %s: %s of %s failed (attempt %d of %d): %s; retrying in %g s", hook.name,
                           event, uid, attempt, hook.max_attempts, error, backoff(attempt))  # fmt: skip
            break
        if passed_over is not None:
            self._deliveries.skip_to(hook.name, passed_over)
        return finished

    def _attempt(self, hook: Webhook, event: str, row: Mapping[str, Any]) -> tuple[int | None, str]:
        """(HTTP status, error): error "" when the receiver took it (2xx)."""
        body = json.dumps(
            {
                "webhook": hook.name,
                "event": event,
                "seq": int(row["seq"]),
                "level": str(row["level"]),
                "uid": str(row["uid"]),
                "at": row["at"].isoformat(),
            },
            separators=(",", ":"),
        ).encode()
        try:
            key = hook.key(self._environ)
        except ConfigurationError as exc:
            return None, str(exc)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "dicomhub",
            "X-Dicomhub-Event": event,
            "X-Dicomhub-Delivery": f"{hook.name}-{int(row['seq'])}",
            "X-Dicomhub-Signature": signature(key, body),
        }
        try:
            status = self._post(hook.url, body, headers, hook.timeout)
        except OSError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        return status, "" if 200 <= status < 300 else f"HTTP {status}"

    def run_worker(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` (nothing to do without webhooks)."""
        if not self.hooks:
            return
        claim = self._claim
        run_until_stopped(
            stop,
            self.step,
            "webhook delivery",
            LOGGER,
            idle=0.5,
            claim=(lambda: claim("webhook-delivery")) if claim is not None else None,
        )
