"""``dicomhub route test/queue/retry``: the routing rules and their outbound queue
(docs/routing.md)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from dicomhub.cli.options import ARCHIVE
from dicomhub.cli.registry import arg, command, group
from dicomhub.config import Settings
from dicomhub.model.identifiers import require_uid
from dicomhub.model.routing import STATES

if TYPE_CHECKING:
    from dicomhub.services.archive import Archive

__all__: list[str] = []

group("route", help="routing rules ([[route]]) and their outbound queue")


def _archive(settings: Settings) -> Archive:
    from dicomhub.bootstrap import open_archive

    return open_archive(settings)


@command(
    "route test",
    help="which rules a stored study matches, with how many of its instances",
    shared=ARCHIVE,
    args=(arg("study_uid", metavar="STUDY_UID"), arg("--json", action="store_true")),
)
def _test(settings: Settings, args: argparse.Namespace) -> int:
    uid = require_uid(args.study_uid, "StudyInstanceUID")
    with _archive(settings) as archive:
        found = archive.routing.test(uid)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    print(f"study {uid}: {found['instances']} instances")
    for r in found["routes"]:
        verdict = "matches" if r["matched"] else "no match"
        to = ", ".join(r["to"])
        print(f"{r['name']:<24} on {r['on']:<6} {verdict:<8} {r['matched']:>6} instances -> {to}")
    if not found["routes"]:
        print("no [[route]] rules are configured")
    return 0


@command(
    "route queue",
    help="the outbound queue's depth per route, destination and state",
    shared=ARCHIVE,
    args=(
        arg("--state", choices=list(STATES), help="list the items in this state instead"),
        arg("--route", default="", help="only this route's items (with --state)"),
        arg("--limit", type=int, default=100, help="at most this many items (with --state)"),
        arg("--json", action="store_true"),
    ),
)
def _queue(settings: Settings, args: argparse.Namespace) -> int:
    with _archive(settings) as archive:
        if args.state:
            items = archive.routing.items(args.state, args.route, max(1, args.limit))
        else:
            depth = archive.routing.depth()
    if args.state:
        if args.json:
            print(json.dumps(items, indent=2))
            return 0
        for i in items:
            where = f"{i['route']:<24} {i['destination']:<24} {i['state']:<6}"
            print(f"{where} {i['attempts']:>3} {i['sop_instance_uid']} {i['last_error']}".rstrip())
        return 0
    if args.json:
        print(json.dumps(depth, indent=2))
        return 0
    print(f"{'ROUTE':<24} {'DESTINATION':<24} {'STATE':<6} {'COUNT':>7}")
    for row in depth:
        print(f"{row['route']:<24} {row['destination']:<24} {row['state']:<6} {row['count']:>7}")
    return 0


@command(
    "route retry",
    help="send failed items again now (dead ones, and those waiting for a retry)",
    shared=ARCHIVE,
    args=(
        arg("--route", default="", help="only this route's items"),
        arg("--dead", action="store_true", help="only dead items (given up after max_attempts)"),
    ),
)
def _retry(settings: Settings, args: argparse.Namespace) -> int:
    with _archive(settings) as archive:
        count = archive.routing.retry(args.route, dead_only=args.dead)
    print(f"dicomhub: {count} items requeued")
    return 0
