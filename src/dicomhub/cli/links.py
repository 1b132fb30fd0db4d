"""``dicomhub order unmatched`` and ``dicomhub order link``: the reconciliation of
stored studies with orders (see :mod:`dicomhub.services.links`)."""

from __future__ import annotations

import argparse
import json

from dicomhub.cli.options import ARCHIVE
from dicomhub.cli.orders import _archive
from dicomhub.cli.registry import arg, command
from dicomhub.config import Settings
from dicomhub.errors import NotFound
from dicomhub.model.caller import Caller
from dicomhub.services.orders import OrderKey

__all__: list[str] = []


@command(
    "order unmatched",
    help="stored studies that match no order, oldest first",
    shared=ARCHIVE,
    args=(
        arg("--offset", type=int, default=0),
        arg("--limit", type=int, default=100),
        arg("--json", action="store_true"),
    ),
)
def _unmatched(settings: Settings, args: argparse.Namespace) -> int:
    with _archive(settings) as archive:
        found, total = archive.links.unmatched(Caller.cli(), offset=args.offset, limit=args.limit)
    if args.json:
        print(
            json.dumps(
                {"total": total, "offset": args.offset, "studies": [s.public() for s in found]}, indent=2
            )
        )
    else:
        for s in found:
            print(
                f"{s.study_instance_uid:<64} {s.accession_number or '-':<16} {s.patient_id} {s.patient_name}"
            )
        print(f"dicomhub: {len(found)} of {total} unmatched studies")
    return 0


@command(
    "order link",
    help="link a stored study to an order by hand (audited)",
    shared=ARCHIVE,
    args=(arg("study_instance_uid"), arg("order", help="the order's Accession Number or id")),
)
def _link(settings: Settings, args: argparse.Namespace) -> int:
    with _archive(settings) as archive:
        key = OrderKey(accession_number=args.order)
        try:
            archive.orders.order(key, Caller.cli())
        except NotFound:
            key = OrderKey(order_id=args.order)
        order = archive.links.link_by_hand(args.study_instance_uid, key, Caller.cli())
    print(f"dicomhub: study {args.study_instance_uid} linked to order {order.accession_number}")
    return 0
