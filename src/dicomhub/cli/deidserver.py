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

from dicomhub.config import Settings, parse_mask_region
from dicomhub.model.caller import Caller

__all__ = ["add_commands"]




def add_commands(sub: Any, settings_args: Any) -> None:
    job = sub.add_parser("deid-job", help="de-identify stored studies into new linked studies (runs)")
    actions = job.add_subparsers(dest="deid_job_action", required=True)
    start = actions.add_parser("start", help="de-identify a stored study (or one series) as a new study")
    settings_args(start)
    start.add_argument("study", metavar="STUDY_UID")
    start.add_argument("--project", required=True)
    start.add_argument("--reason", required=True, help="why (recorded with the run)")
    start.add_argument("--series", metavar="SERIES_UID", help="only this series of the study")
    start.add_argument(
        "--option", action="append", default=[], help="a profile option, e.g. retain-uids (repeatable)"
    )
    start.add_argument("--burned-in", choices=["refuse", "mask", "allow"], help="overrides deid_burned_in")
    start.add_argument(
        "--mask",
        action="append",
        default=[],
        metavar="X,Y,WIDTH,HEIGHT",
        help="a region blanked under --burned-in mask (repeatable; default: deid_mask)",
    )
    start.add_argument("--now", action="store_true", help="run it in this process and wait")
    start.add_argument("--json", action="store_true")
    start.set_defaults(run=_start)
    listing = actions.add_parser("list", help="runs, newest first")
    settings_args(listing)
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_list)
    show = actions.add_parser("show", help="one run with its per-instance outcomes")
    settings_args(show)
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=_show)

    reid = sub.add_parser(
        "reidentify", help="originals behind replacement values (needs the reidentifier grant)"
    )
    settings_args(reid)
    reid.add_argument("--project", required=True)
    reid.add_argument("values", nargs="+", metavar="VALUE")
    reid.add_argument("--json", action="store_true")
    reid.set_defaults(run=_reidentify)

    grant = sub.add_parser("deid-grant", help="grant (or --revoke) a role on a project to a principal")
    settings_args(grant)
    grant.add_argument("principal")
    grant.add_argument("--project", required=True)
    grant.add_argument("--role", required=True, choices=["reidentifier", "deidentifier"])
    grant.add_argument("--revoke", action="store_true")
    grant.set_defaults(run=_grant)

    token = sub.add_parser("token", help="API tokens of principals (HTTP Authorization: Bearer)")
    token_actions = token.add_subparsers(dest="token_action", required=True)
    create = token_actions.add_parser("create", help="a new token (printed once, stored as SHA-256)")
    settings_args(create)
    create.add_argument("principal")
    create.add_argument("--label", default="")
    create.set_defaults(run=_token_create)
    revoke = token_actions.add_parser("revoke", help="revoke a principal's tokens (or one, by --id)")
    settings_args(revoke)
    revoke.add_argument("principal")
    revoke.add_argument("--id", type=int, help="only this token")
    revoke.set_defaults(run=_token_revoke)
    tokens = token_actions.add_parser("list", help="tokens (never their values)")
    settings_args(tokens)
    tokens.add_argument("--principal")
    tokens.set_defaults(run=_token_list)


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


def _start(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    archive = open_archive(settings)
    owner = f"cli:{os.getpid()}" if args.now else None
    try:
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
    finally:
        archive.close()
    _print_run(run, args.json)
    return 1 if args.now and run["status"] != "done" else 0


def _region(text: str) -> tuple[int, int, int, int]:
    region = parse_mask_region(text)
    return region.x, region.y, region.width, region.height


def _list(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    archive = open_archive(settings)
    try:
        runs = archive.deid.runs(max(1, args.limit))
    finally:
        archive.close()
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    for run in runs:
        _print_run(run, False)
    return 0


def _show(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    archive = open_archive(settings)
    try:
        run = archive.deid.run(args.id)
    finally:
        archive.close()
    _print_run(run, args.json)
    return 0


def _reidentify(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    archive = open_archive(settings)
    caller = Caller.cli()
    try:
        found = archive.deid.reidentify(args.project, args.values, caller.name, caller)
    finally:
        archive.close()
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        for value, originals in found.items():
            text = ", ".join(f"{o['kind']} {o['original']}" for o in originals) or "(no mapping)"
            print(f"{value}: {text}")
    return 0 if all(found.values()) else 1


def _grant(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    archive = open_archive(settings)
    actor = getpass.getuser()
    try:
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
    finally:
        archive.close()
    verb = "revoked from" if args.revoke else "granted to"
    print(f"{args.role} on {args.project} {verb} {args.principal}" + ("" if changed else " (no change)"))
    return 0


def _token_create(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    archive = open_archive(settings)
    try:
        token_id, token = archive.governance.create_token(args.principal, args.label)
        archive.governance.audit(
            getpass.getuser(), "token-create", "done", detail={"principal": args.principal, "token": token_id}
        )
    finally:
        archive.close()
    print(token)  # shown once: only its SHA-256 is kept
    return 0


def _token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    archive = open_archive(settings)
    try:
        count = archive.governance.revoke_tokens(args.principal, args.id)
        archive.governance.audit(
            getpass.getuser(),
            "token-revoke",
            "done" if count else "unchanged",
            detail={"principal": args.principal, "token": args.id, "revoked": count},
        )
    finally:
        archive.close()
    print(f"{count} token(s) of {args.principal} revoked")
    return 0 if count else 1


def _token_list(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    archive = open_archive(settings)
    try:
        tokens = archive.governance.tokens(args.principal)
    finally:
        archive.close()
    print(json.dumps(tokens, indent=2))
    return 0
