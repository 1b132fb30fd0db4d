"""``dicomhub mpps list|show``: the Modality Performed Procedure Steps received, their
status and the orders they moved (docs/orders.md); read-only, on the index directly.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from dicomhub.cli.options import ARCHIVE
from dicomhub.cli.registry import arg, command, group
from dicomhub.config import Settings
from dicomhub.model.caller import Caller
from dicomhub.model.mpps import PerformedStepStatus

if TYPE_CHECKING:
    from dicomhub.services.archive import Archive

__all__: list[str] = []

group("mpps", help="Modality Performed Procedure Steps (MPPS) received")


def _archive(settings: Settings) -> Archive:
    from dicomhub.bootstrap import open_archive

    return open_archive(settings)


@command(
    "mpps list",
    help="performed procedure steps, oldest first, with their linked orders",
    shared=ARCHIVE,
    args=(
        arg("--status", action="append", default=[], choices=[s.name.lower() for s in PerformedStepStatus]),
        arg("--unlinked", action="store_true", help="only the steps no order matched (unscheduled)"),
        arg("--json", action="store_true"),
    ),
)
def _list(settings: Settings, args: argparse.Namespace) -> int:
    status = [PerformedStepStatus[s.upper()] for s in args.status]
    with _archive(settings) as archive:
        found = archive.mpps.steps(Caller.cli(), status=status, linked=False if args.unlinked else None)
    if args.json:
        print(json.dumps([s.public() for s in found], indent=2))
        return 0
    for s in found:
        orders = ",".join(s.linked_orders) or "unlinked"
        accessions = ",".join(r.accession_number for r in s.refs if r.accession_number) or "-"
        print(f"{s.sop_instance_uid}  {s.status.value:<12}  {s.modality or '-':<4}  {accessions}  {orders}")
    return 0


@command(
    "mpps show",
    help="one performed procedure step with its attributes (DICOM JSON)",
    shared=ARCHIVE,
    args=(arg("uid", help="its SOP Instance UID"),),
)
def _show(settings: Settings, args: argparse.Namespace) -> int:
    with _archive(settings) as archive:
        step = archive.mpps.show(args.uid, Caller.cli())
    print(json.dumps({**step.public(), "attributes": step.dataset().to_json_dict()}, indent=2))
    return 0
