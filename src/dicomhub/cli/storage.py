"""``dicomhub migrate-storage``: move every blob to another store while nodes keep serving."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from dicomhub.cli.options import ARCHIVE
from dicomhub.cli.registry import BLOB_JOBS, arg, command
from dicomhub.config import Settings

__all__: list[str] = []


@command(
    "migrate-storage",
    help="copy every blob to another store (file:// or s3://), verify it, then remove the old copy",
    description="Run the nodes with --storage-url TARGET --storage-fallback-url SOURCE first, "
    "so that reads find each blob wherever it is during the migration. Resumable: run it again "
    "after an interruption.",
    shared=ARCHIVE,
    args=(
        arg("--to", required=True, metavar="URL", help="the target store"),
        arg(
            "--from",
            dest="source",
            metavar="URL",
            help="the source store (default: --storage-fallback-url, else --storage-url)",
        ),
        arg("--keep-source", action="store_true", help="leave the old copies in place"),
        BLOB_JOBS,
        arg("--json", action="store_true"),
    ),
)
def _migrate_storage(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import closed_after, configure_pydicom, open_storage_migration

    configure_pydicom()
    started = time.monotonic()
    with closed_after(open_storage_migration(settings, args.to, args.source)) as migration:
        report = migration.run(remove_source=not args.keep_source, jobs=args.jobs)
    seconds = time.monotonic() - started
    if args.json:
        print(json.dumps({**_as_dict(report), "seconds": round(seconds, 3)}, indent=2))
    else:
        print(
            f"dicomhub: {report.blobs} blobs: {report.copied} copied ({report.bytes_copied} bytes), "
            f"{report.already_there} already in the target, {report.removed_from_source} removed "
            f"from the source, {len(report.problems)} problems, in {seconds:.1f} s"
        )
        for p in report.problems:
            print(f"  {p.kind}: blob {p.blob_key} ({p.sop_instance_uid}): {p.detail}", file=sys.stderr)
    return 0 if report.ok else 1


def _as_dict(report: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(report)
