"""Settings: flags over DICOMHUB_* variables over the TOML file over defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dicomhub.config import (
    NON_SETTING_VARIABLES,
    InvalidSettings,
    MaskRegion,
    RemoteAE,
    _toml_key_lines,
    display_value,
    load_settings,
    load_settings_with_sources,
    parse_remote_ae,
    setting_specs,
)
from dicomhub.errors import ConfigurationError
from dicomhub.model.policy import DuplicatePolicy


def test_defaults() -> None:
    s = load_settings({}, environ={})
    assert (s.aet, s.dimse_port, s.http_port, s.host) == ("DICOMHUB", 11112, 8042, "127.0.0.1")
    assert s.data_dir == Path("./dicomhub-data")
    assert s.duplicate_policy is DuplicatePolicy.KEEP
    assert s.index_url.startswith("sqlite:///") and s.index_url.endswith("index.sqlite")


def test_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "dicomhub.toml"
    cfg.write_text(
        'aet = "FROMFILE"\ndimse_port = 104\nhttp_port = 8080\n'
        'remote_ae = ["VIEWER=10.0.0.5:11112"]\nduplicate_policy = "reject"\n'
    )
    env = {"DICOMHUB_DIMSE_PORT": "4242", "DICOMHUB_HTTP_PORT": "9090"}
    s = load_settings({"http_port": 7070}, config_file=cfg, environ=env)
    assert s.aet == "FROMFILE"  # file
    assert s.dimse_port == 4242  # environment over file
    assert s.http_port == 7070  # flag over environment
    assert s.remote_aes == (RemoteAE("VIEWER", "10.0.0.5", 11112),)
    assert s.duplicate_policy is DuplicatePolicy.REJECT
    assert s.remote_ae("VIEWER") == RemoteAE("VIEWER", "10.0.0.5", 11112)
    assert s.remote_ae("OTHER") is None


def test_remote_aes_from_environment() -> None:
    s = load_settings({}, environ={"DICOMHUB_REMOTE_AES": "A=h1:1,B=h2:2"})
    assert [r.ae_title for r in s.remote_aes] == ["A", "B"]


@pytest.mark.parametrize(
    "text", ["NOPORT", "A=host", "A=host:x", "=host:1", "WAYTOOLONGAETITLE1=h:1", "A=h:0"]
)
def test_bad_remote_ae(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_remote_ae(text)


@pytest.mark.parametrize(
    ("overrides", "environ"),
    [
        ({"dimse_port": 70000}, {}),
        ({"aet": ""}, {}),
        ({}, {"DICOMHUB_DIMSE_PORT": "eleven"}),
        ({}, {"DICOMHUB_DUPLICATE_POLICY": "sometimes"}),
    ],
)
def test_invalid_values(overrides: dict[str, object], environ: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        load_settings(overrides, environ=environ)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigurationError, match="unknown setting"):
        load_settings({}, config_file=cfg, environ={})


def test_public_base_url() -> None:
    env = {"DICOMHUB_PUBLIC_BASE_URL": "https://pacs.example.org/dicom-web/"}
    assert load_settings({}, environ=env).public_base_url == "https://pacs.example.org/dicom-web/"
    assert load_settings({}, environ={}).public_base_url == ""
    for bad in ("pacs.example.org/dicomweb", "ftp://pacs/dicomweb", "https://pacs/dicomweb?x=1"):
        with pytest.raises(ConfigurationError, match="public_base_url"):
            load_settings({"public_base_url": bad}, environ={})


def test_operations_settings() -> None:
    s = load_settings(
        environ={"DICOMHUB_LOG_FORMAT": "json", "DICOMHUB_ACCESS_LOG": "false", "DICOMHUB_AUDIT_SYSLOG": "udp://h"}
    )
    assert (s.log_format, s.access_log, s.audit_syslog) == ("json", False, "udp://h")
    assert load_settings(environ={}).log_format == "text" and load_settings(environ={}).access_log
    for bad in ({"DICOMHUB_LOG_FORMAT": "xml"}, {"DICOMHUB_AUDIT_SYSLOG": "http://collector"}):
        with pytest.raises(ConfigurationError):
            load_settings(environ=bad)


# ------------------------------------------------------------------ errors that say what is wrong


def _problems(**kw: Any) -> list[str]:
    with pytest.raises(InvalidSettings) as info:
        load_settings_with_sources(**kw)
    return [str(p) for p in info.value.problems]


def test_boolean_typo_in_file_names_line_key_and_allowed_values(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('aet = "A"\n\nknown_aes_only = "ture"\n')
    [problem] = _problems(config_file=cfg, environ={})
    assert problem.startswith(f"file {cfg}:3: known_aes_only: 'ture' is not a boolean"), problem
    assert "true/false, 1/0, yes/no, on/off" in problem


def test_boolean_typo_in_the_environment() -> None:
    [problem] = _problems(environ={"DICOMHUB_KNOWN_AES_ONLY": "ture"})
    assert problem.startswith("env DICOMHUB_KNOWN_AES_ONLY: known_aes_only: 'ture' is not a boolean")
    assert "true/false" in problem


def test_boolean_words_exactly() -> None:
    for text, value in (("YES", True), ("on", True), ("0", False), ("Off", False)):
        assert load_settings(environ={"DICOMHUB_KNOWN_AES_ONLY": text}).known_aes_only is value
    for bad in ("t", "y", "2", "enabled", ""):
        if bad:
            _problems(environ={"DICOMHUB_KNOWN_AES_ONLY": bad})


def test_unknown_key_in_file_with_suggestion_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[dicomhub]\naet = "A"\nknown_ae_only = true\n')
    [problem] = _problems(config_file=cfg, environ={})
    assert problem == f"file {cfg}:3: known_ae_only: unknown setting; did you mean known_aes_only?"


def test_key_outside_the_dicomhub_table(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('aet = "A"\n[dicomhub]\nhttp_port = 1\n')
    [problem] = _problems(config_file=cfg, environ={})
    assert problem == (
        f"file {cfg}:1: aet: outside the [dicomhub] table; move it into [dicomhub] as dicomhub.aet"
    )


def test_unknown_dicomhub_variable() -> None:
    [problem] = _problems(environ={"DICOMHUB_FOO": "1"})
    assert problem.startswith("env DICOMHUB_FOO: names no setting"), problem
    [problem] = _problems(environ={"DICOMHUB_KNOWN_AE_ONLY": "1"})
    assert "did you mean DICOMHUB_KNOWN_AES_ONLY?" in problem


def test_variables_that_are_not_settings_are_allowed(tmp_path: Path) -> None:
    cfg = tmp_path / "ok.toml"
    cfg.write_text('aet = "FROMENV"\n')
    env = {
        "DICOMHUB_TEST_BACKEND": "sqlite-file",
        "DICOMHUB_DEID_SECRET": "s" * 32,
        "DICOMHUB_CONFIG": str(cfg),
        "OTHER_THING": "x",
    }
    assert set(NON_SETTING_VARIABLES) <= set(env)
    assert load_settings(environ=env).aet == "FROMENV"


def test_every_problem_is_listed(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('dimse_port = 70000\nduplicate_policy = "sometimes"\ncolour = 1\n')
    problems = _problems(
        config_file=cfg,
        environ={"DICOMHUB_WORKERS": "two", "DICOMHUB_NOPE": "1"},
        overrides={"max_associations": 0},
    )
    assert problems == [
        f"file {cfg}:1: dimse_port: 70000 is out of range (allowed: 0 to 65535)",
        f"file {cfg}:2: duplicate_policy: 'sometimes' is not one of the allowed values: "
        "keep, overwrite, reject",
        f"file {cfg}:3: colour: unknown setting",
        "env DICOMHUB_NOPE: names no setting (see docs/configuration.md)",
        "env DICOMHUB_WORKERS: workers: 'two' is not an integer",
        "flag --max-associations: max_associations: 0 is out of range (allowed: 1 or more)",
    ]


def test_wrong_toml_types_are_named(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('aet = 104\ndimse_port = "x"\nacse_timeout = "soon"\ncors_origins = 3\n')
    problems = _problems(config_file=cfg, environ={})
    assert [p.split(": ")[1] for p in problems] == ["aet", "dimse_port", "acse_timeout", "cors_origins"]
    assert "expected a string, not int 104" in problems[0]


def test_cross_field_problem_names_the_given_settings_and_sources() -> None:
    flags = {"tls_verify_client": "--tls-verify-client"}
    [problem] = _problems(overrides={"tls_verify_client": True}, environ={}, flags=flags)
    assert problem.startswith("flag --tls-verify-client: tls_verify_client: --tls-verify-client needs the CA")


def test_precedence_with_sources(tmp_path: Path) -> None:
    cfg = tmp_path / "dicomhub.toml"
    cfg.write_text('# comment\naet = "FROMFILE"\ndimse_port = 104\nhttp_port = 8080\nknown_aes_only = true\n')
    env = {"DICOMHUB_DIMSE_PORT": "4242", "DICOMHUB_HTTP_PORT": "9090"}
    loaded = load_settings_with_sources(
        {"http_port": 7070, "remote_aes": ["A=h:1"]}, cfg, env, flags={"remote_aes": "--remote-ae"}
    )
    s, src = loaded.settings, loaded.sources
    assert (s.aet, s.dimse_port, s.http_port, s.known_aes_only) == ("FROMFILE", 4242, 7070, True)
    assert str(src["aet"]) == f"file {cfg}:2"
    assert str(src["known_aes_only"]) == f"file {cfg}:5"
    assert str(src["dimse_port"]) == "env DICOMHUB_DIMSE_PORT"
    assert str(src["http_port"]) == "flag --http-port"
    assert str(src["remote_aes"]) == "flag --remote-ae"
    assert str(src["host"]) == "default"
    assert set(src) == set(setting_specs())


def test_tables_in_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "tables.toml"
    cfg.write_text(
        '[dicomhub]\noidc_role_claim = "groups"\n\n[dicomhub.oidc_roles]\n"/admins" = "admin"\n'
        'readers = ["reader", "auditor@archive"]\n\n'
        '[[dicomhub.remote_ae]]\naet = "PEER"\nhost = "h"\nport = 104\n'
    )
    loaded = load_settings_with_sources(config_file=cfg, environ={})
    assert loaded.settings.oidc_roles == ("/admins=admin", "readers=reader", "readers=auditor@archive")
    assert loaded.settings.remote_aes == (RemoteAE("PEER", "h", 104),)
    assert str(loaded.sources["oidc_roles"]) == f"file {cfg}:4"
    assert str(loaded.sources["remote_aes"]) == f"file {cfg}:8"
    cfg.write_text('[[remote_ae]]\naet = "PEER"\nhost = "h"\nport = 104\ncolour = 1\n')
    [problem] = _problems(config_file=cfg, environ={})
    assert problem.startswith(f"file {cfg}:1: remote_aes: remote AE table"), problem


def test_key_lines_skip_multiline_strings() -> None:
    text = 'a = """\nb = 1\n"""\n[t]\n"quoted key" = 2\nc.d = 3\n'
    assert _toml_key_lines(text) == {("a",): 1, ("t",): 4, ("t", "quoted key"): 5, ("t", "c", "d"): 6}


def test_every_setting_round_trips_through_its_text() -> None:
    # Defaults load; every default written as text (a variable) reads back equal.
    defaults = load_settings(environ={})
    env = {}
    for spec in setting_specs().values():
        value = getattr(defaults, spec.name)
        assert value == spec.default
        assert spec.parse(display_value(value)) == value, spec.name
        if display_value(value):
            env[spec.variable] = display_value(value)
    assert load_settings(environ=env) == defaults


def test_lists_round_trip() -> None:
    env = {
        "DICOMHUB_REMOTE_AES": "A=h1:1,B=h2:2",
        "DICOMHUB_DEID_EXPORT": "R=p1:retain-uids,clean-descriptors;S=p2",
        "DICOMHUB_DEID_MASK": "0,0,10,10;5,5,1,1",
        "DICOMHUB_VALIDATION_AE": "MOD=reject,CT=warn",
        "DICOMHUB_COMPRESS": "CT=jpeg-ls-lossless",
        "DICOMHUB_DEID_BURNED_IN": "MASK",
        "DICOMHUB_LOG_LEVEL": "debug",
    }
    s = load_settings(environ=env)
    assert s.deid_burned_in == "mask" and s.log_level == "DEBUG"
    for name in ("remote_aes", "deid_export", "deid_mask", "validation_ae", "compress"):
        assert setting_specs()[name].parse(display_value(getattr(s, name))) == getattr(s, name)
    assert display_value(s.deid_export) == "R=p1:retain-uids,clean-descriptors;S=p2"
    assert load_settings({"deid_mask": [MaskRegion(1, 2, 3, 4)], "remote_aes": [RemoteAE("A", "h", 1)]},
                         environ={}).deid_mask == (MaskRegion(1, 2, 3, 4),)  # fmt: skip


def test_field_comments_are_the_documentation() -> None:
    specs = setting_specs()
    assert specs["workers"].doc == "0: one DIMSE worker process per CPU core"  # trailing comment
    assert specs["storage_url"].doc.startswith("Where blobs live: file:///path")  # the comment above
    assert specs["oidc_accept_azp"].doc.startswith("Accept a token whose azp")  # the comment above
    assert specs["known_aes_only"].doc == ""  # none: the reference takes its flag's help
