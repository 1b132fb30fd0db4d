"""``dicomhub study modify|split|merge|corrections`` and ``dicomhub patient merge``:
operator corrections of stored studies, each recorded and audited (docs/corrections.md).

Works on the index directly, while the server runs or not, as the operator at
the command line; prints the correction record as JSON.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from dicomhub.cli.options import ARCHIVE
from dicomhub.cli.registry import arg, command
from dicomhub.config import Settings
from dicomhub.errors import InvalidRequest
from dicomhub.model.caller import Caller

if TYPE_CHECKING:
    from dicomhub.services.corrections import CorrectionService

__all__: list[str] = []

_SET = arg(
    "--set",
    dest="assignments",
    action="append",
    default=[],
    metavar="Keyword=Value",
    help="a study or Patient module attribute to set (repeatable)",
)
_REASON = arg("--reason", default="", help="why (kept in the record)")


def _run(settings: Settings, call: Any) -> int:
    from dicomhub.bootstrap import open_archive

    with open_archive(settings) as archive:
        service: CorrectionService | None = archive.corrections
        if service is None:  # bootstrap always wires it; a hand-made Archive may not
            raise InvalidRequest("corrections are not available in this archive")
        done = call(service)
    print(json.dumps(done, indent=2))
    return 0


@command(
    "study modify",
    help="set study / Patient module attributes of a stored study (recorded, audited)",
    shared=ARCHIVE,
    args=(
        arg("study", metavar="STUDY_UID"),
        _SET,
        arg("--new-uids", action="store_true", help="write the objects again under new UIDs"),
        arg(
            "--source",
            choices=["reject", "keep"],
            default="reject",
            help="with --new-uids: reject the originals (IOCM) or keep them",
        ),  # fmt: skip
        _REASON,
    ),
)
def _modify(settings: Settings, args: argparse.Namespace) -> int:
    return _run(
        settings,
        lambda s: s.modify(
            Caller.cli(),
            args.study,
            args.assignments,
            new_uids=args.new_uids,
            source=args.source,
            reason=args.reason,
        ),  # fmt: skip
    )


@command(
    "study split",
    help="move series of a study to a new study (new UIDs; the originals rejected)",
    shared=ARCHIVE,
    args=(
        arg("study", metavar="STUDY_UID"),
        arg("--series", nargs="+", required=True, metavar="SERIES_UID"),
        _SET,
        _REASON,
    ),
)
def _split(settings: Settings, args: argparse.Namespace) -> int:
    return _run(
        settings,
        lambda s: s.split(Caller.cli(), args.study, args.series, args.assignments, reason=args.reason),
    )


@command(
    "study merge",
    help="copy source studies into a target study (new UIDs; the sources rejected)",
    shared=ARCHIVE,
    args=(
        arg("target", metavar="TARGET_STUDY_UID"),
        arg("sources", nargs="+", metavar="SOURCE_STUDY_UID"),
        arg("--force", action="store_true", help="merge even studies of different patients"),
        _REASON,
    ),
)
def _merge(settings: Settings, args: argparse.Namespace) -> int:
    return _run(
        settings,
        lambda s: s.merge_studies(
            Caller.cli(), args.target, args.sources, force=args.force, reason=args.reason
        ),
    )


@command(
    "study corrections",
    help="list the correction records (of one study)",
    shared=ARCHIVE,
    args=(arg("study", metavar="STUDY_UID", nargs="?"),),
)
def _corrections(settings: Settings, args: argparse.Namespace) -> int:
    return _run(settings, lambda s: s.records(Caller.cli(), args.study))


@command(
    "patient merge",
    help="file every study of one archive patient under another (as HL7 ADT^A40)",
    shared=ARCHIVE,
    args=(
        arg("--into", required=True, metavar="PATIENT_ID", help="the surviving Patient ID"),
        arg("--from", dest="prior", required=True, metavar="PATIENT_ID", help="the Patient ID merged away"),
        _REASON,
    ),
)
def _merge_patients(settings: Settings, args: argparse.Namespace) -> int:
    return _run(settings, lambda s: s.merge_patients(Caller.cli(), args.into, args.prior, reason=args.reason))
