"""Routing: the configured rules (:mod:`dicomhub.model.routing`) applied to what is
stored, through a durable outbound queue in the index.

Two background jobs:

* the **enqueuer** follows the change log with its own cursor: an instance stored
  (``created`` at the image level) is matched against the ``on = "stored"`` rules,
  a study announced stable against the ``on = "stable"`` ones, and each match adds
  one queue item per destination. What it reads is committed already, so nothing
  is forwarded before it is durable here. With several nodes one of them enqueues
  (the job's claim).
* the **forwarder** claims due items of one destination (several nodes each take
  their own, see :mod:`dicomhub.index.routing`), sends them on one association or
  HTTP client, and marks what the peer confirmed (C-STORE responses, a STOW-RS
  response) sent by group commit: a writer thread writes the outcomes as they come,
  those that arrive during a write going together in the next one, so the sending
  never waits for the index and a crash resends at most what was in flight. An item
  whose instance was rejected (IOCM), deleted or trashed since it was queued is
  skipped, not sent. A failed item is
  retried after 1 s, 2 s, 4 s ...
  5 min; after its rule's ``max_attempts`` it is dead, with the last error, until a
  manual retry.

Sending is an adapter's (:class:`Sender`, made by ``open_sender``): services know
no DICOM network library.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from dicomhub.errors import ConfigurationError, DicomhubError, InvalidRequest
from dicomhub.index.routing import RouteRepository
from dicomhub.model.identifiers import Level
from dicomhub.model.records import InstanceRow
from dicomhub.model.routing import PROJECT_PREFIX, STATES, Route
from dicomhub.model.timestamps import utc_now
from dicomhub.services.background import run_until_stopped
from dicomhub.services.changes import ChangeLog
from dicomhub.services.liveness import process_alive

__all__ = ["SEND_ROUTE", "RoutingService", "Sender", "SenderFactory"]

LOGGER = logging.getLogger("dicomhub.routing")

_BATCH = 50  # items claimed at once (one destination, preferably one study)
_REJECTED = "skipped: rejected (IOCM) before it was sent"
_GONE = "skipped: deleted or trashed before it was sent"
_OUTPUT = "skipped: made by a de-identification run, not de-identified again"
#: The queue's route name of the sends asked for by hand (``POST /api/studies/{study}/send``);
#: no configured rule can have it (rule names are letters, digits, ``. _ -``).
SEND_ROUTE = "(send)"
LEASE_SECONDS = 120.0  # how long a claim lasts without renewal; a dead node's items wait this long


class Sender(Protocol):
    """One open connection to a destination (an association, an HTTP client, a folder).

    ``batch``: how many instances one :meth:`send` takes. Each call's sent items are
    marked as soon as it returns (written while the next call goes), so this is about
    what a crash may send twice: 1 where the peer confirms each instance (C-STORE, a
    folder), more for one STOW-RS request.
    """

    batch: int

    def send(self, rows: Sequence[InstanceRow]) -> dict[str, str]:
        """Send the instances; return the error per SOP Instance UID that failed
        (absent: sent). Raises DicomhubError when none could be sent."""
        ...

    def close(self) -> None: ...


#: Makes the sender of a destination (a peer name or folder:PATH) for a rule.
SenderFactory = Callable[[str, Route], Sender]


class _Peers(Protocol):
    def get(self, name: str) -> Any: ...


class RoutingService:
    """Routing rules, their queue, and the two jobs that fill and empty it."""

    def __init__(
        self,
        routes: Sequence[Route],
        log: ChangeLog,
        queue: RouteRepository,
        peers: _Peers,
        open_sender: SenderFactory | None = None,
        *,
        claim: Callable[[str], AbstractContextManager[bool]] | None = None,
        lease: float = LEASE_SECONDS,
        check_deidentify: Callable[[str, Sequence[str]], None] | None = None,
    ) -> None:
        self.routes = tuple(routes)
        self._by_name = {r.name: r for r in self.routes}
        self._log = log
        self._queue = queue
        self._peers = peers
        self._open_sender = open_sender
        self._claim = claim
        self._lease = lease
        self._check_deidentify = check_deidentify
        # Unique per process: a restarted node must not find its dead self's claims its own.
        self.owner = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def begin(self) -> None:
        """Check every destination names a peer it can send to, and give the enqueuer
        its place (the newest change log entry the first time). Called by ``serve``
        before it accepts anything.

        Raises
        ------
        ConfigurationError
            For a rule naming an unknown peer, or a peer with no DIMSE address
            and no DICOMweb URL; for a ``deidentify`` project that cannot
            de-identify (no secret, another secret than its own, a bad option).
        """
        self.check()
        if self.routes:
            self._queue.position()
        # Sends by hand use the queue without rules: a dead node's claims are freed either way.
        self._release_dead_claims()

    def _release_dead_claims(self) -> None:
        """Free the items claimed by processes of this host that are gone (a ``kill -9``,
        a crash): a restarted node takes them up at once, not after their lease. Other
        hosts' claims are left to their leases."""
        host = self.owner.split(":", 1)[0]
        for owner in self._queue.owners():
            name, _sep, rest = owner.partition(":")
            pid = rest.partition(":")[0]
            if name == host and pid.isdigit() and not process_alive(int(pid)):
                released = self._queue.release(owner)
                LOGGER.warning("routing: %d items claimed by %s (gone) released", released, owner)

    def check(self) -> None:
        """The peer and de-identification checks of :meth:`begin` (see there)."""
        for route in self.routes:
            if route.deidentify:
                try:
                    if self._check_deidentify is None:
                        raise DicomhubError("this server cannot de-identify")
                    self._check_deidentify(route.deidentify, route.deidentify_options)
                except DicomhubError as exc:
                    raise ConfigurationError(
                        f"[[route]] {route.name}: deidentify {route.deidentify!r}: {exc}"
                    ) from None
            for project in route.projects():
                try:
                    if self._check_deidentify is None:
                        raise DicomhubError("this server cannot de-identify")
                    self._check_deidentify(project, route.deidentify_options)
                except DicomhubError as exc:
                    raise ConfigurationError(f"[[route]] {route.name}: project:{project}: {exc}") from None
            for name in route.peers():
                peer = self._peers.get(name)
                if peer is None:
                    raise ConfigurationError(
                        f"[[route]] {route.name}: no peer {name!r} (see `dicomhub peer list`)"
                    )
                if not (peer.dicomweb_url or (peer.host and peer.port) or peer.folder):
                    raise ConfigurationError(
                        f"[[route]] {route.name}: peer {name!r} has no DIMSE address (host, port), "
                        "DICOMweb URL or folder to send to"
                    )

    def use_senders(self, open_sender: SenderFactory) -> None:
        """Wire the senders (the background process does: only it forwards)."""
        self._open_sender = open_sender

    # ---------------------------------------------------------------- enqueue

    def enqueue_step(self) -> int:
        """Read the change log after the cursor once; how many entries were read."""
        if not self.routes:
            return 0
        entries = self._log.changes(self._queue.position(), 200)
        if not entries:
            return 0
        stored = [
            str(e["uid"])
            for e in entries
            if e["change_type"] == "created" and e["level"] == Level.IMAGE.value
        ]
        stable = [
            str(e["uid"]) for e in entries if e["change_type"] == "stable" and e["level"] == Level.STUDY.value
        ]
        items: list[tuple[str, str, str, str]] = []
        on_stored = [r for r in self.routes if r.on == "stored"]
        on_stable = [r for r in self.routes if r.on == "stable"]
        if on_stored and stored:
            items += _matched(on_stored, self._queue.facts(sop_instance_uids=stored))
        for study_uid in dict.fromkeys(stable) if on_stable else ():
            items += _matched(on_stable, self._queue.facts(study_instance_uid=study_uid))
        added = self._queue.enqueue(items, int(entries[-1]["seq"]), utc_now())
        if added:
            LOGGER.info("routing: %d items queued", added)
        return len(entries)

    # ---------------------------------------------------------------- forward

    def forward_step(self) -> int:
        """Claim and send one batch of due items; how many were finished (sent or dead)."""
        if self._open_sender is None:
            return 0
        claimed = self._queue.claim(self.owner, utc_now(), self._lease, _BATCH)
        if not claimed:
            return 0
        destination = str(claimed[0]["destination"])
        route = self._by_name.get(str(claimed[0]["route"]))
        if str(claimed[0]["route"]) == SEND_ROUTE:
            # A send by hand: the objects as stored, with a rule's default attempts.
            route = Route(name=SEND_ROUTE, on="stored", to=(destination,))
        if route is None or destination not in route.to:
            # A rule or destination removed from the configuration: its items wait
            # (dead) until the rule is back or they are looked at.
            error = "the rule or destination is no longer configured"
            failures = [(int(c["pk"]), int(c["attempts"]), error) for c in claimed]
            self._queue.mark_failed(failures, self.owner, 0, utc_now())
            return len(claimed)
        uids = [str(c["sop_instance_uid"]) for c in claimed]
        found = {row.sop_instance_uid: row for row, _f in self._queue.facts(sop_instance_uids=uids)}
        # Nothing to send any more: rejected (IOCM) or gone (deleted, trashed) since queued.
        rejected = self._queue.rejected(uids)
        # What a de-identification run made is not de-identified again into a project
        # (a rule matching its own output would loop).
        outputs = self._queue.deidentified(uids) if destination.startswith(PROJECT_PREFIX) else set()
        skipped = [
            (int(c["pk"]), _REJECTED if uid in rejected else _GONE if uid not in found else _OUTPUT)
            for c in claimed
            if (uid := str(c["sop_instance_uid"])) in rejected or uid not in found or uid in outputs
        ]
        if skipped:
            self._queue.settle(self.owner, utc_now(), skipped=skipped)
            LOGGER.info("routing %s -> %s: %d items skipped (rejected or deleted since queued)",
                        route.name, destination, len(skipped))  # fmt: skip
            dropped = {pk for pk, _why in skipped}
            claimed = [c for c in claimed if int(c["pk"]) not in dropped]
            if not claimed:
                return len(skipped)
        try:
            sender = self._open_sender(destination, route)
        except DicomhubError as exc:
            return len(skipped) + self._failed(route, destination, claimed, {}, str(exc))
        marks = _Marks(self, route, destination, [int(c["pk"]) for c in claimed])
        step = max(1, sender.batch)
        try:
            for i in range(0, len(claimed), step):
                part = claimed[i : i + step]
                rows = [found[str(c["sop_instance_uid"])] for c in part]
                try:
                    errors = sender.send(rows)
                except Exception as exc:  # noqa: BLE001 - any fault of a send fails its items, not the job
                    if not isinstance(exc, DicomhubError):
                        LOGGER.exception("routing %s -> %s: sending failed", route.name, destination)
                    # Nothing of this step went: it and the rest of the batch wait.
                    marks.add([], claimed[i:], str(exc) or type(exc).__name__)
                    break
                sent = [int(c["pk"]) for c in part if str(c["sop_instance_uid"]) not in errors]
                failed = [c for c in part if str(c["sop_instance_uid"]) in errors]
                marks.add(sent, failed, "", errors, rest=[int(c["pk"]) for c in claimed[i + step :]])
        finally:
            try:
                marks.close()
            finally:
                sender.close()
        return len(skipped) + marks.finished

    def _failed(
        self,
        route: Route,
        destination: str,
        items: Sequence[Mapping[str, Any]],
        errors: Mapping[str, str],
        error: str,
    ) -> int:
        failures = [
            (int(c["pk"]), int(c["attempts"]), errors.get(str(c["sop_instance_uid"]), error))
            for c in items
            if error or str(c["sop_instance_uid"]) in errors
        ]
        dead = self._queue.mark_failed(failures, self.owner, route.max_attempts, utc_now())
        first = failures[0][2] if failures else ""
        LOGGER.warning("routing %s -> %s: %d items failed (%d now dead): %s", route.name, destination,
                       len(failures), dead, first)  # fmt: skip
        return dead

    # ---------------------------------------------------------------- observe and manage

    def rules(self) -> list[dict[str, Any]]:
        """The rules, each with its queue depth per destination and state."""
        depth = self._queue.depth()
        out = []
        for route in self.routes:
            counts: dict[str, dict[str, int]] = {d: dict.fromkeys(STATES, 0) for d in route.to}
            for row in depth:
                if row["route"] == route.name and row["destination"] in counts:
                    counts[str(row["destination"])][str(row["state"])] = int(row["count"])
            out.append({**route.public(), "queue": counts})
        return out

    def depth(self) -> list[dict[str, Any]]:
        """Item counts per (route, destination, state), of every route in the queue."""
        return self._queue.depth()

    def items(self, state: str = "", route: str = "", limit: int = 100) -> list[dict[str, Any]]:
        """Queue items, oldest first; InvalidRequest for an unknown state."""
        if state and state not in STATES:
            raise InvalidRequest(f"state must be one of {', '.join(STATES)}")
        return self._queue.items(state=state, route=route, limit=limit)

    def retry(self, route: str = "", dead_only: bool = False) -> int:
        """Make failed items due now with their attempts counted afresh (dead ones;
        without ``dead_only`` also those waiting for a retry); how many."""
        if route and route not in self._by_name:
            raise InvalidRequest(f"no route {route!r} is configured")
        count = self._queue.retry(route=route, dead_only=dead_only, now=utc_now())
        LOGGER.info("routing: %d items requeued by hand", count)
        return count

    def test(self, study_instance_uid: str) -> dict[str, Any]:
        """Which rules the stored study matches: per rule, how many of its instances."""
        facts = self._queue.facts(study_instance_uid=study_instance_uid)
        if not facts:
            raise InvalidRequest(f"no study {study_instance_uid} is stored")
        return {
            "study_instance_uid": study_instance_uid,
            "instances": len(facts),
            "routes": [
                {
                    "name": r.name,
                    "on": r.on,
                    "to": list(r.to),
                    "matched": sum(1 for _row, f in facts if r.matches(f)),
                }
                for r in self.routes
            ],
        }

    def send_study(self, study_instance_uid: str, destination: str) -> dict[str, Any]:
        """Queue every stored instance of a study for ``destination`` (a peer name), to be
        sent by the forwarder like a rule's items (retried, observable, durable).

        Raises
        ------
        InvalidRequest
            For an unknown peer or one with no address to send to, or no such study.
        """
        peer = self._peers.get(destination)
        if peer is None:
            raise InvalidRequest(f"no peer {destination!r} (see `dicomhub peer list`)")
        if not (peer.dicomweb_url or (peer.host and peer.port)):
            raise InvalidRequest(f"peer {destination!r} has no DIMSE address or DICOMweb URL to send to")
        facts = self._queue.facts(study_instance_uid=study_instance_uid)
        if not facts:
            raise InvalidRequest(f"no study {study_instance_uid} is stored")
        items = [(row.study_instance_uid, row.sop_instance_uid) for row, _f in facts]
        queued = self._queue.queue_again(SEND_ROUTE, destination, items, utc_now())
        LOGGER.info("send: %d instances of %s queued for %s", queued, study_instance_uid, destination)
        return {"study_instance_uid": study_instance_uid, "to": destination, "queued": queued}

    def sends(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """The sends by hand of a study: per destination, its item counts by state and
        the last error of a failed item."""
        items = self._queue.items(study_instance_uid=study_instance_uid, route=SEND_ROUTE, limit=100000)
        out: dict[str, dict[str, Any]] = {}
        for item in items:
            per = out.setdefault(
                item["destination"], {"to": item["destination"], **dict.fromkeys(STATES, 0), "last_error": ""}
            )
            per[item["state"]] = per.get(item["state"], 0) + 1
            if item["last_error"]:
                per["last_error"] = item["last_error"]
            per["updated_at"] = max(str(per.get("updated_at", "")), str(item["updated_at"]))
        return list(out.values())

    def study_status(self, study_instance_uid: str) -> dict[str, Any]:
        """The queue items of one study, and their counts per route, destination and state."""
        items = self._queue.items(study_instance_uid=study_instance_uid, limit=100000)
        counts: dict[str, dict[str, dict[str, int]]] = {}
        for item in items:
            per = counts.setdefault(item["route"], {}).setdefault(
                item["destination"], dict.fromkeys(STATES, 0)
            )
            per[item["state"]] = per.get(item["state"], 0) + 1
        return {"study_instance_uid": study_instance_uid, "routes": counts, "items": items}

    # ---------------------------------------------------------------- jobs

    def run_enqueuer(self, stop: threading.Event) -> None:
        """Enqueue until ``stop`` (nothing to do without rules)."""
        if not self.routes:
            return
        claim = self._claim
        run_until_stopped(
            stop,
            self.enqueue_step,
            "routing enqueuer",
            LOGGER,
            idle=0.5,
            claim=(lambda: claim("route-enqueue")) if claim is not None else None,
        )

    def run_forwarder(self, stop: threading.Event) -> None:
        """Forward until ``stop``; every node forwards, each its own claimed items (with no
        rules too: sends asked for by hand go through the same queue)."""
        if self._open_sender is None:
            return
        run_until_stopped(stop, self.forward_step, "routing forwarder", LOGGER, idle=0.5)


class _Marks:
    """Writes the outcomes of one batch as they come, on a thread of its own (group
    commit): while one write is under way the next outcomes gather, and go in the
    next write (one transaction, a few statements). The sending never waits for the
    index, and what the peer confirmed is marked within one write's time: a kill -9
    leaves unmarked only what is in flight (on the wire, or confirmed and being
    written).

    The thread also keeps the batch's lease while it is being sent, renewing it
    every third of the lease: a slow peer or a loaded machine must not let another
    node take over (and send again) the items of a node that is alive and sending.
    Only a node that stopped (killed, hung) lets its lease run out."""

    def __init__(
        self, service: RoutingService, route: Route, destination: str, claimed: Sequence[int]
    ) -> None:
        self._service = service
        self._route = route
        self._destination = destination
        self._ready = threading.Condition()
        self._sent: list[int] = []
        self._failures: list[tuple[int, int, str]] = []
        self._rest: list[int] = []  # the items still to send: their lease is renewed
        self._held = set(claimed)  # claimed and not yet marked: the lease kept
        self._closed = False
        self._error: BaseException | None = None
        self.finished = 0
        self._thread = threading.Thread(target=self._write, name="routing-marks", daemon=True)
        self._thread.start()

    def add(
        self,
        sent: Sequence[int],
        failed: Sequence[Mapping[str, Any]],
        error: str,
        errors: Mapping[str, str] | None = None,
        rest: Sequence[int] = (),
    ) -> None:
        """Items ``sent``, items ``failed`` (with ``error``, or theirs in ``errors``)."""
        by_uid = errors or {}
        failures = [
            (int(c["pk"]), int(c["attempts"]), by_uid.get(str(c["sop_instance_uid"]), error)) for c in failed
        ]
        with self._ready:
            self._sent += sent
            self._failures += failures
            self._rest = list(rest)
            self._held.difference_update(sent)
            self._held.difference_update(pk for pk, _n, _e in failures)
            self._ready.notify()

    def close(self) -> None:
        """Wait until everything added is written; raise what a write raised."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _write(self) -> None:
        service = self._service
        every = service._lease / 3
        renewal = time.monotonic() + every
        while True:
            with self._ready:
                while not (self._sent or self._failures or self._closed) and time.monotonic() < renewal:
                    self._ready.wait(max(0.0, renewal - time.monotonic()))
                sent, self._sent = self._sent, []
                failures, self._failures = self._failures, []
                rest = self._rest
                held = sorted(self._held)
                if self._closed and not (sent or failures):
                    return  # closed, nothing left
            if time.monotonic() >= renewal:
                self._keep_lease(held)
                renewal = time.monotonic() + every
            if not (sent or failures):
                continue
            try:
                now = utc_now()
                dead = service._queue.settle(
                    service.owner, now, sent=sent, failures=failures, max_attempts=self._route.max_attempts,
                    renew=rest, lease_until=now + dt.timedelta(seconds=service._lease),
                )  # fmt: skip
            except BaseException as exc:  # noqa: BLE001 - raised again by close()
                # Unmarked items stay claimed: retried (resent) once their lease ends.
                self._error = exc
                return
            self.finished += len(sent) + dead
            if failures:
                LOGGER.warning("routing %s -> %s: %d items failed (%d now dead): %s", self._route.name,
                               self._destination, len(failures), dead, failures[0][2])  # fmt: skip

    def _keep_lease(self, held: Sequence[int]) -> None:
        service = self._service
        try:
            service._queue.renew(held, service.owner, utc_now() + dt.timedelta(seconds=service._lease))
        except Exception:  # noqa: BLE001 - the next renewal (or the marks) tries again
            LOGGER.warning("routing %s -> %s: the lease of %d items could not be renewed",
                           self._route.name, self._destination, len(held), exc_info=True)  # fmt: skip


def _matched(
    routes: Sequence[Route], facts: Sequence[tuple[InstanceRow, Mapping[str, Collection[str]]]]
) -> list[tuple[str, str, str, str]]:
    return [
        (route.name, destination, row.study_instance_uid, row.sop_instance_uid)
        for row, f in facts
        for route in routes
        if route.matches(f)
        for destination in route.to
    ]
