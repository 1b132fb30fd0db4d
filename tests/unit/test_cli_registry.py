"""The command registry: every sub-command's help, its options, the dispatch, and closing.

Walks :func:`dicomhub.cli.registry.commands` rather than a list written here,
so that a command added later is checked too.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomhub import bootstrap, cli
from dicomhub.cli import registry
from dicomhub.cli.options import Shared, add_shared_options
from dicomhub.cli.registry import Arg, Command, OneOf, commands
from dicomhub.config import Settings
from dicomhub.errors import ConfigurationError, IndexUnavailable
from dicomhub.services.search import SearchService

ALL = commands()
IDS = [spec.name for spec in ALL]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The settings come from the command line alone, whatever the shell running the tests has.
    for name in list(os.environ):
        if name.startswith("DICOMHUB_"):
            monkeypatch.delenv(name)
    # main() configures logging for the process; the tests after these must find it as it was.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def _subparser(spec: Command) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = registry.build_parser()
    for word in spec.path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def _options(spec: Command) -> set[str]:
    return {flag for action in _subparser(spec)._actions for flag in action.option_strings}


def _own_flags(spec: Command) -> set[str]:
    items: list[Arg] = []
    for item in spec.args:
        items.extend(item.args if isinstance(item, OneOf) else (item,))
    return {flag for item in items for flag in item.flags if flag.startswith("-")}


def _shared_flags(shared: Shared) -> set[str]:
    scratch = argparse.ArgumentParser(add_help=False)
    add_shared_options(scratch, shared)
    return {flag for action in scratch._actions for flag in action.option_strings}


def test_every_command_is_registered_once() -> None:
    assert len(IDS) == len(set(IDS))
    expected = {
        "serve", "import", "ls", "user token", "peer add", "ae add", "remote add", "config check",
        "deid", "deid-job start", "migrate-storage", "backup", "restore", "reindex", "codecs",
    }  # fmt: skip
    assert expected <= set(IDS)


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_help_works(spec: Command, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([*spec.path, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: dicomhub {spec.name} ")
    if spec.help:
        assert spec.path[-1] in out


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_help_lists_only_the_options_the_command_uses(spec: Command) -> None:
    assert _options(spec) == {"-h", "--help"} | _shared_flags(spec.shared) | _own_flags(spec)


def test_user_token_has_no_ingest_or_server_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["user", "token", "--help"])
    out = capsys.readouterr().out
    for flag in ("--duplicate-policy", "--accept-sop-class", "--http-port", "--log-level", "--aet"):
        assert flag not in out
    assert "--data-dir" in out and "--label" in out


def test_store_options_belong_to_the_commands_that_store() -> None:
    storing = {spec.name for spec in ALL if "--duplicate-policy" in _options(spec)}
    assert storing == {
        "serve", "conformance", "config check", "import", "check", "reindex", "deid-job start", "migrate",
    }  # fmt: skip
    serving = {spec.name for spec in ALL if "--http-port" in _options(spec)}
    assert serving == {"serve", "conformance", "config check"}
    # No archive: no data dir to name.
    assert {spec.name for spec in ALL if "--data-dir" not in _options(spec)} == {
        "codecs", "config reference", "deid",
    }  # fmt: skip


def test_an_option_a_command_does_not_use_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["user", "token", "alice", "--duplicate-policy", "keep"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --duplicate-policy" in capsys.readouterr().err


def _value(item: Arg) -> list[str]:
    options = item.options
    if options.get("action") in ("store_true", "store_false"):
        return []
    if "choices" in options:
        return [str(options["choices"][0])]
    return ["1"] if options.get("type") in (int, float) else ["x"]


def _minimal_argv(spec: Command, data_dir: Path) -> list[str]:
    """The shortest command line ``spec`` accepts: its required arguments, each with a value."""
    argv = list(spec.path)
    if Shared.LOCATION in spec.shared:
        argv += ["--data-dir", str(data_dir)]
    for item in spec.args:
        if isinstance(item, OneOf):
            if item.required:
                argv += [item.args[0].flags[0], *_value(item.args[0])]
            continue
        positional = not item.flags[0].startswith("-")
        if positional and item.options.get("nargs") not in ("?", "*"):
            argv += _value(item)
        elif not positional and item.options.get("required"):
            argv += [item.flags[0], *_value(item)]
    return argv


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_dispatch_reaches_each_command(
    spec: Command, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Settings | None, argparse.Namespace]] = []

    def with_settings(settings: Settings, args: argparse.Namespace) -> int:
        calls.append((settings, args))
        return 7

    def without_settings(args: argparse.Namespace) -> int:
        calls.append((None, args))
        return 7

    recorder = (
        dataclasses.replace(spec, run=with_settings)
        if spec.run is not None
        else dataclasses.replace(spec, run_without_settings=without_settings)
    )
    # Only this command answers: the dispatch must find it, not any other.
    monkeypatch.setattr(registry, "_COMMANDS", {spec.path: recorder})
    assert cli.main(_minimal_argv(spec, tmp_path / "data")) == 7
    [(settings, args)] = calls
    assert getattr(args, registry.COMMAND_DEST) is recorder
    if spec.run is not None:
        assert settings is not None
        if Shared.LOCATION in spec.shared:
            assert settings.data_dir == tmp_path / "data"  # the command line reached the settings
    else:
        assert settings is None


def test_a_configuration_error_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DICOMHUB_DUPLICATE_POLICY", "sometimes")
    assert cli.main(["ls", "--data-dir", str(tmp_path)]) == 2


@pytest.fixture
def disposed(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any]]:
    """(engines connected, engines disposed) by the commands of the test."""
    connected: list[Any] = []
    closed: list[Any] = []
    real = bootstrap.connect_engine

    def connect(url: str, *args: Any, **kwargs: Any) -> Any:
        engine = real(url, *args, **kwargs)
        dispose = engine.dispose

        def recorded(close: bool = True) -> None:
            closed.append(engine)
            dispose(close)

        engine.dispose = recorded  # type: ignore[method-assign]
        connected.append(engine)
        return engine

    monkeypatch.setattr(bootstrap, "connect_engine", connect)
    return connected, closed


def test_a_failing_command_closes_its_engine(
    disposed: tuple[list[Any], list[Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    def unavailable(*_args: object, **_kwargs: object) -> Any:
        raise IndexUnavailable("the index went away")

    monkeypatch.setattr(SearchService, "search", unavailable)
    assert cli.main(["ls", "--data-dir", str(tmp_path)]) == 1
    assert "dicomhub: the index went away" in capsys.readouterr().err
    connected, closed = disposed
    assert len(connected) == 1 and closed == connected


def test_an_archive_that_fails_to_open_closes_its_engine(
    disposed: tuple[list[Any], list[Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(_settings: Settings) -> None:
        raise ConfigurationError("audit_syslog TLS: no such file")

    # After the engine is connected and the schema upgraded: the last thing opened.
    monkeypatch.setattr(bootstrap, "open_audit_feed", refused)
    assert cli.main(["user", "list", "--data-dir", str(tmp_path)]) == 1
    connected, closed = disposed
    assert len(connected) == 1 and closed == connected


def test_a_command_that_succeeds_closes_its_engine(
    disposed: tuple[list[Any], list[Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["peer", "list", "--json"], ["reindex", "--json"], ["backup", str(tmp_path / "b")]):
        assert cli.main([*argv, "--data-dir", str(tmp_path / "data")]) == 0, capsys.readouterr()
    connected, closed = disposed
    assert len(connected) >= 3 and closed == connected


def test_deprecated_groups_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for old in ("ae", "remote"):
        assert cli.main([old, "list", "--data-dir", str(tmp_path)]) == 0
        err = capsys.readouterr().err
        assert f"`{old}` is deprecated, use `dicomhub peer`" in err
    assert cli.main(["peer", "list", "--data-dir", str(tmp_path)]) == 0
    assert "deprecated" not in capsys.readouterr().err
