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
from typing import TYPE_CHECKING, Any

from dicomhub.config import Settings
from dicomhub.model.caller import Caller

if TYPE_CHECKING:
    from dicomhub.services.administration import SecurityAdministration
    from dicomhub.services.archive import Archive

__all__ = ["add_commands"]




def add_commands(sub: Any, settings_args: Any) -> None:
    user = sub.add_parser("user", help="users and services with API tokens (HTTP Authorization: Bearer)")
    users = user.add_subparsers(dest="user_action", required=True)
    add = users.add_parser("add", help="add a user with grants; prints its first token once")
    settings_args(add)
    add.add_argument("name")
    add.add_argument("--kind", choices=["user", "service"], default="user")
    add.add_argument("--role", action="append", default=[], help="a role (repeatable, paired with --scope)")
    add.add_argument(
        "--scope",
        action="append",
        default=[],
        help="archive, label:NAME, patient:ID, study:UID or project:NAME (one per --role)",
    )
    add.add_argument("--expires", type=float, metavar="DAYS", help="the token expires after DAYS")
    add.set_defaults(run=_user_add)
    listing = users.add_parser("list", help="users with their grants and active tokens")
    settings_args(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_user_list)
    token = users.add_parser("token", help="a new token for a user (printed once)")
    settings_args(token)
    token.add_argument("name")
    token.add_argument("--label", default="")
    token.add_argument("--expires", type=float, metavar="DAYS")
    token.set_defaults(run=_user_token)
    revoke = users.add_parser("revoke", help="revoke a user's tokens (or one, by --token)")
    settings_args(revoke)
    revoke.add_argument("name")
    revoke.add_argument("--token", type=int, metavar="ID")
    revoke.set_defaults(run=_user_revoke)

    grant = sub.add_parser("grant", help="roles of principals at scopes")
    grants = grant.add_subparsers(dest="grant_action", required=True)
    for action, text in (("add", "grant a role at a scope"), ("remove", "remove a grant")):
        p = grants.add_parser(action, help=text)
        settings_args(p)
        p.add_argument("principal")
        p.add_argument("role")
        p.add_argument("scope", help="archive, label:NAME, patient:ID, study:UID or project:NAME")
        p.set_defaults(run=_grant_add if action == "add" else _grant_remove)
    glist = grants.add_parser("list", help="grants (of one principal)")
    settings_args(glist)
    glist.add_argument("principal", nargs="?")
    glist.add_argument("--json", action="store_true")
    glist.set_defaults(run=_grant_list)

    label = sub.add_parser("label", help="labels of studies (grants can name them)")
    labels = label.add_subparsers(dest="label_action", required=True)
    for action, text in (("add", "label a study"), ("remove", "remove a label from a study")):
        p = labels.add_parser(action, help=text)
        settings_args(p)
        p.add_argument("study", metavar="STUDY_UID")
        p.add_argument("label")
        p.set_defaults(run=_label_add if action == "add" else _label_remove)
    llist = labels.add_parser("list", help="labels in use, or the labels of one study")
    settings_args(llist)
    llist.add_argument("study", nargs="?", metavar="STUDY_UID")
    llist.set_defaults(run=_label_list)

    audit = sub.add_parser("audit", help="the audit log, newest first")
    settings_args(audit)
    audit.add_argument("--study", metavar="UID", help="events that touched this study")
    audit.add_argument("--principal", "--actor", dest="principal", metavar="NAME")
    audit.add_argument("--action", help="login, query, retrieve, store, delete, label, security-change...")
    audit.add_argument("--limit", type=int, default=1000)
    audit.add_argument("--json", action="store_true", help="JSON (one array)")
    audit.set_defaults(run=_audit)


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


def _user_token(settings: Settings, args: argparse.Namespace) -> int:
    with _administration(settings) as (archive, admin):
        if not archive.access.principal_exists(args.name):
            print(f"dicomhub user token: no user {args.name!r} (dicomhub user add)")
            return 1
        created = admin.new_token(Caller.cli(), args.name, args.label, args.expires)
    print(created["token"])
    return 0


def _user_revoke(settings: Settings, args: argparse.Namespace) -> int:
    with _administration(settings) as (archive, admin):
        count = admin.revoke(Caller.cli(), args.name, args.token)
    print(f"{count} token(s) of {args.name} revoked")
    return 0 if count else 1


def _grant_add(settings: Settings, args: argparse.Namespace) -> int:
    with _administration(settings) as (archive, admin):
        added = admin.grant(Caller.cli(), args.principal, args.role, args.scope)
    print(f"{args.role} at {args.scope} granted to {args.principal}" + ("" if added else " (held already)"))
    return 0


def _grant_remove(settings: Settings, args: argparse.Namespace) -> int:
    with _administration(settings) as (archive, admin):
        removed = admin.revoke_grant(Caller.cli(), args.principal, args.role, args.scope)
    print(
        f"{args.role} at {args.scope} "
        + ("removed from" if removed else "was not granted to")
        + f" {args.principal}"
    )
    return 0 if removed else 1


def _grant_list(settings: Settings, args: argparse.Namespace) -> int:
    with _administration(settings) as (archive, _admin):
        grants = archive.access.grants(args.principal)
    if args.json:
        print(json.dumps(grants, indent=2))
        return 0
    for g in grants:
        print(f"{g['principal']}: {g['role']} at {g['scope']} (by {g['granted_by']}, {g['granted_at']})")
    return 0


def _label_add(settings: Settings, args: argparse.Namespace) -> int:
    with _administration(settings) as (archive, admin):
        added = admin.add_label(Caller.cli(), args.study, args.label)
    print(f"study {args.study} labelled {args.label}" + ("" if added else " (already)"))
    return 0


def _label_remove(settings: Settings, args: argparse.Namespace) -> int:
    with _administration(settings) as (archive, admin):
        removed = admin.remove_label(Caller.cli(), args.study, args.label)
    print(f"label {args.label} " + ("removed from" if removed else "was not on") + f" study {args.study}")
    return 0 if removed else 1


def _label_list(settings: Settings, args: argparse.Namespace) -> int:
    with _administration(settings) as (archive, _admin):
        if args.study:
            for label in archive.access.labels_of(args.study):
                print(label)
        else:
            for item in archive.access.labels():
                print(f"{item['label']}\t{item['studies']} studies")
    return 0


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
