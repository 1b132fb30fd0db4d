"""``dicomhub backup``, ``dicomhub restore`` and ``dicomhub reindex`` (see docs/backup.md)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from dicomhub.cli.options import ARCHIVE, INGEST
from dicomhub.cli.registry import BLOB_JOBS, OneOf, arg, command
from dicomhub.config import Settings

__all__: list[str] = []


@command(
    "backup",
    help="a consistent backup of the index and the blobs, taken while the server runs",
    description="Copies the index as of one commit (SQLite online backup, pg_dump), lists every "
    "blob its rows refer to (blobs.jsonl: key, size, SHA-256) and copies those blobs. DEST must "
    "be a new or empty folder.",
    shared=ARCHIVE,
    args=(
        arg("dest", help="the backup folder (new or empty)"),
        OneOf((
            arg("--blobs", dest="copy_blobs", action="store_true", default=None,
                help="copy the blobs into DEST/blobs (default for a file:// store)"),
            arg("--no-blobs", dest="copy_blobs", action="store_false",
                help="the manifest only: the blobs stay in their store (default for s3://)"),
        )),
        BLOB_JOBS,
        arg("--json", action="store_true"),
    ),
)  # fmt: skip
def _backup(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import closed_after, open_backup

    copy = args.copy_blobs
    if copy is None:
        # S3 keeps its objects (and their versions); a folder on the archive's disk does not.
        copy = not settings.blob_store_url.startswith("s3://")
    with closed_after(open_backup(settings)) as service:
        report = service.backup(Path(args.dest), copy_blobs=copy, jobs=args.jobs)
    m = report.manifest
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2))
    else:
        what = "copied" if m.blobs_copied else f"listed (they stay in {m.store_url})"
        print(
            f"dicomhub: backup in {report.dest}: {m.index_kind} index ({m.index_file}), {m.blobs} blobs "
            f"{what}, {m.bytes} bytes, in {report.seconds:.1f} s"
        )
        if report.gone:
            print(f"  {len(report.gone)} blobs were deleted after the snapshot (marked gone)")
        for line in report.damaged:
            print(f"  damaged in the archive: {line}", file=sys.stderr)
    return 0 if report.ok else 1


@command(
    "restore",
    help="rebuild an (empty) archive from a backup: index, schema upgrade, blobs verified",
    description="Copies the backup's blobs into the archive's store, checking each against the "
    "manifest's size and SHA-256, then puts the index in place and upgrades its schema. Nothing "
    "is restored when a blob is missing or damaged. Stop every server of the target archive first.",
    shared=ARCHIVE,
    args=(
        arg("src", help="the backup folder"),
        arg("--blobs-from", metavar="URL",
            help="read the blobs from this store (default: the backup's blobs/ folder, or the store a "
            "manifest-only backup names)"),
        arg("--force", action="store_true",
            help="restore over an archive that holds instances (its index is replaced)"),
        BLOB_JOBS,
        arg("--json", action="store_true"),
    ),
)  # fmt: skip
def _restore(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import closed_after, open_backup, restore_source

    src = Path(args.src)
    source = restore_source(settings, src, args.blobs_from)
    with closed_after(open_backup(settings)) as service:
        report = service.restore(src, source=source, force=args.force, jobs=args.jobs)
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2))
    else:
        print(
            f"dicomhub: restored {report.instances} instances ({report.index_kind} index, schema "
            f"upgraded), {report.blobs_copied} blobs copied and {report.blobs_verified} verified in "
            f"place ({report.bytes} bytes), in {report.seconds:.1f} s"
        )
        if report.rows_removed:
            print(f"  {len(report.rows_removed)} instances deleted while the backup ran were left out")
    return 0


@command(
    "reindex",
    help="rebuild the index from the blobs alone (when the index is lost)",
    description="Reads the header of every blob the index does not know and indexes it as "
    "ingest does. Labels, users, audit, de-identification mappings and the change log history "
    "are not in the blobs and do not come back. Stop the server first.",
    shared=INGEST,
    args=(arg("--json", action="store_true"),),
)
def _reindex(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import closed_after, open_reindex

    with closed_after(open_reindex(settings)) as service:
        report = service.reindex()
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2))
    else:
        print(
            f"dicomhub: {report.blobs} blobs: {report.indexed} indexed, {report.already_indexed} "
            f"indexed already, {len(report.kept_refused)} kept as refused copies, {len(report.copies)} "
            f"extra copies, {len(report.not_dicom)} not DICOM, {len(report.unreadable)} unreadable, "
            f"in {report.seconds:.1f} s"
        )
        for key, why in report.kept_refused:
            print(f"  refused copy: blob {key}: {why}")
        for key, why in report.not_dicom:
            print(f"  not DICOM: blob {key}: {why}", file=sys.stderr)
        for key, why in report.unreadable:
            print(f"  unreadable: blob {key}: {why}", file=sys.stderr)
    return 0 if report.ok else 1
