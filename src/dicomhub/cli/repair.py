"""``dicomhub repair``: restore missing or damaged blobs from a peer, after verifying the copy."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from dicomhub.cli.options import ARCHIVE
from dicomhub.cli.registry import arg, command
from dicomhub.config import Settings

__all__: list[str] = []

_FOLDER = "folder:"


@command(
    "repair",
    help="restore missing or damaged blobs from peers (exit 1 while any stays damaged)",
    description="Checks the blobs of the given studies (default: every instance) as `dicomhub check` "
    "does, fetches each damaged instance from the peers (C-GET or WADO-RS of its SOP Instance UID) "
    "and replaces the blob only with a copy proven to be the same object. See docs/repair.md.",
    shared=ARCHIVE,
    args=(
        arg(
            "--from",
            dest="peers",
            action="append",
            default=[],
            metavar="PEER",
            help="the peer to fetch from, or folder:PATH, a folder of Part 10 files (a backup, an "
            "export) found by the SOP Instance UIDs in their headers (repeatable; peers are asked "
            "first, in this order, then folders; default: every migration-source peer)",
        ),
        arg("--dry-run", action="store_true", help="list what would be repaired and from where"),
        arg("--json", action="store_true"),
        arg("studies", nargs="*", metavar="STUDY_UID", help="only the instances of these studies"),
    ),
)
def _repair(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive
    from dicomhub.errors import ConfigurationError, DicomhubError

    with open_archive(settings) as archive:
        if archive.repair is None:  # pragma: no cover - open_archive wires it
            raise DicomhubError("repair is not available in this process")
        peers = [p for p in args.peers if not p.startswith(_FOLDER)]
        folders = [os.path.abspath(p[len(_FOLDER) :]) for p in args.peers if p.startswith(_FOLDER)]
        for folder in folders:
            if not os.path.isdir(folder):
                raise ConfigurationError(f"--from folder:{folder}: not a folder")
        report = archive.repair.repair(args.studies, peers, dry_run=args.dry_run, folders=folders)
    if args.json:
        print(json.dumps({**dataclasses.asdict(report), "ok": report.ok}, indent=2))
        return 0 if report.ok else 1
    verb = "would repair" if report.dry_run else "repaired"
    done = sum(1 for i in report.items if i.outcome in ("repaired", "planned"))
    print(
        f"dicomhub repair: {report.checked} instances checked, {len(report.items)} damaged, "
        f"{verb} {done}" + (f" (peers: {', '.join(report.peers)})" if report.peers else " (no peer)")
    )
    for i in report.items:
        line = f"  {i.outcome}: {i.sop_instance_uid} ({i.problem}: {i.detail})"
        if i.outcome == "failed":
            print(f"{line}: {i.reason}", file=sys.stderr)
        else:
            print(f"{line} from {i.source}" + (f": {i.reason}" if i.reason else ""))
    return 0 if report.ok else 1
