"""``dicomhub audit-export``: the audit log as DICOM audit messages or JSON lines."""

from __future__ import annotations

import argparse
import sys

from dicomhub.cli.options import ARCHIVE
from dicomhub.cli.registry import arg, command
from dicomhub.config import Settings
from dicomhub.services.auditexport import EXPORT_FORMATS, export_lines, parse_audit_time

__all__: list[str] = []

# What one export reads at most; narrow it with --study, --principal, --since.
_EXPORT_LIMIT = 100_000


@command(
    "audit-export",
    help="export the audit log as DICOM audit messages (PS3.15 A.5) or JSON lines",
    shared=ARCHIVE,
    args=(
        arg("--format", choices=EXPORT_FORMATS, default="jsonl"),
        arg("--study", metavar="UID", help="only events about this study"),
        arg("--principal", help="only events of this principal"),
        arg("--since", metavar="ISO", help="only events from this time on (ISO 8601, UTC if no zone)"),
        arg("--until", metavar="ISO", help="only events before this time"),
        arg("--aet", help="the audit source ID (default: the archive's AE title)"),
        arg("--output", metavar="FILE", help="write here instead of standard output"),
    ),
)
def _export(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    since, until = parse_audit_time(args.since), parse_audit_time(args.until)
    with open_archive(settings) as archive:
        records = archive.audit.events(
            study_instance_uid=args.study,
            principal=args.principal,
            since=since,
            until=until,
            limit=_EXPORT_LIMIT,
        )[::-1]  # oldest first, as a log reads
    lines = export_lines(records, args.format, args.aet or settings.aet)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.writelines(lines)
        print(f"dicomhub: {len(records)} audit events written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.writelines(lines)
    return 0
