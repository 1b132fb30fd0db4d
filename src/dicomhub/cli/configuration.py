"""``dicomhub config check`` and ``dicomhub config reference``: the settings, where they come from.

``check`` loads the settings exactly as ``serve`` would (same options, same
environment, same file) and prints each with its effective value and source,
or every problem found; ``reference`` writes docs/configuration.md from the
settings model, so that the documentation cannot drift from the code.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from dicomhub.cli.options import SERVER, load_from_args, settings_flags, settings_parser
from dicomhub.cli.registry import arg, group, standalone
from dicomhub.config import (
    NON_SETTING_VARIABLES,
    InvalidSettings,
    LoadedSettings,
    Problem,
    display_value,
    setting_specs,
)

__all__ = ["masked", "reference_markdown"]

# Settings whose value is itself a secret, by name. Key and certificate settings
# hold paths, which are worth seeing; their files are never read here.
_SECRET_NAME = re.compile(r"secret|token|password|passwd|credential", re.IGNORECASE)
# user:password@ in a URL (a database URL may carry its password).
_URL_PASSWORD = re.compile(r"(://[^/:@\s]*:)[^/@\s]*@")


def masked(name: str, text: str) -> str:
    """``text``, the value of setting ``name``, safe to print: secrets replaced by ``***``.

    Parameters
    ----------
    name
        The setting: a name with secret, token, password or credential in it is a secret.
    text
        Its value as :func:`dicomhub.config.display_value` writes it.

    Returns
    -------
    str
        ``***`` for a secret that is set; else ``text`` with any URL password masked.
    """
    if text and _SECRET_NAME.search(name):
        return "***"
    return _URL_PASSWORD.sub(r"\1***@", text)


group("config", help="check the configuration; write its reference")


@standalone(
    "config check",
    help="print the effective configuration and the source of each value; exit 2 on any problem",
    description="Loads the settings as `serve` would, from the same options, DICOMHUB_* "
    "variables and --config file, and lists every problem (not only the first).",
    # It reports the problems of loading the settings itself, every one of them.
    shared=SERVER,
    args=(arg("--json", action="store_true", help="print JSON instead of a table"),),
)
def _check(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dicomhub.config.checks import anonymous_network_refusal
    from dicomhub.errors import ConfigurationError
    from dicomhub.plugins.host import PluginHost
    from dicomhub.plugins.loader import load_plugins

    try:
        loaded = load_from_args(args)
    except InvalidSettings as exc:
        return _report(exc.problems, args.json)
    refusal = anonymous_network_refusal(loaded.settings)
    if refusal is not None:  # a configuration serve refuses to start with
        return _report([Problem(str(loaded.sources["host"]), "host", refusal)], args.json)
    try:  # the enabled plugins load as serve would load them
        PluginHost(load_plugins(loaded.settings.plugins)).check_routes(loaded.settings.routes)
    except ConfigurationError as exc:
        return _report([Problem(str(loaded.sources["plugins"]), "plugins", str(exc))], args.json)
    rows = _rows(loaded)
    if args.json:
        settings = {name: {"value": plain, "source": source} for name, _text, plain, source in rows}
        print(json.dumps({"valid": True, "settings": settings}, indent=2))
        return 0
    table = Table(title="dicomhub: effective configuration")
    for col in ("setting", "value", "source"):
        table.add_column(col, overflow="fold")
    for name, text, _plain, source in rows:
        table.add_row(name, text, source)
    Console().print(table)
    return 0


def _rows(loaded: LoadedSettings) -> list[tuple[str, str, Any, str]]:
    """(setting, value as text, value for JSON, source) of every setting, secrets masked."""
    rows = []
    for name in setting_specs():
        value = getattr(loaded.settings, name)
        text = masked(name, display_value(value))
        plain: Any = text
        if isinstance(value, bool | int | float) and text == display_value(value):
            plain = value
        elif isinstance(value, tuple):
            plain = [masked(name, display_value(v)) for v in value]
        rows.append((name, text, plain, str(loaded.sources[name])))
    return rows


def _report(problems: Any, as_json: bool) -> int:
    if as_json:
        errors = [{"source": p.where, "key": p.key, "message": p.message} for p in problems]
        print(json.dumps({"valid": False, "errors": errors}, indent=2))
    else:
        print(f"dicomhub: configuration error: {InvalidSettings(problems)}", file=sys.stderr)
    return 2


@standalone(
    "config reference",
    help="write the configuration reference (docs/configuration.md) from the settings model",
    args=(arg("--output", help="write to FILE instead of standard output"),),
)
def _reference(args: argparse.Namespace) -> int:
    text = reference_markdown()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def reference_markdown() -> str:
    """docs/configuration.md: every setting with its type, default, variable, flag and meaning.

    Generated from :func:`dicomhub.config.setting_specs` and the options of
    ``serve``; ``tests/unit/test_config_reference.py`` fails when the
    committed file differs.
    """
    scratch = settings_parser()
    flags = settings_flags(scratch)
    helps = {a.dest: a.help or "" for a in scratch._actions}
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `dicomhub config reference --output docs/configuration.md`"
        " from the settings model (src/dicomhub/config/__init__.py): do not edit by hand. -->",
        "",
        "Every setting can be given in a TOML file (`--config FILE` or `DICOMHUB_CONFIG`; the key is",
        "the setting's name, at the top level or under a `[dicomhub]` table, with tables as",
        "`[dicomhub.NAME]`), as a `DICOMHUB_*` environment variable and,",
        "for most, as a command-line flag. Flags win over variables, variables over the file, the",
        "file over the default. `dicomhub config check` prints the effective value and source of",
        "each setting, and every problem: a value a setting does not allow, an unknown key in the",
        "file (with its line) or an unknown `DICOMHUB_` variable. `serve` and the other commands",
        "stop at start with the same messages.",
        "",
        "Lists are TOML arrays in the file; in a variable or a flag given once, items are separated",
        "as shown (a repeatable flag takes one item each time). Booleans are `true`/`false`, `1`/`0`,",
        "`yes`/`no` or `on`/`off`, in any case, and nothing else.",
        "",
        "`DICOMHUB_` variables that are not settings:",
        "",
        *(f"- `{var}`: {what}" for var, what in NON_SETTING_VARIABLES.items()),
        "",
        "## Settings",
        "",
    ]
    for spec in setting_specs().values():
        dest, flag = flags.get(spec.name, ("", ""))
        meaning = spec.doc or helps.get(dest, "")
        default = display_value(spec.default)
        lines += [f"### `{spec.name}`", "", meaning or "(undocumented)", ""]
        lines.append(f"- type: {spec.describe()}")
        lines.append(f"- default: `{default}`" if default else "- default: empty")
        lines.append(f"- variable: `{spec.variable}`")
        for alias in spec.aliases:
            lines.append(f"- also: `{alias}` in the file, `DICOMHUB_{alias.upper()}`")
        if flag:
            repeat = " (repeatable)" if _is_append(scratch, dest) else ""
            detail = f": {helps[dest]}" if spec.doc and helps.get(dest) else ""
            lines.append(f"- flag: `{flag}`{repeat}{detail}")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _is_append(p: argparse.ArgumentParser, dest: str) -> bool:
    return any(a.dest == dest and isinstance(a, argparse._AppendAction) for a in p._actions)
