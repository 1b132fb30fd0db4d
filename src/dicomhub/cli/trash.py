"""``dicomhub trash list|restore|purge`` and ``dicomhub retention run``: the trash of
deleted studies and the retention rules (see docs/trash-and-retention.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dicomhub.cli.options import ARCHIVE
from dicomhub.cli.registry import arg, command, group
from dicomhub.config import Settings
from dicomhub.model.caller import Caller
from dicomhub.model.timestamps import iso_utc
from dicomhub.services.archive import Archive

__all__: list[str] = []

group("trash", help="deleted studies kept for trash_keep: list, restore, purge")
group("retention", help="the [[retention]] rules of the configuration")


def _archive(settings: Settings) -> Archive:
    from dicomhub.bootstrap import open_archive

    return open_archive(settings)


@command(
    "trash list",
    help="the studies in the trash, the most recently deleted first",
    shared=ARCHIVE,
    args=(arg("--limit", type=int, default=1000), arg("--json", action="store_true")),
)
def _list(settings: Settings, args: argparse.Namespace) -> int:
    with _archive(settings) as archive:
        found = archive.trash.studies(Caller.cli(), max(1, args.limit))
        rows: list[dict[str, Any]] = [
            {
                "study_instance_uid": s.study_instance_uid,
                "patient_id": s.patient_id,
                "patient_name": s.patient_name,
                "study_date": s.study_date,
                "modalities": list(s.modalities),
                "series": s.series,
                "instances": s.instances,
                "size": s.size,
                "deleted_by": list(s.deleted_by),
                "reasons": list(s.reasons),
                "deleted_at": iso_utc(s.last_deleted_at),
                "purge_at": iso_utc(archive.trash.purge_at(s)),
            }
            for s in found
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(
            f"{r['study_instance_uid']:<64} {r['patient_id']:<16} {r['instances']:>6} instances "
            f"deleted {r['deleted_at']} by {', '.join(r['deleted_by'])}; purge {r['purge_at']}"
        )
    print(f"dicomhub: {len(rows)} studies in the trash")
    return 0


@command(
    "trash restore",
    help="index a study's trashed instances again (refused when its UIDs were stored again since)",
    shared=ARCHIVE,
    args=(arg("study_instance_uid"), arg("--json", action="store_true")),
)
def _restore(settings: Settings, args: argparse.Namespace) -> int:
    with _archive(settings) as archive:
        result = archive.trash.restore(args.study_instance_uid, Caller.cli())
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        print(f"dicomhub: {len(result.restored)} instances of study {result.study_instance_uid} restored")
        for uid, why in [*result.conflicts, *result.failed]:
            print(f"  left in the trash: {uid}: {why}", file=sys.stderr)
    return 0 if not (result.conflicts or result.failed) else 1


@command(
    "trash purge",
    help="remove trashed instances and their blobs for good: one study, or the whole trash",
    shared=ARCHIVE,
    args=(
        arg("study_instance_uid", nargs="?", help="the study (default: everything in the trash)"),
        arg("--expired", action="store_true", help="only what has been in the trash for trash_keep"),
    ),
)
def _purge(settings: Settings, args: argparse.Namespace) -> int:
    with _archive(settings) as archive:
        if args.study_instance_uid:
            if args.expired:
                print("dicomhub: --expired is for the whole trash, not one study", file=sys.stderr)
                return 2
            result = archive.trash.purge(args.study_instance_uid, Caller.cli())
        else:
            result = archive.trash.purge_all(Caller.cli(), expired_only=args.expired)
    print(f"dicomhub: {result.instances} instances of {len(result.studies)} studies purged from the trash")
    if result.blobs_not_removed:
        print(f"dicomhub: {result.blobs_not_removed} blobs could not be removed (see `dicomhub check`)",
              file=sys.stderr)  # fmt: skip
    return 0


@command(
    "retention run",
    help="apply the [[retention]] rules now (their studies go to the trash, or are rejected), "
    "or list them with --dry-run",
    shared=ARCHIVE,
    args=(
        arg(
            "--dry-run",
            action="store_true",
            help="list the studies each rule takes, delete or reject nothing",
        ),
        arg("--json", action="store_true"),
    ),
)
def _retention_run(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.retention:
        print("dicomhub: no [[retention]] rules are configured", file=sys.stderr)
        return 1
    with _archive(settings) as archive:
        report = archive.retention.run(dry_run=args.dry_run, caller=Caller.cli())
    if args.json:
        print(json.dumps({
            "dry_run": report.dry_run,
            "at": iso_utc(report.at),
            "rules": [
                {
                    "name": r.rule.name,
                    "rule": str(r.rule),
                    "studies": [
                        {"study_instance_uid": c.study_instance_uid, "patient_id": c.patient_id,
                         "study_date": c.study_date, "modalities": c.modalities, "instances": c.instances}
                        for c in r.studies
                    ],
                    "deleted": r.deleted,
                    "rejected": r.rejected,
                    "failed": [{"study_instance_uid": u, "reason": why} for u, why in r.failed],
                }
                for r in report.rules
            ],
        }, indent=2))  # fmt: skip
    else:
        for r in report.rules:
            action = r.rule.action.value
            verb = (
                f"would {action}" if report.dry_run else {"delete": "deleted", "reject": "rejected"}[action]
            )
            count = len(r.studies) if report.dry_run else len(r.deleted) + len(r.rejected)
            print(f"{r.rule}: {verb} {count} studies")
            for c in r.studies:
                print(f"  {c.study_instance_uid} {c.patient_id} {c.study_date or '-'} {c.modalities}")
            for uid, why in r.failed:
                print(f"  failed {uid}: {why}", file=sys.stderr)
    return 0 if report.ok else 1
