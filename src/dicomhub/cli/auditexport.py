"""``dicomhub audit-export``: the audit log as DICOM audit messages or JSON lines."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dicomhub.config import Settings
from dicomhub.services.auditexport import EXPORT_FORMATS, export_lines, parse_audit_time

__all__ = ["add_commands"]

# What one export reads at most; narrow it with --study, --principal, --since.
_EXPORT_LIMIT = 100_000


def add_commands(sub: Any, settings_args: Any) -> None:
    p = sub.add_parser(
        "audit-export",
        help="export the audit log as DICOM audit messages (PS3.15 A.5) or JSON lines",
    )
    settings_args(p)
    p.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl")
    p.add_argument("--study", metavar="UID", help="only events about this study")
    p.add_argument("--principal", help="only events of this principal")
    p.add_argument("--since", metavar="ISO", help="only events from this time on (ISO 8601, UTC if no zone)")
    p.add_argument("--until", metavar="ISO", help="only events before this time")
    p.add_argument("--aet", help="the audit source ID (default: the archive's AE title)")
    p.add_argument("--output", metavar="FILE", help="write here instead of standard output")
    p.set_defaults(run=_export)


def _export(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    since, until = parse_audit_time(args.since), parse_audit_time(args.until)
    archive = open_archive(settings)
    try:
        records = archive.audit.events(
            study_instance_uid=args.study,
            principal=args.principal,
            since=since,
            until=until,
            limit=_EXPORT_LIMIT,
        )[::-1]  # oldest first, as a log reads
    finally:
        archive.close()
    lines = export_lines(records, args.format, args.aet or settings.aet)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.writelines(lines)
        print(f"dicomhub: {len(records)} audit events written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.writelines(lines)
    return 0
