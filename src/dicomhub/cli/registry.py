"""The one registry of ``dicomhub`` commands, and the parser built from it.

A command module declares each sub-command next to its handler::

    @command("user token", help="a new token for a user", shared=ARCHIVE,
             args=(arg("name"), arg("--label", default="")))
    def _user_token(settings: Settings, args: argparse.Namespace) -> int: ...

``shared`` names the server-wide options the command uses (see
:mod:`dicomhub.cli.options`): each sub-command's ``--help`` lists those and
its own arguments, nothing else. A command whose words are several
(``user token``) sits below a group registered with :func:`group`.
:func:`build_parser` turns the registry into one argparse parser; the
dispatch (:func:`dicomhub.cli.main`) finds the chosen :class:`Command` in
the parsed namespace under :data:`COMMAND_DEST`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dicomhub import __version__
from dicomhub.cli.options import Shared, add_shared_options, settings_flags
from dicomhub.config import Settings

__all__ = [
    "BLOB_JOBS",
    "COMMAND_DEST",
    "Arg",
    "Command",
    "Group",
    "OneOf",
    "Run",
    "RunWithoutSettings",
    "arg",
    "build_parser",
    "command",
    "commands",
    "group",
    "groups",
    "standalone",
]

# Where the parsed namespace carries the chosen Command.
COMMAND_DEST = "command_spec"

Run = Callable[[Settings, argparse.Namespace], int]
RunWithoutSettings = Callable[[argparse.Namespace], int]
_F = TypeVar("_F", bound=Callable[..., int])


@dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call: its flags (or positional name) and keyword arguments."""

    flags: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)

    def add_to(self, parser: Any) -> None:
        """Add this argument to ``parser`` (a parser or a mutually exclusive group)."""
        parser.add_argument(*self.flags, **self.options)


def arg(*flags: str, **options: Any) -> Arg:
    """An argument of a command, spelled as for ``ArgumentParser.add_argument``."""
    return Arg(flags, options)


# The parallelism of the commands that copy blobs (backup, restore, migrate-storage).
BLOB_JOBS = Arg(("--jobs",), {"type": int, "default": 4, "help": "blobs copied at a time (default 4)"})


@dataclass(frozen=True)
class OneOf:
    """Arguments of which at most one (exactly one when ``required``) may be given."""

    args: tuple[Arg, ...]
    required: bool = False

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Add the mutually exclusive group to ``parser``."""
        exclusive = parser.add_mutually_exclusive_group(required=self.required)
        for item in self.args:
            item.add_to(exclusive)


@dataclass(frozen=True)
class Group:
    """A word that only leads to sub-commands (``dicomhub user``, ``dicomhub peer``)."""

    path: tuple[str, ...]
    help: str
    # ``dicomhub ae`` and ``dicomhub remote``: every command below prints a notice first.
    deprecated_for: str | None = None


@dataclass(frozen=True)
class Command:
    """One sub-command: its words, help, shared options, own arguments and handler.

    Exactly one of ``run`` (called with the loaded settings) and
    ``run_without_settings`` (for commands that need none, or load them their
    own way, as ``config check`` does) is set.
    """

    path: tuple[str, ...]
    help: str
    shared: Shared
    args: tuple[Arg | OneOf, ...] = ()
    description: str | None = None
    run: Run | None = None
    run_without_settings: RunWithoutSettings | None = None
    # Only ``serve`` logs at the configured level; the other commands log warnings.
    logs_at_configured_level: bool = False

    @property
    def name(self) -> str:
        """The command as typed: ``user token``."""
        return " ".join(self.path)


_COMMANDS: dict[tuple[str, ...], Command] = {}
_GROUPS: dict[tuple[str, ...], Group] = {}


def _register(spec: Command) -> None:
    if spec.path in _COMMANDS or spec.path in _GROUPS:
        raise ValueError(f"dicomhub {spec.name} is registered twice")
    for depth in range(1, len(spec.path)):
        if spec.path[:depth] not in _GROUPS:
            raise ValueError(f"dicomhub {spec.name}: register the group {' '.join(spec.path[:depth])} first")
    _COMMANDS[spec.path] = spec


def group(name: str, help: str, *, deprecated_for: str | None = None) -> None:
    """Register a group of sub-commands (``name`` may itself have several words)."""
    path = tuple(name.split())
    if path in _GROUPS or path in _COMMANDS:
        raise ValueError(f"dicomhub {name} is registered twice")
    _GROUPS[path] = Group(path, help, deprecated_for)


def command(
    name: str,
    *,
    help: str,
    shared: Shared,
    args: Sequence[Arg | OneOf] = (),
    description: str | None = None,
    logs_at_configured_level: bool = False,
) -> Callable[[Run], Run]:
    """Register the decorated ``handler(settings, args) -> exit status`` as ``dicomhub NAME``.

    A :class:`~dicomhub.errors.DicomhubError` it raises is printed and gives
    exit status 1.
    """

    def register(handler: Run) -> Run:
        _register(
            Command(tuple(name.split()), help, shared, tuple(args), description, run=handler,
                    logs_at_configured_level=logs_at_configured_level)
        )  # fmt: skip
        return handler

    return register


def standalone(
    name: str,
    *,
    help: str,
    shared: Shared = Shared.NONE,
    args: Sequence[Arg | OneOf] = (),
    description: str | None = None,
) -> Callable[[RunWithoutSettings], RunWithoutSettings]:
    """Register the decorated ``handler(args) -> exit status``, run without loading the settings."""

    def register(handler: RunWithoutSettings) -> RunWithoutSettings:
        _register(
            Command(tuple(name.split()), help, shared, tuple(args), description, run_without_settings=handler)
        )
        return handler

    return register


def commands() -> list[Command]:
    """Every registered command, in the order registered."""
    return list(_COMMANDS.values())


def groups() -> list[Group]:
    """Every registered group, in the order registered."""
    return list(_GROUPS.values())


def group_of(spec: Command) -> Group | None:
    """The group whose notice applies to ``spec`` (its first word's group), if any."""
    return _GROUPS.get(spec.path[:1]) if len(spec.path) > 1 else None


def build_parser(specs: Sequence[Command] | None = None) -> argparse.ArgumentParser:
    """The ``dicomhub`` parser: one sub-parser per registered command (default: all of them)."""
    parser = argparse.ArgumentParser(prog="dicomhub", description="A DICOM archive server.")
    parser.add_argument("--version", action="version", version=f"dicomhub {__version__}")
    subparsers: dict[tuple[str, ...], Any] = {(): parser.add_subparsers(dest="command", required=True)}
    for spec in commands() if specs is None else specs:
        for depth in range(1, len(spec.path)):
            prefix = spec.path[:depth]
            if prefix not in subparsers:
                words = subparsers[prefix[:-1]].add_parser(prefix[-1], help=_GROUPS[prefix].help)
                subparsers[prefix] = words.add_subparsers(dest="_".join(prefix) + "_command", required=True)
        p = subparsers[spec.path[:-1]].add_parser(spec.path[-1], help=spec.help, description=spec.description)
        add_shared_options(p, spec.shared)
        # Before the command's own arguments: an own option named like a setting
        # (``migrate --aet``) is not a settings option.
        p.set_defaults(settings_flags=settings_flags(p), **{COMMAND_DEST: spec})
        for item in spec.args:
            item.add_to(p)
    return parser
