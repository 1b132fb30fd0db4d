"""``dicomhub deid``: de-identify DICOM files and folders offline (no server, no index).

The secret comes from ``DICOMHUB_DEID_SECRET`` or the configured key file,
never from an argument (it would be visible in the process list and in shell
history). Output files are named by UIDs the engine produced, each checked
to be a valid UID before it becomes a path component.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dicomhub.cli.content import walk
from dicomhub.cli.options import OFFLINE
from dicomhub.cli.registry import arg, command
from dicomhub.config import Settings
from dicomhub.deid import Options, Profile, ProjectKey, Recipe, deidentify, load_secret
from dicomhub.errors import DeidentificationError
from dicomhub.model.identifiers import is_valid_uid

__all__: list[str] = []


@dataclass
class _Outcome:
    source: str
    status: str  # written, would write, refused, failed, skipped
    output: str = ""
    reason: str = ""
    actions: list[dict[str, str]] = field(default_factory=list)


@command(
    "deid",
    help="de-identify DICOM files and folders into a new folder (PS3.15 Basic Profile + options)",
    description="De-identify files offline. The project's secret is read from "
    "$DICOMHUB_DEID_SECRET or the key file named by deid_key_file in the configuration.",
    # No archive: only the configuration (deid_key_file) is read.
    shared=OFFLINE,
    args=(
        arg("paths", nargs="+", metavar="SRC", help="files or folders (recursive)"),
        arg("--out", required=True, help="output folder (STUDY/SERIES/INSTANCE.dcm below it)"),
        arg("--project", required=True, help="project name: keys every replacement value"),
        arg(
            "--option",
            action="append",
            default=[],
            metavar="OPTION",
            help=f"a Table E.1-1 option (repeatable): {', '.join(Options.names())}",
        ),
        arg("--recipe", help="TOML file of per-attribute overrides (see docs/deidentification.md)"),
        arg("--dry-run", action="store_true", help="write nothing; print what would change"),
        arg("--json", action="store_true", help="print the report as JSON"),
        arg(
            "--burned-in",
            choices=["refuse", "allow"],
            default="refuse",
            help="objects whose pixel data may show burned-in text: leave them out (default) or write them",
        ),
        arg("--jobs", type=int, default=1, help="worker processes (default 1)"),
    ),
)
def _run(settings: Settings, args: argparse.Namespace) -> int:
    key_file = Path(settings.deid_key_file) if settings.deid_key_file else None
    try:
        # Read here, not through Settings: the secret must never sit in a value
        # that gets printed, logged or passed around with the configuration.
        secret = load_secret(key_file, os.environ)
    except DeidentificationError as exc:
        print(f"dicomhub deid: {exc}", file=sys.stderr)
        return 2
    options = Options.parse(args.option)
    recipe = Recipe.load(args.recipe) if args.recipe else None
    profile = Profile(name=args.project, options=options, recipe=recipe)
    key = ProjectKey.derive(secret, args.project)
    out_dir = Path(args.out)
    files = list(walk(args.paths))
    job = _Job(profile, key, out_dir, args.dry_run, args.burned_in == "allow")
    outcomes: list[_Outcome] = []
    if args.jobs > 1 and len(files) > 1:  # below 2: in this process
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            outcomes.extend(pool.map(job, files, chunksize=16))
    else:
        outcomes.extend(job(p) for p in files)
    return _report(outcomes, args)


class _Job:
    """One file's de-identification; a picklable callable so a process pool can run it."""

    def __init__(self, profile: Profile, key: ProjectKey, out: Path, dry_run: bool, allow: bool) -> None:
        self.profile, self.key, self.out, self.dry_run, self.allow = profile, key, out, dry_run, allow

    def __call__(self, path: Path) -> _Outcome:
        from pydicom import dcmread
        from pydicom.errors import InvalidDicomError

        source = str(path)
        if not path.exists():
            return _Outcome(source, "failed", reason="no such file or folder")
        if path.name.upper() == "DICOMDIR":
            return _Outcome(source, "skipped", reason="DICOMDIR (a media directory, not an object)")
        try:
            ds = dcmread(path)
            result = deidentify(ds, self.profile, self.key)
        except (InvalidDicomError, OSError) as exc:
            return _Outcome(source, "failed", reason=f"not a readable DICOM file: {exc}")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return _Outcome(source, "failed", reason=f"cannot de-identify: {exc}")
        actions = [asdict(a) for a in result.actions]
        out_ds = result.dataset
        uids = [str(out_ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
        if not all(is_valid_uid(u) for u in uids):
            reason = "no valid Study/Series/SOP Instance UID"
            return _Outcome(source, "failed", reason=reason, actions=actions)
        target = self.out.joinpath(*uids[:2], uids[2] + ".dcm")
        if result.burned_in is not None and not self.allow:
            reason = "may carry burned-in annotation: " + "; ".join(result.burned_in.reasons)
            return _Outcome(source, "refused", str(target), reason, actions)
        if self.dry_run:
            return _Outcome(source, "would write", str(target), actions=actions)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        out_ds.save_as(partial, enforce_file_format=True)
        partial.replace(target)
        return _Outcome(source, "written", str(target), actions=actions)


def _report(outcomes: list[_Outcome], args: argparse.Namespace) -> int:
    counts = Counter(o.status for o in outcomes)
    bad = counts["failed"] + counts["refused"]
    if args.json:
        doc = {
            "counts": dict(counts),
            "files": [
                {k: v for k, v in asdict(o).items() if k != "actions" or args.dry_run} for o in outcomes
            ],
        }
        print(json.dumps(doc, indent=2))
        return 1 if bad else 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if args.dry_run:
        for o in outcomes:
            if not o.actions:
                continue
            table = Table(title=f"{o.source} -> {o.output or o.status}")
            for col in ("attribute", "tag", "name", "action", "detail"):
                table.add_column(col, overflow="fold")
            for a in o.actions:
                table.add_row(a["path"], a["tag"], a["name"], a["action"], a["detail"])
            console.print(table)
    summary = Table(title="dicomhub deid")
    summary.add_column("outcome")
    summary.add_column("files", justify="right")
    for status, n in sorted(counts.items()):
        summary.add_row(status, str(n))
    console.print(summary)
    for o in _problems(outcomes):
        print(f"{o.status}: {o.source}: {o.reason}")  # one line each: grep-able
    return 1 if bad else 0


def _problems(outcomes: list[_Outcome]) -> Iterator[_Outcome]:
    return (o for o in outcomes if o.status in ("failed", "refused"))
