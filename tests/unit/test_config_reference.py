"""docs/configuration.md is generated from the settings model: fail when it is stale; secrets masked."""

from __future__ import annotations

from pathlib import Path

from dicomhub.cli.configuration import masked, reference_markdown

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_committed_reference_is_current() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == reference_markdown(), (
        "docs/configuration.md is stale: run `dicomhub config reference --output docs/configuration.md`"
    )


def test_reference_names_every_setting_variable_and_flag() -> None:
    text = reference_markdown()
    for name in ("known_aes_only", "remote_aes", "oidc_roles", "deid_mask"):
        assert f"### `{name}`" in text
    assert "- variable: `DICOMHUB_KNOWN_AES_ONLY`" in text
    assert "- flag: `--remote-ae` (repeatable)" in text
    assert "one of `keep`, `overwrite`, `reject`" in text


def test_every_setting_is_documented() -> None:
    # The reference takes a setting's meaning from its comment, else its flag's help.
    assert "(undocumented)" not in reference_markdown()


def test_masked() -> None:
    assert masked("database_url", "postgresql://user:pw@db/x") == "postgresql://user:***@db/x"
    assert masked("oidc_client_secret", "abc") == "***"
    assert masked("tls_key", "/etc/key.pem") == "/etc/key.pem"
    assert masked("aet", "A") == "A"
