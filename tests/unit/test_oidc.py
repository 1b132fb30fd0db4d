"""OpenID Connect bearer tokens: the verifier's checks and its JWKS cache."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from dicomhub.errors import ConfigurationError
from dicomhub.model.access import LabelRule
from dicomhub.services.oidc import OidcVerifier, TokenRejected

ISSUER = "https://issuer.example.test"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks(*pairs: tuple[rsa.RSAPrivateKey, str]) -> dict[str, Any]:
    keys = []
    for key, kid in pairs:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
    return {"keys": keys}


def _token(key: rsa.RSAPrivateKey, kid: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": "hub", "sub": "alice", "nbf": now, "exp": now + 60, **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


def test_a_valid_token_names_its_principal_by_the_configured_claim(tmp_path: Path) -> None:
    key = _key()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(_jwks((key, "k1"))))
    verifier = OidcVerifier(ISSUER, str(jwks), "hub", "email")
    assert verifier.principal(_token(key, "k1", email="alice@example.test")) == "alice@example.test"
    with pytest.raises(TokenRejected, match="email"):
        verifier.principal(_token(key, "k1"))
    with pytest.raises(TokenRejected, match="expired"):
        verifier.principal(_token(key, "k1", exp=int(time.time()) - 3600))
    with pytest.raises(TokenRejected):
        verifier.principal(_token(key, "k1", aud=["other"]))
    with pytest.raises(TokenRejected):
        verifier.principal(_token(key, "k1", nbf=int(time.time()) + 3600))


def test_an_unknown_key_id_refetches_the_jwks_at_most_once_a_minute() -> None:
    old, new = _key(), _key()
    published = {"keys": _jwks((old, "old"))["keys"]}
    fetches: list[float] = []
    now = [1000.0]

    def loader(_source: str) -> dict[str, Any]:
        fetches.append(now[0])
        return published

    verifier = OidcVerifier(
        ISSUER, "https://issuer.example.test/jwks", "hub", loader=loader, clock=lambda: now[0]
    )
    assert verifier.principal(_token(old, "old")) == "alice"
    now[0] += 10
    with pytest.raises(TokenRejected, match="unknown key"):  # not published yet: one refetch
        verifier.principal(_token(new, "new"))
    assert len(fetches) == 2
    published = _jwks((old, "old"), (new, "new"))
    now[0] += 10
    for _ in range(5):  # within the minute: no further fetch, whatever the tokens say
        with pytest.raises(TokenRejected, match="unknown key"):
            verifier.principal(_token(new, "new"))
    assert len(fetches) == 2
    now[0] += 61
    assert verifier.principal(_token(new, "new")) == "alice"
    assert len(fetches) == 3
    assert verifier.principal(_token(new, "new")) == "alice"
    assert len(fetches) == 3


def test_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError):
        OidcVerifier(ISSUER, "", "hub")
    with pytest.raises(ConfigurationError, match="https"):
        OidcVerifier(ISSUER, "http://plain.example.test/jwks", "hub")
    # A JWKS that cannot be read refuses tokens; it does not fail the request.
    verifier = OidcVerifier(ISSUER, "/nonexistent/jwks.json", "hub")
    with pytest.raises(TokenRejected, match="unknown key"):
        verifier.principal(_token(_key(), "k"))


def test_label_rules_parse() -> None:
    assert LabelRule.parse("CARDIO=calling_ae:CATHLAB ") == LabelRule("CARDIO", "calling_ae", "CATHLAB")
    assert LabelRule.parse("RESEARCH=InstitutionName:St Mary") == LabelRule(
        "RESEARCH", "InstitutionName", "St Mary"
    )
    for bad in ("CARDIO", "CARDIO=calling_ae", "bad label=Modality:CT", "X=1bad:CT"):
        with pytest.raises(ValueError):
            LabelRule.parse(bad)
    rule = LabelRule.parse("MRI=Modality:MR")
    assert rule.applies(None, {"Modality": "MR"}.get) and not rule.applies(None, {"Modality": "MRX"}.get)
