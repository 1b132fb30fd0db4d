"""``dicomhub export-metadata``: the index and the stored headers as Parquet files in a
folder, each run adding what changed since the last (docs/analytics.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dicomhub.cli.options import ARCHIVE
from dicomhub.cli.registry import arg, command
from dicomhub.config import Settings
from dicomhub.errors import DicomhubError

if TYPE_CHECKING:
    from dicomhub.services.archive import Archive

__all__: list[str] = []


def _archive(settings: Settings) -> Archive:
    from dicomhub.bootstrap import open_archive

    return open_archive(settings)


@command(
    "export-metadata",
    help="write what changed since the last run as a Parquet file (index rows and headers)",
    shared=ARCHIVE,
    args=(
        arg("--output", type=Path, required=True, help="the folder of the Parquet files (created if absent)"),
        arg("--max-rows", type=int, default=200_000, help="rows per file at most, about (default 200000)"),
        arg("--json", action="store_true"),
    ),
)
def _export_metadata(settings: Settings, args: argparse.Namespace) -> int:
    if args.max_rows < 1:
        print("dicomhub export-metadata: --max-rows must be at least 1", file=sys.stderr)
        return 2
    if args.output.exists() and not args.output.is_dir():
        print(f"dicomhub export-metadata: {args.output} is not a folder", file=sys.stderr)
        return 2
    with _archive(settings) as archive:
        try:
            result = archive.analytics.export(args.output, args.max_rows)
        except (DicomhubError, OSError, ValueError) as exc:
            print(f"dicomhub export-metadata: {exc}", file=sys.stderr)
            return 1
    if args.json:
        summary = {"file": str(result.file) if result.file else None, "rows": result.rows,
                   "first": result.first, "last": result.last}  # fmt: skip
        print(json.dumps(summary))
    elif result.file is None:
        print(f"nothing changed since change {result.last}")
    else:
        print(f"{result.file}: {result.rows} rows, changes {result.first} to {result.last}")
    return 0
