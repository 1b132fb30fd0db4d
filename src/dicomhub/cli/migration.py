"""``dicomhub remote``, ``inventory``, ``reconcile`` and ``migrate``.

They work on the data dir / database of a running ``dicomhub serve`` as well
as on an idle one: everything they know is in the index.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomhub.cli.options import ARCHIVE, INGEST
from dicomhub.cli.registry import OneOf, arg, command, group
from dicomhub.config import Settings
from dicomhub.errors import InvalidRequest
from dicomhub.model.migration import ReconcileReport, RemoteArchive, RemoteKind

if TYPE_CHECKING:
    from dicomhub.services.archive import Archive

__all__ = ["print_report"]


group("remote", help="deprecated: use `dicomhub peer` (migration peers)", deprecated_for="peer")


def _parse_dimse(text: str) -> tuple[str, str, int]:
    match = re.match(r"^([^@]{1,16})@(\[[^\]]+\]|[^:]+):(\d{1,5})$", text)
    if not match:
        raise InvalidRequest(f"{text!r} is not AET@HOST:PORT")
    return match.group(1), match.group(2).strip("[]"), int(match.group(3))


def _archive(settings: Settings) -> Archive:
    from dicomhub.bootstrap import open_archive

    return open_archive(settings)


def _with_aet(settings: Settings, args: argparse.Namespace) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, aet=args.aet) if getattr(args, "aet", None) else settings


@command(
    "remote add",
    help="add a remote archive",
    shared=ARCHIVE,
    args=(
        arg("name"),
        OneOf(
            (
                arg("--dimse", metavar="AET@HOST:PORT", help="a DIMSE archive (C-FIND, C-MOVE/C-GET)"),
                arg("--dicomweb", metavar="URL", help="a DICOMweb archive's base URL (QIDO-RS, WADO-RS)"),
                arg("--folder", metavar="PATH", help="a folder of DICOM files"),
            ),
            required=True,
        ),
        arg("--auth", default="", metavar="basic:USER:PASSWORD|bearer:TOKEN", help="DICOMweb credentials"),
        arg(
            "--retrieve",
            choices=["auto", "move", "get"],
            default="auto",
            help="DIMSE: C-MOVE to our AE, C-GET, or C-MOVE falling back to C-GET (default auto)",
        ),
        arg(
            "--find-limit",
            type=int,
            default=0,
            help="the most answers the peer gives to one query (its result limit), 0 if unknown",
        ),
    ),
)
def _remote_add(settings: Settings, args: argparse.Namespace) -> int:
    if args.dimse:
        aet, host, port = _parse_dimse(args.dimse)
        remote = RemoteArchive(
            args.name, RemoteKind.DIMSE, ae_title=aet, host=host, port=port, retrieve=args.retrieve,
            find_limit=args.find_limit,
        )  # fmt: skip
    elif args.dicomweb:
        remote = RemoteArchive(
            args.name, RemoteKind.DICOMWEB, url=args.dicomweb, auth=args.auth, find_limit=args.find_limit
        )
    else:
        remote = RemoteArchive(args.name, RemoteKind.FOLDER, path=str(Path(args.folder).resolve()))
    with _archive(settings) as archive:
        archive.migration.add_remote(remote)
    print(f"dicomhub: remote {remote.name}: {remote.describe()}")
    return 0


@command(
    "remote list", help="list remote archives", shared=ARCHIVE, args=(arg("--json", action="store_true"),)
)
def _remote_list(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    with _archive(settings) as archive:
        remotes = archive.migration.remotes()
    if args.json:
        print(json.dumps([r.public() for r in remotes], indent=2))
        return 0
    table = Table(title=f"dicomhub: {len(remotes)} remote archives")
    table.add_column("name")
    table.add_column("archive", overflow="fold")
    for r in remotes:
        table.add_row(r.name, r.describe())
    Console().print(table)
    return 0


@command(
    "remote remove",
    help="remove a remote archive, its inventory and jobs",
    shared=ARCHIVE,
    args=(arg("name"),),
)
def _remote_remove(settings: Settings, args: argparse.Namespace) -> int:
    with _archive(settings) as archive:
        archive.migration.remove_remote(args.name)
    print(f"dicomhub: remote {args.name} removed")
    return 0


@command(
    "inventory",
    help="walk a remote archive and store what it holds (resumable)",
    shared=ARCHIVE,
    args=(
        arg("name"),
        arg("--from", dest="date_from", metavar="YYYYMMDD", help="first StudyDate"),
        arg("--to", dest="date_to", metavar="YYYYMMDD", help="last StudyDate"),
        arg("--refresh", action="store_true", help="start again instead of resuming"),
        arg("--aet", help="our calling AE title (default: the configured one)"),
        arg("--parallel", type=int, default=4, help="studies asked about at once (default 4)"),
    ),
)
def _inventory(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console

    from dicomhub.migrate.runner import Migrator

    console = Console(stderr=True)
    with _archive(settings) as archive:

        def progress(phase: str, done: int, total: int) -> None:
            if console.is_terminal:
                console.print(f"{phase}: {done}" + (f"/{total}" if total else ""), end="\r")

        inv = Migrator(archive, _with_aet(settings, args)).inventory(
            args.name,
            args.date_from,
            args.date_to,
            refresh=args.refresh,
            parallel=max(1, args.parallel),
            progress=progress,
        )
        windows = archive.migration.inventory_windows(args.name)
    series = sum(len(s.series) for s in inv.studies.values())
    print(
        f"dicomhub: {args.name}: {len(inv.studies)} studies, {series} series, {inv.instance_count} instances"
        f" (found in {windows} date windows)"
    )
    return 0


def print_report(report: ReconcileReport, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(report.as_json(all_studies=args.all), indent=2))
        return
    studies = report.studies if args.all else report.problems()
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(
            ["study_instance_uid", "patient_id", "status", "source_series", "target_series",
             "source_instances", "target_instances", "series_only_in_source", "series_only_in_target",
             "instances_only_in_source", "instances_only_in_target", "attributes", "content_differs"]
        )  # fmt: skip
        for s in studies:
            writer.writerow(
                [s.study_instance_uid, s.patient_id, s.status, s.source_series, s.target_series,
                 s.source_instances, s.target_instances, " ".join(s.series_only_in_source),
                 " ".join(s.series_only_in_target), " ".join(s.instances_only_in_source),
                 " ".join(s.instances_only_in_target),
                 "; ".join(f"{k}: {a!r} != {b!r}" for k, (a, b) in s.attributes.items()),
                 " ".join(s.content_differs)]
            )  # fmt: skip
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    counts = report.counts()
    title = f"{report.source} vs {report.target}: {counts['studies']} studies, {counts['both']} the same"
    table = Table(title=title)
    for col in ("study", "patient", "status", "series", "instances", "detail"):
        table.add_column(col, overflow="fold")
    for s in studies:
        detail = []
        if s.series_only_in_source:
            detail.append(f"series only in {report.source}: {', '.join(s.series_only_in_source)}")
        if s.series_only_in_target:
            detail.append(f"series only in {report.target}: {', '.join(s.series_only_in_target)}")
        if s.instances_only_in_source:
            detail.append(f"{len(s.instances_only_in_source)} instances only in {report.source}")
        if s.instances_only_in_target:
            detail.append(f"{len(s.instances_only_in_target)} instances only in {report.target}")
        detail += [f"{k}: {a!r} != {b!r}" for k, (a, b) in s.attributes.items()]
        if s.content_differs:
            detail.append(f"{len(s.content_differs)} instances with other content")
        table.add_row(
            s.study_instance_uid,
            s.patient_id,
            s.status,
            f"{s.source_series}/{s.target_series}",
            f"{s.source_instances}/{s.target_instances}",
            "; ".join(detail),
        )
    console.print(table)
    console.print("clean" if report.clean else f"{len(report.problems())} studies differ")


@command(
    "reconcile",
    help="compare a remote's inventory with this archive (exit 0 only when clean)",
    shared=ARCHIVE,
    args=(
        arg("name"),
        arg("--against", metavar="NAME", help="compare with another remote's inventory instead"),
        OneOf(
            (
                arg("--json", action="store_true", help="print the report as JSON"),
                arg("--csv", action="store_true", help="print one CSV row per study that differs"),
            )
        ),
        arg("--all", action="store_true", help="list the studies that match too"),
        arg("--push", action="store_true", help="dicomhub is the source and NAME the target (after a push)"),
        arg("--deid", metavar="PROJECT", help="compare the source as de-identified for PROJECT"),
        arg("--deid-option", action="append", default=[], metavar="OPTION",
            help="the de-identification options of that migration (repeatable)"),  # fmt: skip
    ),
)
def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    with _archive(settings) as archive:
        mapping = None
        if args.deid:
            project, options = args.deid, list(args.deid_option)
            mapping = lambda inv: archive.deid.mapped_inventory(project, options, inv)  # noqa: E731
        report = archive.migration.reconcile(
            args.name, against=args.against, push=args.push, map_source=mapping
        )
    print_report(report, args)
    return 0 if report.clean else 1


@command(
    "migrate",
    help="pull what this archive lacks from a remote, or push to one with --to (resumable)",
    description="`migrate NAME` pulls from the remote NAME into dicomhub; `migrate --to NAME` "
    "pushes dicomhub's objects to the remote NAME (C-STORE or STOW-RS). --deid PROJECT "
    "de-identifies every object on the way (the secret as for `dicomhub deid`).",
    # A pull stores what it retrieves through ingest.
    shared=INGEST,
    args=(
        arg("name", nargs="?", help="the remote to pull from"),
        arg("--to", metavar="NAME", help="push to this remote (a DIMSE or DICOMweb archive)"),
        arg(
            "--from",
            dest="source",
            metavar="local",
            default="local",
            help="what a push sends: local (dicomhub's own objects, the only source of a push)",
        ),
        arg("--deid", metavar="PROJECT", help="de-identify on the way, keyed by this project"),
        arg(
            "--deid-option",
            action="append",
            default=[],
            metavar="OPTION",
            help="a PS3.15 Table E.1-1 option for --deid (repeatable), as for `dicomhub deid --option`",
        ),
        arg("--reason", help="why the objects are de-identified (recorded with the run)"),
        arg(
            "--burned-in",
            choices=["refuse", "mask", "allow"],
            help="--deid policy for pixel data that may show burned-in text (default: the configured one)",
        ),
        arg("--since", metavar="YYYYMMDD", help="studies of this StudyDate or later"),
        arg("--until", metavar="YYYYMMDD", help="studies of this StudyDate or earlier"),
        arg("--modality", help="studies with a series of this modality"),
        arg("--patient-list", metavar="FILE", help="studies of the Patient IDs in FILE (one a line)"),
        arg("--parallel", type=int, default=4, help="series retrieved at once (default 4)"),
        arg("--retries", type=int, default=4, help="attempts after the first per series (default 4)"),
        arg("--aet", help="our AE title: calling AE and C-MOVE destination (default: configured)"),
        arg("--quiet", action="store_true", help="no progress bar"),
    ),
)
def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as Bars

    from dicomhub.migrate.runner import Migrator, Progress, owner_name
    from dicomhub.model.migration import JobState

    selection: dict[str, Any] = {
        k: v for k, v in (("since", args.since), ("until", args.until), ("modality", args.modality)) if v
    }
    if args.patient_list:
        try:
            lines = Path(args.patient_list).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InvalidRequest(f"cannot read {args.patient_list}: {exc.strerror}") from exc
        selection["patients"] = [line.strip() for line in lines if line.strip()]
    if bool(args.name) == bool(args.to):
        raise InvalidRequest("name the remote to pull from (migrate NAME) or to push to (migrate --to NAME)")
    if args.to and args.source != "local":
        raise InvalidRequest(
            "a push sends dicomhub's own objects (--from local); to move between two remotes, "
            f"`dicomhub migrate {args.source}` first, then `dicomhub migrate --to {args.to}`"
        )
    transform = None
    if args.deid:
        transform = {"project": args.deid, "options": args.deid_option, "reason": args.reason or "",
                     "actor": getpass.getuser()}  # fmt: skip
        if args.burned_in:
            transform["burned_in"] = args.burned_in
    elif args.deid_option or args.reason or args.burned_in:
        raise InvalidRequest("--deid-option, --reason and --burned-in go with --deid PROJECT")
    name = args.to or args.name
    direction = "push" if args.to else "pull"
    console = Console(stderr=True)
    settings = _with_aet(settings, args)
    owner = owner_name("cli")
    with _archive(settings) as archive:
        migrator = Migrator(archive, settings, retries=max(0, args.retries))
        job_id, resumed = migrator.start(
            name, selection, max(1, args.parallel), owner, direction=direction, transform=transform
        )
        job = archive.migration.job(job_id)
        what = f"{'to' if args.to else 'from'} {name}" + (
            f", de-identified for {args.deid}" if args.deid else ""
        )
        if resumed:
            console.print(
                f"resuming migration job {job_id} {what} (selection {job['selection'] or 'everything'})"
            )
        else:
            console.print(f"migration job {job_id} {what}")
        with Bars(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=args.quiet or not console.is_terminal,
        ) as bars:
            series_bar = bars.add_task("series", total=None)
            instance_bar = bars.add_task("instances", total=None)

            def show(p: Progress) -> None:
                bars.update(series_bar, total=p.series_total, completed=p.series_done + p.series_failed)
                bars.update(instance_bar, total=p.instances_total, completed=p.instances_done)

            state = migrator.run(job_id, owner, progress=show)
        job = archive.migration.job(job_id)
    p = job["progress"]
    print(
        f"dicomhub: migration job {job_id} {job['state']}: {p['series_done']}/{p['series']} series, "
        f"{p['instances_done']}/{p['instances']} instances, {p['bytes_done'] / 1e6:.1f} MB "
        + ("sent" if job["direction"] == "push" else "stored")
        + (f"; final reconcile {'clean' if job['reconcile_clean'] else 'NOT clean'}"
           if job["reconcile_clean"] is not None else "")
    )  # fmt: skip
    if job["notes"]:
        print(f"dicomhub: {job['notes']}")
    if job["transform"] and job["transform"].get("run") is not None:
        print(f"dicomhub: de-identified for project {job['transform']['project']} "
              f"(de-identification run {job['transform']['run']})")  # fmt: skip
    if job["error"]:
        print(f"dicomhub: {job['error']}", file=sys.stderr)
    return 0 if state is JobState.DONE else 1
