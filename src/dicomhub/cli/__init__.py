"""The ``dicomhub`` command: one registry of sub-commands, one dispatch.

Each module of this package is a group of commands; each registers its
sub-commands, with their own arguments and the server-wide options they use,
in :mod:`dicomhub.cli.registry`. :func:`main` builds the parser from the
registry, loads the settings the command line gives, and calls the chosen
command's handler, which parses nothing more: it opens what it needs (a
context manager), calls a service and prints.

Exit status: what the handler returns; 1 for a
:class:`~dicomhub.errors.DicomhubError`, printed as ``dicomhub: message``;
2 for a configuration error or a command line argparse refuses; 130 after
Ctrl-C.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import import_module

from dicomhub.cli.options import load_from_args, settings_flags
from dicomhub.cli.registry import COMMAND_DEST, Command, build_parser, group_of
from dicomhub.errors import ConfigurationError, DicomhubError

__all__ = ["COMMAND_MODULES", "load_from_args", "main", "settings_flags"]

# The modules (of this package) whose commands make up ``dicomhub``, in the
# order ``dicomhub --help`` lists them. Importing a module registers its commands.
COMMAND_MODULES: tuple[str, ...] = (
    "server",
    "content",
    "health",
    "ae",
    "auditexport",
    "backup",
    "configuration",
    "deid",
    "deidserver",
    "migration",
    "mpps",
    "orders",
    "patients",
    "corrections",
    "printing",
    "printclient",
    "rejection",
    "analytics",
    "links",
    "peer",
    "repair",
    "routing",
    "security",
    "storage",
    "trash",
    "ohif",
)

for _module in COMMAND_MODULES:
    import_module(f"{__name__}.{_module}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dicomhub ARGV`` (default: the process's arguments); return the exit status."""
    args = build_parser().parse_args(argv)
    spec: Command = getattr(args, COMMAND_DEST)
    try:
        if spec.run_without_settings is not None:
            return int(spec.run_without_settings(args))
        try:
            settings = load_from_args(args).settings
        except ConfigurationError as exc:
            print(f"dicomhub: configuration error: {exc}", file=sys.stderr)
            return 2
        from dicomhub.bootstrap import configure_logging

        level = settings.log_level if spec.logs_at_configured_level else "WARNING"
        configure_logging(level, settings.log_format)
        old = group_of(spec)
        if old is not None and old.deprecated_for:
            print(
                f"dicomhub: `{old.path[0]}` is deprecated, use `dicomhub {old.deprecated_for}` "
                "(see docs/peers.md)",
                file=sys.stderr,
            )
        if spec.run is None:  # pragma: no cover - the registry sets run or run_without_settings
            return 2
        return int(spec.run(settings, args))
    except DicomhubError as exc:
        print(f"dicomhub: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
