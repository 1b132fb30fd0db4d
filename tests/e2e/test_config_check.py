"""``dicomhub config check`` and ``serve`` on a configuration with mistakes, as an operator meets them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .helpers import run_cli, run_cli_split

pytestmark = [pytest.mark.e2e, pytest.mark.backend_neutral]

BAD = '[dicomhub]\naet = "ARCHIVE"\nknown_aes_only = "ture"\nknown_ae_only = true\n'


def test_a_bad_file_stops_config_check_and_serve_with_the_same_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    data = ["--data-dir", str(tmp_path / "data")]
    rc, out, err = run_cli_split("config", "check", "--config", str(bad), *data)
    assert rc == 2, (out, err)
    assert f"file {bad}:3: known_aes_only: 'ture' is not a boolean (allowed: true/false" in err, err
    assert f"file {bad}:4: known_ae_only: unknown setting; did you mean known_aes_only?" in err, err
    # serve stops at start, before listening or touching the data dir, with the same lines.
    rc_serve, text = run_cli("serve", "--config", str(bad), *data, timeout=60)
    assert rc_serve == 2, text
    assert text.strip() == err.strip()
    assert not (tmp_path / "data").exists()
    # A mistyped variable is named too, and the JSON lists every problem.
    rc, text = run_cli(
        "config", "check", "--config", str(bad), "--json", *data, env={"DICOMHUB_HTTP_PROT": "80"}
    )
    report = json.loads(text)
    assert rc == 2 and report["valid"] is False
    message = "names no setting; did you mean DICOMHUB_HTTP_PORT? (see docs/configuration.md)"
    assert {"source": "env DICOMHUB_HTTP_PROT", "key": "", "message": message} in report["errors"]
    assert len(report["errors"]) == 3


def test_config_check_json_shows_each_value_and_its_source(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '# the archive\naet = "ARCHIVE"\nknown_aes_only = "yes"\nremote_ae = ["VIEWER=127.0.0.1:4242"]\n'
    )
    rc, out, err = run_cli_split(
        "config", "check", "--config", str(good), "--json", "--data-dir", str(tmp_path / "data"),
        "--dimse-port", "11113",
    )  # fmt: skip
    assert rc == 0, (out, err)
    settings = json.loads(out)["settings"]
    assert settings["aet"] == {"value": "ARCHIVE", "source": f"file {good}:2"}
    assert settings["known_aes_only"] == {"value": True, "source": f"file {good}:3"}
    assert settings["remote_aes"] == {"value": ["VIEWER=127.0.0.1:4242"], "source": f"file {good}:4"}
    assert settings["dimse_port"] == {"value": 11113, "source": "flag --dimse-port"}
    assert settings["http_port"] == {"value": 8042, "source": "default"}
    assert settings["data_dir"]["source"] == "flag --data-dir"
    # A password in a URL is masked, in the table and in the JSON.
    secret_env = {"DICOMHUB_DATABASE_URL": "postgresql://dicomhub:s3cret@db.invalid/pacs"}
    args = ("config", "check", "--config", str(good), "--data-dir", str(tmp_path / "data"))
    rc, text = run_cli(*args, env=secret_env)
    assert rc == 0 and "s3cret" not in text and "effective configuration" in text, text
    rc, text = run_cli(*args, "--json", env=secret_env)
    assert json.loads(text)["settings"]["database_url"] == {
        "value": "postgresql://dicomhub:***@db.invalid/pacs",
        "source": "env DICOMHUB_DATABASE_URL",
    }
