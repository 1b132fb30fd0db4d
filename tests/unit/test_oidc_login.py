"""The UI's OpenID Connect log-in (services/oidc_login.py): PKCE, the state, discovery.

The exchange of a code at a real token endpoint is driven end to end by
tests/e2e/ui/test_ui_oidc.py; here, what needs no provider.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from dicomhub.errors import ConfigurationError
from dicomhub.services.oidc_login import STATE_SECONDS, LoginFailed, OidcLogin, pkce_challenge

ISSUER = "https://sso.example.test/realms/hospital"
REDIRECT = "https://pacs.example.test/ui/login/callback"


def discovery(**overrides: Any) -> dict[str, Any]:
    return {
        "issuer": ISSUER,
        "authorization_endpoint": ISSUER + "/protocol/openid-connect/auth",
        "token_endpoint": ISSUER + "/protocol/openid-connect/token",
        **overrides,
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def login(document: dict[str, Any] | None = None, clock: Clock | None = None) -> OidcLogin:
    return OidcLogin(
        ISSUER,
        "dicomhub-ui",
        "openid",
        "SSO",
        loader=lambda _url: document or discovery(),
        clock=clock or Clock(),
    )


def test_the_challenge_is_rfc_7636_s256() -> None:
    # RFC 7636, appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_begin_sends_the_browser_to_the_authorization_endpoint() -> None:
    state, url = login().begin(REDIRECT)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == discovery()["authorization_endpoint"]
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["state"] == state and query["redirect_uri"] == REDIRECT
    assert query["client_id"] == "dicomhub-ui" and query["response_type"] == "code"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert "code_verifier" not in query  # the verifier stays in the server


def test_a_state_is_single_use_and_short_lived() -> None:
    clock = Clock()
    flow = login(clock=clock)
    with pytest.raises(LoginFailed, match="not started here"):
        flow.finish("made-up", "code")
    state, _ = flow.begin(REDIRECT)
    clock.now += STATE_SECONDS
    with pytest.raises(LoginFailed, match="took too long"):
        flow.finish(state, "code")
    with pytest.raises(LoginFailed, match="already used"):
        flow.finish(state, "code")


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (discovery(issuer=ISSUER + "/"), "does not name the configured issuer"),
        (discovery(token_endpoint="http://sso.example.test/token"), "https authorization or token endpoint"),
        (discovery(authorization_endpoint=None), "https authorization or token endpoint"),
    ],
)
def test_an_unusable_discovery_document_stops_the_log_in(document: dict[str, Any], reason: str) -> None:
    with pytest.raises(LoginFailed, match=reason):
        login(document).begin(REDIRECT)


def test_an_unreachable_provider_is_said_so() -> None:
    def unreachable(_url: str) -> dict[str, Any]:
        raise OSError("connection refused")

    flow = OidcLogin(ISSUER, "dicomhub-ui", loader=unreachable)
    with pytest.raises(LoginFailed, match="cannot read the identity provider's discovery document"):
        flow.begin(REDIRECT)


def test_a_client_needs_an_issuer() -> None:
    with pytest.raises(ConfigurationError):
        OidcLogin("", "dicomhub-ui")
