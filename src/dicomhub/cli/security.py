"""Access control from the command line: users and their tokens, grants, study labels
and the audit log.

Like the other commands they work on the data dir / database of the archive:
whoever can open the index administers it. Every change is audited with the
operating-system user as the principal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

from dicomhub.cli.options import ARCHIVE
from dicomhub.cli.registry import arg, command, group
from dicomhub.config import Settings
from dicomhub.model.caller import Caller

if TYPE_CHECKING:
    from dicomhub.services.administration import SecurityAdministration
    from dicomhub.services.archive import Archive

__all__: list[str] = []

group("user", help="users and services with API tokens (HTTP Authorization: Bearer)")
group("grant", help="roles of principals at scopes")
group("label", help="labels of studies (grants can name them)")

_SCOPE_HELP = "archive, label:NAME, patient:ID, study:UID or project:NAME"


@contextlib.contextmanager
def _administration(settings: Settings) -> Iterator[tuple[Archive, SecurityAdministration]]:
    """The archive (closed after the block) and its security administration."""
    from dicomhub.bootstrap import open_archive
    from dicomhub.services.administration import SecurityAdministration

    archive = open_archive(settings)
    try:
        yield archive, SecurityAdministration(archive.access, archive.audit)
    finally:
        archive.close()


@command(
    "user add",
    help="add a user with grants; prints its first token once",
    shared=ARCHIVE,
    args=(
        arg("name"),
        arg("--kind", choices=["user", "service"], default="user"),
        arg("--role", action="append", default=[], help="a role (repeatable, paired with --scope)"),
        arg("--scope", action="append", default=[], help=f"{_SCOPE_HELP} (one per --role)"),
        arg("--expires", type=float, metavar="DAYS", help="the token expires after DAYS"),
    ),
)
def _user_add(settings: Settings, args: argparse.Namespace) -> int:
    if len(args.role) != len(args.scope):
        print("dicomhub user add: give one --scope for each --role")
        return 2
    with _administration(settings) as (archive, admin):
        created = admin.add_user(
            Caller.cli(), args.name, args.kind, list(zip(args.role, args.scope, strict=True)), args.expires
        )
    print(f"user {created['name']} added; its token (shown once, id {created['token_id']}):")
    print(created["token"])
    return 0


@command(
    "user list",
    help="users with their grants and active tokens",
    shared=ARCHIVE,
    args=(arg("--json", action="store_true"),),
)
def _user_list(settings: Settings, args: argparse.Namespace) -> int:
    with _administration(settings) as (archive, _admin):
        principals = archive.access.principals()
    if args.json:
        print(json.dumps(principals, indent=2))
        return 0
    for p in principals:
        grants = ", ".join(p["grants"]) or "no grants"
        print(f"{p['name']} ({p['kind']}): {p['active_tokens']} active token(s); {grants}")
    return 0


@command(
    "user token",
    help="a new token for a user (printed once)",
    shared=ARCHIVE,
    args=(arg("name"), arg("--label", default=""), arg("--expires", type=float, metavar="DAYS")),
)
def _user_token(settings: Settings, args: argparse.Namespace) -> int:
    with _administration(settings) as (archive, admin):
        if not archive.access.principal_exists(args.name):
            print(f"dicomhub user token: no user {args.name!r} (dicomhub user add)")
            return 1
        created = admin.new_token(Caller.cli(), args.name, args.label, args.expires)
    print(created["token"])
    return 0


@command(
    "user revoke",
    help="revoke a user's tokens (or one, by --token)",
    shared=ARCHIVE,
    args=(arg("name"), arg("--token", type=int, metavar="ID")),
)
def _user_revoke(settings: Settings, args: argparse.Namespace) -> int:
    with _administration(settings) as (archive, admin):
        count = admin.revoke(Caller.cli(), args.name, args.token)
    print(f"{count} token(s) of {args.name} revoked")
    return 0 if count else 1


_GRANT_ARGS = (arg("principal"), arg("role"), arg("scope", help=_SCOPE_HELP))


@command("grant add", help="grant a role at a scope", shared=ARCHIVE, args=_GRANT_ARGS)
def _grant_add(settings: Settings, args: argparse.Namespace) -> int:
    with _administration(settings) as (archive, admin):
        added = admin.grant(Caller.cli(), args.principal, args.role, args.scope)
    print(f"{args.role} at {args.scope} granted to {args.principal}" + ("" if added else " (held already)"))
    return 0


@command("grant remove", help="remove a grant", shared=ARCHIVE, args=_GRANT_ARGS)
def _grant_remove(settings: Settings, args: argparse.Namespace) -> int:
    with _administration(settings) as (archive, admin):
        removed = admin.revoke_grant(Caller.cli(), args.principal, args.role, args.scope)
    print(
        f"{args.role} at {args.scope} "
        + ("removed from" if removed else "was not granted to")
        + f" {args.principal}"
    )
    return 0 if removed else 1


@command(
    "grant list",
    help="grants (of one principal)",
    shared=ARCHIVE,
    args=(arg("principal", nargs="?"), arg("--json", action="store_true")),
)
def _grant_list(settings: Settings, args: argparse.Namespace) -> int:
    with _administration(settings) as (archive, _admin):
        grants = archive.access.grants(args.principal)
    if args.json:
        print(json.dumps(grants, indent=2))
        return 0
    for g in grants:
        print(f"{g['principal']}: {g['role']} at {g['scope']} (by {g['granted_by']}, {g['granted_at']})")
    return 0


_LABEL_ARGS = (arg("study", metavar="STUDY_UID"), arg("label"))


@command("label add", help="label a study", shared=ARCHIVE, args=_LABEL_ARGS)
def _label_add(settings: Settings, args: argparse.Namespace) -> int:
    with _administration(settings) as (archive, admin):
        added = admin.add_label(Caller.cli(), args.study, args.label)
    print(f"study {args.study} labelled {args.label}" + ("" if added else " (already)"))
    return 0


@command("label remove", help="remove a label from a study", shared=ARCHIVE, args=_LABEL_ARGS)
def _label_remove(settings: Settings, args: argparse.Namespace) -> int:
    with _administration(settings) as (archive, admin):
        removed = admin.remove_label(Caller.cli(), args.study, args.label)
    print(f"label {args.label} " + ("removed from" if removed else "was not on") + f" study {args.study}")
    return 0 if removed else 1


@command(
    "label list",
    help="labels in use, or the labels of one study",
    shared=ARCHIVE,
    args=(arg("study", nargs="?", metavar="STUDY_UID"),),
)
def _label_list(settings: Settings, args: argparse.Namespace) -> int:
    with _administration(settings) as (archive, _admin):
        if args.study:
            for label in archive.access.labels_of(args.study):
                print(label)
        else:
            for item in archive.access.labels():
                print(f"{item['label']}\t{item['studies']} studies")
    return 0


@command(
    "audit",
    help="the audit log, newest first",
    shared=ARCHIVE,
    args=(
        arg("--study", metavar="UID", help="events that touched this study"),
        arg("--principal", "--actor", dest="principal", metavar="NAME"),
        arg("--action", help="login, query, retrieve, store, delete, label, security-change..."),
        arg("--limit", type=int, default=1000),
        arg("--json", action="store_true", help="JSON (one array)"),
    ),
)
def _audit(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.model.audit import AuditAction
    from dicomhub.services.audit import record_dict

    actions = {a.value for a in AuditAction}
    if args.action is not None and args.action not in actions:
        print(f"dicomhub audit: --action is one of {', '.join(sorted(actions))}")
        return 2
    with _administration(settings) as (archive, _admin):
        records = archive.audit.events(
            study_instance_uid=args.study,
            principal=args.principal,
            action=args.action,
            limit=max(1, args.limit),
        )
    events = [record_dict(r) for r in records]
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    for e in events:
        studies = ",".join(s["study_instance_uid"] for s in e["studies"]) or "-"
        where = e["ae_title"] or e["address"] or "-"
        print(
            f"{e['at']} {e['principal']}@{where} [{e['channel']}] {e['action']} outcome={e['outcome']}"
            f" studies={studies} {json.dumps(e['detail'], sort_keys=True)}"
        )
    return 0
