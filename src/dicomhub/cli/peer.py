"""``dicomhub peer add/list/show/update/remove``: the one registry of remote systems (docs/peers.md).

Replaces ``dicomhub ae`` and ``dicomhub remote``, which remain as deprecated
aliases. Credentials are never printed: ``list`` and ``show`` say only how
they are held (``bearer``, ``basic`` or ``env:VARIABLE``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomhub.cli.options import ARCHIVE
from dicomhub.cli.registry import Arg, OneOf, arg, command, group
from dicomhub.config import Settings
from dicomhub.model.caller import Caller
from dicomhub.model.peer import DIMSE_ROLES, Peer, Role
from dicomhub.services.peers import coerce

if TYPE_CHECKING:
    from dicomhub.services.archive import Archive

__all__: list[str] = []

_ROLES = ", ".join(r.value for r in Role)


def _fields(adding: bool) -> tuple[Arg | OneOf, ...]:
    # For update every option defaults to "not given" (SUPPRESS): only those given change.
    d: dict[str, Any] = {} if adding else {"default": argparse.SUPPRESS}
    tls = [arg("--tls", dest="tls", action="store_true", help="call it over DICOM TLS", **d)]
    if not adding:
        tls.append(arg("--no-tls", dest="tls", action="store_false", **d))
    return (
        arg("--ae-title", metavar="AET", help="its AE title (default with --host: the name)", **d),
        arg("--host", help="host name or address it connects from and listens on", **d),
        arg("--port", type=int, help="the port it listens on (C-MOVE, commitment reports, push)", **d),
        OneOf(tuple(tls)),
        arg("--dicomweb", dest="dicomweb_url", metavar="URL", help="its DICOMweb base URL", **d),
        arg(
            "--auth",
            metavar="env:VARIABLE|bearer:TOKEN|basic:USER:PASSWORD",
            help="DICOMweb credentials; env:VARIABLE keeps the secret out of the index and the shell history",
            **d,
        ),
        arg("--folder", metavar="PATH", help="a folder of DICOM files (a migration source)", **d),
        arg("--principal", help="whose grants it acts with (default: its AE title)", **d),
        arg("--tls-subject", metavar="CN", help="required client certificate Common Name", **d),
        arg(
            "--roles",
            metavar="ROLE,...",
            help=f"what it may do: {_ROLES} (default for add: store,query,retrieve for a DICOM peer, "
            "+move-destination with a port; migration-source,migration-target otherwise)",
            **d,
        ),
        arg("--migrate-via", choices=["dimse", "dicomweb", "folder"], **d),
        arg("--retrieve", choices=["auto", "move", "get"], help="how a migration pulls over DIMSE", **d),
        arg("--find-limit", type=int, metavar="N", help="its largest query answer (0: unknown)", **d),
        arg("--description", **d),
    )


group("peer", help="the remote systems dicomhub talks to (AEs, archives, DICOMweb)")


def _archive(settings: Settings) -> Archive:
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


@command("peer add", help="register a peer", shared=ARCHIVE, args=(arg("name"), *_fields(adding=True)))
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
    with _archive(settings) as archive:
        peer = archive.peers.add(
            Peer(args.name, **{k: coerce(k, v) for k, v in fields.items()}), Caller.cli()
        )
    print(
        f"dicomhub: peer {peer.name}: {peer.describe()} roles={','.join(sorted(r.value for r in peer.roles))}"
    )
    return 0


def _row(p: Peer) -> str:
    roles = ",".join(sorted(r.value for r in p.roles)) or "-"
    return f"{p.name:<16} {p.source.value:<6} {roles:<40} {p.describe()}".rstrip()


@command(
    "peer list",
    help="every peer, from the index and the configuration file",
    shared=ARCHIVE,
    args=(arg("--json", action="store_true"),),
)
def _list(settings: Settings, args: argparse.Namespace) -> int:
    with _archive(settings) as archive:
        peers = archive.peers.list()
    if args.json:
        print(json.dumps([p.public() for p in peers], indent=2))
        return 0
    for p in peers:
        print(_row(p))
    return 0


@command("peer show", help="one peer", shared=ARCHIVE, args=(arg("name"),))
def _show(settings: Settings, args: argparse.Namespace) -> int:
    with _archive(settings) as archive:
        peer = archive.peers.require(args.name)
    print(json.dumps(peer.public(), indent=2))
    return 0


@command(
    "peer update",
    help="change fields of a registered peer",
    shared=ARCHIVE,
    args=(arg("name"), *_fields(adding=False)),
)
def _update(settings: Settings, args: argparse.Namespace) -> int:
    with _archive(settings) as archive:
        peer = archive.peers.update(args.name, _changes(args), Caller.cli())
    print(f"dicomhub: peer {peer.name} updated: {_row(peer)}")
    return 0


@command(
    "peer remove",
    help="remove a registered peer (and its migration inventory and jobs)",
    shared=ARCHIVE,
    args=(arg("name"),),
)
def _remove(settings: Settings, args: argparse.Namespace) -> int:
    with _archive(settings) as archive:
        archive.peers.remove(args.name, Caller.cli())
    print(f"dicomhub: peer {args.name.strip()} removed")
    return 0
