"""``dicomhub print-jobs``: the print jobs the Print SCP made (docs/printing.md), newest
first; ``--film`` writes one film's PNG, ``--pdf`` a job's PDF.
"""

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
from dicomhub.model.caller import Caller

if TYPE_CHECKING:
    from dicomhub.services.archive import Archive

__all__: list[str] = []


def _archive(settings: Settings) -> Archive:
    from dicomhub.bootstrap import open_archive

    return open_archive(settings)


@command(
    "print-jobs",
    help="print jobs received by the Print SCP, newest first (or one film's PNG, a job's PDF)",
    shared=ARCHIVE,
    args=(
        arg("--limit", type=int, default=100),
        arg("--json", action="store_true"),
        arg("--job", help="only this job (its id)"),
        arg("--film", type=int, metavar="N", help="with --job and --output: write film N's PNG"),
        arg("--pdf", metavar="ID", help="with --output: write the PDF of job ID"),
        arg("--output", type=Path, help="where --film writes the PNG, --pdf the PDF"),
    ),
)
def _print_jobs(settings: Settings, args: argparse.Namespace) -> int:
    if args.film is not None and (args.job is None or args.output is None):
        print("dicomhub print-jobs: --film needs --job and --output", file=sys.stderr)
        return 2
    if args.pdf is not None and (args.output is None or args.film is not None):
        print("dicomhub print-jobs: --pdf needs --output (and no --film)", file=sys.stderr)
        return 2
    with _archive(settings) as archive:
        try:
            if args.pdf is not None:
                data = archive.printing.job_pdf(args.pdf, Caller.cli())
                args.output.write_bytes(data)
                return 0
            if args.film is not None:
                args.output.write_bytes(archive.printing.film_png(args.job, args.film, Caller.cli()))
                return 0
            if args.job is not None:
                found = [archive.printing.job(args.job, Caller.cli())]
            else:
                found = archive.printing.jobs(Caller.cli(), max(1, args.limit))
        except (DicomhubError, OSError) as exc:  # OSError: --output cannot be written
            print(f"dicomhub print-jobs: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps([job.as_json() for job in found], indent=2))
        return 0
    for job in found:
        layouts = ",".join(film.film_box.get("ImageDisplayFormat", "?") for film in job.films)
        print(
            f"{job.job_id}  {job.state.value:<8}  {job.calling_ae_title:<16}  "
            f"{len(job.films)} film(s)  {layouts}  {job.created_at.isoformat()}"
        )
    return 0
