"""``dicomhub ae add/list/remove``: deprecated aliases of ``dicomhub peer`` for DICOM peers.

An AE added here is a peer named by its AE title with the roles store, query
and retrieve (and move-destination with a port); see docs/peers.md.
"""

from __future__ import annotations

import argparse
import json

from dicomhub.cli.options import ARCHIVE
from dicomhub.cli.registry import arg, command, group
from dicomhub.config import Settings
from dicomhub.model.applicationentity import ApplicationEntity
from dicomhub.model.caller import Caller

__all__: list[str] = []


group("ae", help="deprecated: use `dicomhub peer` (AEs that may associate)", deprecated_for="peer")


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


@command(
    "ae add",
    help="register an AE title, its host and its principal",
    shared=ARCHIVE,
    args=(
        arg("ae_title", metavar="TITLE"),
        arg("--host", required=True, help="host name or address it connects from (and listens on)"),
        arg("--port", type=int, help="port it listens on: makes it a C-MOVE destination"),
        arg("--principal", default="", help="whose grants it acts with (default: the AE title)"),
        arg("--tls-subject", default="", metavar="CN", help="required client certificate Common Name"),
        arg("--description", default=""),
    ),
)
def _add(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    with open_archive(settings) as archive:
        entity = archive.aes.add(
            ApplicationEntity(
                args.ae_title, args.host, args.port, args.principal, args.tls_subject, args.description
            ),
            Caller.cli(),
        )
    port = f":{entity.port}" if entity.port is not None else " (calling only)"
    print(f"dicomhub: registered {entity.ae_title} at {entity.host}{port} as {entity.principal_name}")
    return 0


@command("ae list", help="the registered AEs", shared=ARCHIVE, args=(arg("--json", action="store_true"),))
def _list(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    with open_archive(settings) as archive:
        entities = archive.aes.list()
    if args.json:
        print(json.dumps([_as_json(e) for e in entities], indent=2))
        return 0
    for e in entities:
        port = str(e.port) if e.port is not None else "-"
        tls = f" tls-subject={e.tls_subject}" if e.tls_subject else ""
        print(f"{e.ae_title:<16} {e.host}:{port} principal={e.principal_name}{tls} {e.description}".rstrip())
    return 0


@command("ae remove", help="unregister an AE title", shared=ARCHIVE, args=(arg("ae_title", metavar="TITLE"),))
def _remove(settings: Settings, args: argparse.Namespace) -> int:
    from dicomhub.bootstrap import open_archive

    with open_archive(settings) as archive:
        archive.aes.remove(args.ae_title, Caller.cli())
    print(f"dicomhub: removed {args.ae_title.strip()}")
    return 0
