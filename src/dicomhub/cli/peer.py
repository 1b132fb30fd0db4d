"""``dicomhub peer add/list/show/update/remove``: the one registry of remote systems (docs/peers.md).

Replaces ``dicomhub ae`` and ``dicomhub remote``, which remain as deprecated
aliases. Credentials are never printed: ``list`` and ``show`` say only how
they are held (``bearer``, ``basic`` or ``env:VARIABLE``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicomhub.config import Settings
from dicomhub.model.caller import Caller
from dicomhub.model.peer import DIMSE_ROLES, Peer, Role
from dicomhub.services.peers import coerce

__all__ = ["add_commands", "deprecated"]

_ROLES = ", ".join(r.value for r in Role)


def deprecated(old: str, run: Callable[[Settings, argparse.Namespace], int]) -> Any:
    """``run``, printing first (on stderr) that ``dicomhub OLD`` is now ``dicomhub peer``."""

    def wrapped(settings: Settings, args: argparse.Namespace) -> int:
        print(f"dicomhub: `{old}` is deprecated, use `dicomhub peer` (see docs/peers.md)", file=sys.stderr)
        return run(settings, args)

    return wrapped


def _fields(p: argparse.ArgumentParser, adding: bool) -> None:
    # For update every option defaults to "not given" (SUPPRESS): only those given change.
    d: dict[str, Any] = {} if adding else {"default": argparse.SUPPRESS}
    p.add_argument("--ae-title", metavar="AET", help="its AE title (default with --host: the name)", **d)
    p.add_argument("--host", help="host name or address it connects from and listens on", **d)
    p.add_argument("--port", type=int, help="the port it listens on (C-MOVE, commitment reports, push)", **d)
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--tls", dest="tls", action="store_true", help="call it over DICOM TLS", **d)
    if not adding:
        tls.add_argument("--no-tls", dest="tls", action="store_false", **d)
    p.add_argument("--dicomweb", dest="dicomweb_url", metavar="URL", help="its DICOMweb base URL", **d)
    p.add_argument(
        "--auth",
        metavar="env:VARIABLE|bearer:TOKEN|basic:USER:PASSWORD",
        help="DICOMweb credentials; env:VARIABLE keeps the secret out of the index and the shell history",
        **d,
    )
    p.add_argument("--folder", metavar="PATH", help="a folder of DICOM files (a migration source)", **d)
    p.add_argument("--principal", help="whose grants it acts with (default: its AE title)", **d)
    p.add_argument("--tls-subject", metavar="CN", help="required client certificate Common Name", **d)
    p.add_argument(
        "--roles",
        metavar="ROLE,...",
        help=f"what it may do: {_ROLES} (default for add: store,query,retrieve for a DICOM peer, "
        "+move-destination with a port; migration-source,migration-target otherwise)",
        **d,
    )
    p.add_argument("--migrate-via", choices=["dimse", "dicomweb", "folder"], **d)
    p.add_argument(
        "--retrieve", choices=["auto", "move", "get"], help="how a migration pulls over DIMSE", **d
    )
    p.add_argument("--find-limit", type=int, metavar="N", help="its largest query answer (0: unknown)", **d)
    p.add_argument("--description", **d)


def add_commands(sub: Any, settings_args: Any) -> None:
    peer = sub.add_parser("peer", help="the remote systems dicomhub talks to (AEs, archives, DICOMweb)")
    actions = peer.add_subparsers(dest="peer_command", required=True)

    p = actions.add_parser("add", help="register a peer")
    settings_args(p)
    p.add_argument("name")
    _fields(p, adding=True)
    p.set_defaults(run=_add)

    p = actions.add_parser("list", help="every peer, from the index and the configuration file")
    settings_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_list)

    p = actions.add_parser("show", help="one peer")
    settings_args(p)
    p.add_argument("name")
    p.set_defaults(run=_show)

    p = actions.add_parser("update", help="change fields of a registered peer")
    settings_args(p)
    p.add_argument("name")
    _fields(p, adding=False)
    p.set_defaults(run=_update)

    p = actions.add_parser("remove", help="remove a registered peer (and its migration inventory and jobs)")
    settings_args(p)
    p.add_argument("name")
    p.set_defaults(run=_remove)


def _archive(settings: Settings) -> Any:
    from dicomhub.bootstrap import open_archive

    return open_archive(settings)


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    names = (
        "ae_title", "host", "port", "tls", "dicomweb_url", "auth", "folder", "principal", "tls_subject",
        "roles", "migrate_via", "retrieve", "find_limit", "description",
    )  # fmt: skip
    out = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if "folder" in out and out["folder"]:
        out["folder"] = str(Path(out["folder"]).resolve())
    return out


def _add(settings: Settings, args: argparse.Namespace) -> int:
    fields = _changes(args)
    if fields.get("host") and not fields.get("ae_title"):
        fields["ae_title"] = args.name  # a DICOM peer is named by its AE title
    if not fields.get("roles"):
        if fields.get("ae_title"):
            roles = set(DIMSE_ROLES) | ({Role.MOVE_DESTINATION} if fields.get("port") else set())
        else:
            roles = {Role.MIGRATION_SOURCE} | (
                {Role.MIGRATION_TARGET} if fields.get("dicomweb_url") else set()
            )
        fields["roles"] = [r.value for r in roles]
    archive = _archive(settings)
    try:
        peer = archive.peers.add(
            Peer(args.name, **{k: coerce(k, v) for k, v in fields.items()}), Caller.cli()
        )
    finally:
        archive.close()
    print(
        f"dicomhub: peer {peer.name}: {peer.describe()} roles={','.join(sorted(r.value for r in peer.roles))}"
    )
    return 0


def _row(p: Peer) -> str:
    roles = ",".join(sorted(r.value for r in p.roles)) or "-"
    return f"{p.name:<16} {p.source.value:<6} {roles:<40} {p.describe()}".rstrip()


def _list(settings: Settings, args: argparse.Namespace) -> int:
    archive = _archive(settings)
    try:
        peers = archive.peers.list()
    finally:
        archive.close()
    if args.json:
        print(json.dumps([p.public() for p in peers], indent=2))
        return 0
    for p in peers:
        print(_row(p))
    return 0


def _show(settings: Settings, args: argparse.Namespace) -> int:
    archive = _archive(settings)
    try:
        peer = archive.peers.require(args.name)
    finally:
        archive.close()
    print(json.dumps(peer.public(), indent=2))
    return 0


def _update(settings: Settings, args: argparse.Namespace) -> int:
    archive = _archive(settings)
    try:
        peer = archive.peers.update(args.name, _changes(args), Caller.cli())
    finally:
        archive.close()
    print(f"dicomhub: peer {peer.name} updated: {_row(peer)}")
    return 0


def _remove(settings: Settings, args: argparse.Namespace) -> int:
    archive = _archive(settings)
    try:
        archive.peers.remove(args.name, Caller.cli())
    finally:
        archive.close()
    print(f"dicomhub: peer {args.name.strip()} removed")
    return 0
