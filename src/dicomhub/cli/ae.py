"""``dicomhub ae add/list/remove``: deprecated aliases of ``dicomhub peer`` for DICOM peers.

An AE added here is a peer named by its AE title with the roles store, query
and retrieve (and move-destination with a port); see docs/peers.md.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from dicomhub.cli.peer import deprecated
from dicomhub.config import Settings
from dicomhub.model.applicationentity import ApplicationEntity
from dicomhub.model.caller import Caller

__all__ = ["add_commands"]


def add_commands(sub: Any, settings_args: Any) -> None:
    ae = sub.add_parser("ae", help="deprecated: use `dicomhub peer` (AEs that may associate)")
    ae_sub = ae.add_subparsers(dest="ae_command", required=True)

    p = ae_sub.add_parser("add", help="register an AE title, its host and its principal")
    settings_args(p)
    p.add_argument("ae_title", metavar="TITLE")
    p.add_argument("--host", required=True, help="host name or address it connects from (and listens on)")
    p.add_argument("--port", type=int, help="port it listens on: makes it a C-MOVE destination")
    p.add_argument("--principal", default="", help="whose grants it acts with (default: the AE title)")
    p.add_argument("--tls-subject", default="", metavar="CN", help="required client certificate Common Name")
    p.add_argument("--description", default="")
    p.set_defaults(run=deprecated("ae", _add))

    p = ae_sub.add_parser("list", help="the registered AEs")
    settings_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=deprecated("ae", _list))

    p = ae_sub.add_parser("remove", help="unregister an AE title")
    settings_args(p)
    p.add_argument("ae_title", metavar="TITLE")
    p.set_defaults(run=deprecated("ae", _remove))


def _as_json(entity: ApplicationEntity) -> dict[str, object]:
    return {
        "ae_title": entity.ae_title,
        "host": entity.host,
        "port": entity.port,
        "principal": entity.principal_name,
        "tls_subject": entity.tls_subject or None,
        "description": entity.description,
        "created_at": entity.created_at.isoformat() if entity.created_at else None,
    }


def _add(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    archive = open_archive(settings)
    try:
        entity = archive.aes.add(
            ApplicationEntity(
                args.ae_title, args.host, args.port, args.principal, args.tls_subject, args.description
            ),
            Caller.cli(),
        )
    finally:
        archive.close()
    port = f":{entity.port}" if entity.port is not None else " (calling only)"
    print(f"dicomhub: registered {entity.ae_title} at {entity.host}{port} as {entity.principal_name}")
    return 0


def _list(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    archive = open_archive(settings)
    try:
        entities = archive.aes.list()
    finally:
        archive.close()
    if args.json:
        print(json.dumps([_as_json(e) for e in entities], indent=2))
        return 0
    for e in entities:
        port = str(e.port) if e.port is not None else "-"
        tls = f" tls-subject={e.tls_subject}" if e.tls_subject else ""
        print(f"{e.ae_title:<16} {e.host}:{port} principal={e.principal_name}{tls} {e.description}".rstrip())
    return 0


def _remove(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    archive = open_archive(settings)
    try:
        archive.aes.remove(args.ae_title, Caller.cli())
    finally:
        archive.close()
    print(f"dicomhub: removed {args.ae_title.strip()}")
    return 0
