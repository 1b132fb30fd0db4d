"""``dicomhub ohif install|status|uninstall``: the OHIF viewer served at ``/ohif`` (docs/ohif.md).

The install fetches the prebuilt ``@ohif/app`` package with ``npm pack`` from
the registry npm is configured with (or takes a tarball already fetched),
checks it against npm's integrity and unpacks it into the data directory
(see :mod:`dicomhub.services.ohif`); a running ``serve`` serves it at once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from dicomhub.cli.options import ARCHIVE
from dicomhub.cli.registry import arg, command, group
from dicomhub.config import Settings
from dicomhub.services import ohif

__all__: list[str] = []

group("ohif", help="the OHIF viewer served at /ohif")


def _dicomweb_root(settings: Settings) -> str:
    # public_base_url is the DICOMweb root as clients reach it; without it, the viewer's origin.
    return settings.public_base_url.rstrip("/")


@command(
    "ohif install",
    help="fetch the prebuilt OHIF viewer (npm's @ohif/app) into the data directory",
    shared=ARCHIVE,
    args=(
        arg(
            "--version",
            default=ohif.OHIF_VERSION,
            help=f"@ohif/app version (default {ohif.OHIF_VERSION})",
        ),
        arg(
            "--from-tarball",
            type=Path,
            help="install this .tgz (from npm pack)",
        ),
        arg(
            "--integrity",
            help="npm's dist.integrity (sha512-...) of the tarball",
        ),
    ),
)
def _install(settings: Settings, args: argparse.Namespace) -> int:
    root = _dicomweb_root(settings)
    if args.from_tarball is not None:
        done = ohif.install(settings.data_dir, args.from_tarball, root, args.integrity)
    else:
        with tempfile.TemporaryDirectory(prefix="dicomhub-ohif-") as tmp:
            tarball, integrity = ohif.fetch_from_registry(args.version, Path(tmp))
            if args.integrity and args.integrity != integrity:
                print(f"dicomhub: the registry's integrity {integrity} is not --integrity", file=sys.stderr)
                return 1
            done = ohif.install(settings.data_dir, tarball, root, integrity)
    print(f"OHIF {done.version} installed in {done.path}; `dicomhub serve` serves it at /ohif/")
    return 0


@command("ohif status", help="the installed OHIF viewer, if any", shared=ARCHIVE)
def _status(settings: Settings, args: argparse.Namespace) -> int:
    found = ohif.active_viewer(settings.data_dir)
    if found is None:
        print("OHIF is not installed (dicomhub ohif install)")
        return 1
    print(f"OHIF {found.version} in {found.path}")
    return 0


@command("ohif uninstall", help="remove the installed OHIF viewer", shared=ARCHIVE)
def _uninstall(settings: Settings, args: argparse.Namespace) -> int:
    removed = ohif.uninstall(settings.data_dir)
    print(f"OHIF {removed.version} removed" if removed else "OHIF was not installed")
    return 0
