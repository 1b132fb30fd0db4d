"""Commands for de-identification in the archive: runs (``deid-job``), re-identification,
project grants and API tokens (the audit log is ``dicomhub audit``, in :mod:`.security`).

They work on the data dir / database of a running ``dicomhub serve``: a run
started here is picked up by the server's background process (or run here
with ``--now``). Whoever can open the index administers grants and tokens;
re-identification checks the operating-system user's grant.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
from typing import Any

from dicomhub.cli.options import ARCHIVE, INGEST
from dicomhub.cli.registry import arg, command, group
from dicomhub.config import Settings, parse_mask_region
from dicomhub.model.caller import Caller

__all__: list[str] = []

group("deid-job", help="de-identify stored studies into new linked studies (runs)")
group("token", help="API tokens of principals (HTTP Authorization: Bearer)")


def _print_run(run: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(run, indent=2))
        return
    print(
        f"run {run['id']} [{run['status']}] project {run['project']}: {run['source_study_uid']}"
        f" -> {run['target_study_uid'] or '(not yet)'}; {run['total']} instances: {run['stored']} stored,"
        f" {run['already_present']} already present, {run['refused']} refused, {run['failed']} failed"
    )
    print(f"  by {run['actor']} at {run['created_at']}: {run['reason']}")
    if run.get("error"):
        print(f"  error: {run['error']}")
    for item in run.get("items", []):
        if item["status"] not in ("stored", "already-present"):
            print(f"  {item['status']}: {item['source_sop_instance_uid']}: {item['detail'] or ''}")


@command(
    "deid-job start",
    help="de-identify a stored study (or one series) as a new study",
    # The de-identified copies are stored through ingest.
    shared=INGEST,
    args=(
        arg("study", metavar="STUDY_UID"),
        arg("--project", required=True),
        arg("--reason", required=True, help="why (recorded with the run)"),
        arg("--series", metavar="SERIES_UID", help="only this series of the study"),
        arg("--option", action="append", default=[], help="a profile option, e.g. retain-uids (repeatable)"),
        arg("--burned-in", choices=["refuse", "mask", "allow"], help="overrides deid_burned_in"),
        arg(
            "--mask",
            action="append",
            default=[],
            metavar="X,Y,WIDTH,HEIGHT",
            help="a region blanked under --burned-in mask (repeatable; default: deid_mask)",
        ),
        arg("--now", action="store_true", help="run it in this process and wait"),
        arg("--json", action="store_true"),
    ),
)
def _start(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    owner = f"cli:{os.getpid()}" if args.now else None
    with open_archive(settings) as archive:
        run = archive.deid.start_run(
            args.project,
            args.reason,
            Caller.cli(),
            study_uid=args.study,
            series_uid=args.series,
            options=args.option,
            burned_in=args.burned_in,
            mask=[_region(text) for text in args.mask],
            owner=owner,
        )
        if owner is not None:
            run = archive.deid.run_now(int(run["id"]), owner)
    _print_run(run, args.json)
    return 1 if args.now and run["status"] != "done" else 0


def _region(text: str) -> tuple[int, int, int, int]:
    region = parse_mask_region(text)
    return region.x, region.y, region.width, region.height


@command(
    "deid-job list",
    help="runs, newest first",
    shared=ARCHIVE,
    args=(arg("--limit", type=int, default=100), arg("--json", action="store_true")),
)
def _list(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    with open_archive(settings) as archive:
        runs = archive.deid.runs(max(1, args.limit))
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    for run in runs:
        _print_run(run, False)
    return 0


@command(
    "deid-job show",
    help="one run with its per-instance outcomes",
    shared=ARCHIVE,
    args=(arg("id", type=int), arg("--json", action="store_true")),
)
def _show(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    with open_archive(settings) as archive:
        run = archive.deid.run(args.id)
    _print_run(run, args.json)
    return 0


@command(
    "reidentify",
    help="originals behind replacement values (needs the reidentifier grant)",
    shared=ARCHIVE,
    args=(
        arg("--project", required=True),
        arg("values", nargs="+", metavar="VALUE"),
        arg("--json", action="store_true"),
    ),
)
def _reidentify(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    caller = Caller.cli()
    with open_archive(settings) as archive:
        found = archive.deid.reidentify(args.project, args.values, caller.name, caller)
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        for value, originals in found.items():
            text = ", ".join(f"{o['kind']} {o['original']}" for o in originals) or "(no mapping)"
            print(f"{value}: {text}")
    return 0 if all(found.values()) else 1


@command(
    "deid-grant",
    help="grant (or --revoke) a role on a project to a principal",
    shared=ARCHIVE,
    args=(
        arg("principal"),
        arg("--project", required=True),
        arg("--role", required=True, choices=["reidentifier", "deidentifier"]),
        arg("--revoke", action="store_true"),
    ),
)
def _grant(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    actor = getpass.getuser()
    with open_archive(settings) as archive:
        if args.revoke:
            changed = archive.governance.revoke_grant(args.principal, args.role, args.project)
        else:
            changed = archive.governance.grant(args.principal, args.role, args.project, actor)
        archive.governance.audit(
            actor,
            "grant-revoke" if args.revoke else "grant",
            "done" if changed else "unchanged",
            project=args.project,
            detail={"principal": args.principal, "role": args.role},
        )
    verb = "revoked from" if args.revoke else "granted to"
    print(f"{args.role} on {args.project} {verb} {args.principal}" + ("" if changed else " (no change)"))
    return 0


@command(
    "token create",
    help="a new token (printed once, stored as SHA-256)",
    shared=ARCHIVE,
    args=(arg("principal"), arg("--label", default="")),
)
def _token_create(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    with open_archive(settings) as archive:
        token_id, token = archive.governance.create_token(args.principal, args.label)
        archive.governance.audit(
            getpass.getuser(), "token-create", "done", detail={"principal": args.principal, "token": token_id}
        )
    print(token)  # shown once: only its SHA-256 is kept
    return 0


@command(
    "token revoke",
    help="revoke a principal's tokens (or one, by --id)",
    shared=ARCHIVE,
    args=(arg("principal"), arg("--id", type=int, help="only this token")),
)
def _token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    with open_archive(settings) as archive:
        count = archive.governance.revoke_tokens(args.principal, args.id)
        archive.governance.audit(
            getpass.getuser(),
            "token-revoke",
            "done" if count else "unchanged",
            detail={"principal": args.principal, "token": args.id, "revoked": count},
        )
    print(f"{count} token(s) of {args.principal} revoked")
    return 0 if count else 1


@command(
    "token list", help="tokens (never their values)", shared=ARCHIVE, args=(arg("--principal"),)
)
def _token_list(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    with open_archive(settings) as archive:
        tokens = archive.governance.tokens(args.principal)
    print(json.dumps(tokens, indent=2))
    return 0
