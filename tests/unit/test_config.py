"""Settings: flags over DICOMHUB_* variables over the TOML file over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomhub.config import RemoteAE, load_settings, parse_remote_ae
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
