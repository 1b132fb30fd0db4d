"""docs/deploy/dicomhub.toml, the production example, loads with the real configuration loader."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from dicomhub.config import Settings, load_settings
from dicomhub.model.policy import DuplicatePolicy, ValidationPolicy

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "deploy" / "dicomhub.toml"


def test_production_example_loads() -> None:
    # load_settings refuses unknown keys and bad values: the example cannot drift from config.py.
    settings = load_settings(config_file=EXAMPLE, environ={})
    assert settings.index_url.startswith("postgresql://") and "password" not in settings.index_url
    assert settings.blob_store_url == "s3://example-pacs/dicomhub"
    assert settings.https and settings.dimse_tls_port == 2762 and settings.tls_verify_client
    assert settings.tls_cert and settings.tls_key and settings.tls_ca
    assert settings.auth_required and not settings.allow_anonymous_network
    assert settings.oidc_issuer and settings.oidc_jwks and settings.oidc_audience == "dicomhub"
    assert settings.dimse_port == 104 and settings.host == "0.0.0.0"
    assert [ae.ae_title for ae in settings.remote_aes] == ["CT_ROOM1", "MR_ROOM2", "WORKSTATION"]
    assert settings.known_aes_only
    assert settings.duplicate_policy is DuplicatePolicy.KEEP
    assert settings.validation_policy is ValidationPolicy.RECORD


def test_production_example_holds_no_secret() -> None:
    section = tomllib.loads(EXAMPLE.read_text())["dicomhub"]
    assert set(section) <= set(Settings.__dataclass_fields__) | {"remote_ae"}
    # Secrets go in the service's EnvironmentFile (docs/deployment.md), never in this file.
    for key, value in section.items():
        assert not re.search(r"secret|password|token", key), key
        assert not re.search(r"://[^/@]*:[^/@]*@", str(value)), f"{key} carries a password"
