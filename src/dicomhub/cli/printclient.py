"""``dicomhub print``: print a study, series or some instances to a configured DICOM
printer (docs/printing.md), one line per film.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from dicomhub.cli.options import ARCHIVE
from dicomhub.cli.registry import arg, command
from dicomhub.config import Settings
from dicomhub.errors import DicomhubError
from dicomhub.model.caller import Caller
from dicomhub.model.printclient import PrintRequest

if TYPE_CHECKING:
    from dicomhub.services.archive import Archive

__all__: list[str] = []


def _archive(settings: Settings) -> Archive:
    from dicomhub.bootstrap import open_archive

    return open_archive(settings)


@command(
    "print",
    help="print a study, series or instances to a configured DICOM printer (Print SCU)",
    shared=ARCHIVE,
    args=(
        arg("printer", help="a printer of the configuration ([printers.NAME]): its name or AE title"),
        arg("study", help="Study Instance UID"),
        arg("--series", help="only this series of the study"),
        arg("--instance", action="append", default=[], dest="instances", metavar="UID",
            help="only this instance of the study (repeatable; printed in this order)"),
        arg("--layout", default="STANDARD\\1,1", help="Image Display Format (default STANDARD\\1,1)"),
        arg("--film-size", default="14INX17IN", help="Film Size ID (default 14INX17IN)"),
        arg("--orientation", default="PORTRAIT", help="PORTRAIT (default) or LANDSCAPE"),
        arg("--copies", type=int, default=1),
        arg("--medium", default="PAPER", help="Medium Type (default PAPER)"),
        arg("--destination", help="Film Destination (e.g. MAGAZINE, PROCESSOR)"),
        arg("--color", action="store_true", help="print in colour (a colour printer only)"),
        arg("--grayscale", action="store_true",
            help="print in grey on a colour printer (default: colour when an image has colour)"),
        arg("--json", action="store_true", help="the outcome as JSON"),
    ),
)  # fmt: skip
def _print(settings: Settings, args: argparse.Namespace) -> int:
    if args.color and args.grayscale:
        print("dicomhub print: --color or --grayscale, not both", file=sys.stderr)
        return 2
    request = PrintRequest(
        printer=args.printer,
        study=args.study,
        series=args.series,
        instances=tuple(args.instances),
        layout=args.layout,
        film_size=args.film_size,
        orientation=args.orientation,
        copies=args.copies,
        medium=args.medium,
        destination=args.destination,
        color=True if args.color else False if args.grayscale else None,
    )
    with _archive(settings) as archive:
        if archive.print_client is None:
            print("dicomhub print: printing is not available", file=sys.stderr)
            return 1
        try:
            outcome = archive.print_client.print_instances(request, Caller.cli())
        except DicomhubError as exc:
            print(f"dicomhub print: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(outcome.as_json(), indent=2))
        return 0
    for film in outcome.films:
        note = f"  warning {film.warning}" if film.warning else ""
        print(f"film {film.number}: {len(film.instances)} image(s), status 0x{film.status:04X}{note}")
    print(
        f"printed {len(outcome.films)} film(s) on {outcome.printer} (film session {outcome.film_session_uid})"
    )
    return 0
