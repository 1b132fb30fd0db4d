"""``dicomhub import``, ``ls``, ``conflicts`` and ``db``: what the archive holds, in and out."""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dicomhub.cli.options import ARCHIVE, INGEST
from dicomhub.cli.registry import arg, command
from dicomhub.config import Settings
from dicomhub.errors import DicomhubError
from dicomhub.model.caller import Caller
from dicomhub.model.identifiers import Level
from dicomhub.model.ingest import InstanceOrigin, Part10Object, StoreOutcome
from dicomhub.model.query import Query

__all__ = ["walk"]

_LS_KEYS: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    ),
    Level.STUDY: (
        "PatientID",
        "PatientName",
        "StudyInstanceUID",
        "StudyDate",
        "StudyDescription",
        "AccessionNumber",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
    ),
}
_INTEGER_KEYS = {k for keys in _LS_KEYS.values() for k in keys if k.startswith("NumberOf")}
_INTEGER_KEYS.add("SeriesNumber")


def walk(paths: Sequence[str]) -> Iterator[Path]:
    """The files of ``paths``: each file as given, each folder's files recursively, sorted."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for name in sorted(filenames):
                    yield Path(dirpath) / name
        else:
            yield path


@command(
    "import",
    help="import DICOM files and folders (recursive)",
    shared=INGEST,
    args=(
        arg("paths", nargs="+", help="files or folders"),
        arg("--jobs", type=int, default=4, help="parallel files (default 4)"),
        arg("--quiet", action="store_true", help="no progress bar"),
    ),
)
def _import(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    from rich.table import Table

    from dicomhub.bootstrap import open_archive

    console = Console(stderr=True)
    files = list(walk(args.paths))
    missing = [p for p in files if not p.exists()]
    counts: Counter[str] = Counter()
    rejected: list[tuple[str, str]] = [(str(p), "no such file or folder") for p in missing]
    caller = Caller.cli()

    def one(path: Path) -> tuple[str, str]:
        if path.name.upper() == "DICOMDIR":
            return "skipped", "DICOMDIR (a media directory, not an object)"
        try:
            received = Part10Object(path=str(path))
            result = archive.ingest.store(received, InstanceOrigin.imported(str(path)), caller)
        except OSError as exc:
            return "rejected", f"cannot read: {exc.strerror}"
        except DicomhubError as exc:
            return "rejected", str(exc)
        if result.outcome is StoreOutcome.ALREADY_PRESENT:
            return "already present", ""
        return result.outcome.value, ""

    with open_archive(settings) as archive:
        existing = [p for p in files if p.exists()]
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=args.quiet or not console.is_terminal,
        ) as progress:
            task = progress.add_task("importing", total=len(existing))
            with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
                for path, (outcome, reason) in zip(existing, pool.map(one, existing), strict=True):
                    counts[outcome] += 1
                    if outcome == "rejected":
                        rejected.append((str(path), reason))
                    progress.advance(task)
    counts["rejected"] += len(missing)
    out = Console()
    table = Table(title="dicomhub import")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    for outcome in ("stored", "replaced", "already present", "skipped", "rejected"):
        if counts[outcome] or outcome in ("stored", "already present", "rejected"):
            table.add_row(outcome, str(counts[outcome]))
    out.print(table)
    for name, reason in rejected:
        print(f"rejected: {name}: {reason}")  # one line each, unwrapped: grep-able
    return 1 if rejected else 0


@command(
    "ls",
    help="list what the archive holds",
    shared=ARCHIVE,
    args=(
        arg("--level", choices=["patient", "study", "series"], default="study"),
        arg("--json", action="store_true", help="print JSON instead of a table"),
    ),
)
def _ls(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dicomhub.bootstrap import open_archive

    level = Level.parse(args.level)
    keys = _LS_KEYS[level]
    query = Query(level=level, return_keys=keys)
    rows: list[dict[str, Any]] = []
    with open_archive(settings) as archive:
        for match in archive.search.search(query, Caller.cli()):
            row: dict[str, Any] = {}
            for key in keys:
                value = match.get(key)
                if key == "ModalitiesInStudy":
                    row[key] = list(value or [])
                elif key in _INTEGER_KEYS:
                    row[key] = int(value) if value not in (None, "") else None
                else:
                    row[key] = str(value) if value is not None else ""
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"dicomhub: {len(rows)} {level.value.lower()} entries")
    for key in keys:
        table.add_column(key, overflow="fold")
    for row in rows:
        table.add_row(
            *(
                "\\".join(v) if isinstance(v, list) else ("" if v is None else str(v))
                for v in row.values()
            )
        )
    Console().print(table)
    return 0


@command(
    "db",
    help="index database operations",
    shared=ARCHIVE,
    args=(arg("action", choices=["upgrade"], help="upgrade: apply migrations"),),
)
def _db(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    with open_archive(settings, upgrade=True):
        pass  # opening it upgrades the schema
    print("dicomhub: index schema is up to date")
    return 0


@command(
    "conflicts",
    help="list refused copies kept in quarantine",
    shared=ARCHIVE,
    args=(arg("--json", action="store_true"),),
)
def _conflicts(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dicomhub.bootstrap import open_archive

    with open_archive(settings) as archive:
        rows = archive.statistics.refused_copies()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    table = Table(title=f"dicomhub: {len(rows)} refused copies")
    for col in ("at", "kind", "sop_instance_uid", "source_ae_title", "blob_key", "detail"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            str(r["at"]),
            r["kind"],
            r["sop_instance_uid"],
            r["source_ae_title"] or "",
            r["blob_key"],
            r["detail"],
        )
    Console().print(table)
    return 0
