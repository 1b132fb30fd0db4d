"""``dicomhub reject``: reject a study, series or instance with a rejection note (IHE IOCM).

The archive makes a Key Object Selection document with the rejection title of
the reason and stores it through the one ingest path, as a note received by
C-STORE or STOW-RS would be (see docs/rejection.md).
"""

from __future__ import annotations

import argparse
import sys

from dicomhub.cli.options import ARCHIVE
from dicomhub.cli.registry import arg, command
from dicomhub.config import Settings
from dicomhub.errors import InvalidRequest
from dicomhub.model.caller import Caller
from dicomhub.model.rejection import RejectionReason

__all__: list[str] = []


@command(
    "reject",
    help="reject a study, series or instance with a rejection note (IHE IOCM)",
    shared=ARCHIVE,
    args=(
        arg("study", help="Study Instance UID"),
        arg("--series", help="only this Series Instance UID"),
        arg("--instance", help="only this SOP Instance UID (needs --series)"),
        arg(
            "--reason",
            required=True,
            choices=[r.value for r in RejectionReason],
            help="quality (113001), safety (113037), worklist (113038), retention (113039: also deletes)",
        ),
    ),
)
def _reject(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    if args.instance and not args.series:
        print("dicomhub: --instance needs --series", file=sys.stderr)
        return 2
    with open_archive(settings) as archive:
        if archive.rejection is None:  # bootstrap always wires it; a hand-made Archive may not
            raise InvalidRequest("rejection is not available in this archive")
        stored = archive.rejection.reject(
            Caller.cli(), RejectionReason(args.reason), args.study, args.series, args.instance
        )
    print(f"rejection note {stored.sop_instance_uid} stored in series {stored.series_instance_uid}")
    return 0
