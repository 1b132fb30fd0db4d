"""OpenID Connect bearer tokens: the verifier's checks, its JWKS cache, discovery and
the role mapping, against a local identity provider over HTTPS (tests/oidc_idp.py)
issuing tokens shaped as Keycloak's and Entra ID's."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from dicomhub.bootstrap import open_archive, open_oidc
from dicomhub.config import load_settings
from dicomhub.errors import ConfigurationError
from dicomhub.model.access import ClaimGrant, Grant, LabelRule, Scope, ScopeKind
from dicomhub.services.access import parse_claim_grants
from dicomhub.services.oidc import LEEWAY_SECONDS, OidcVerifier, TokenRejected, claim_values
from tests.oidc_idp import IdentityProvider

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
    with pytest.raises(ConfigurationError, match="oidc_audience"):
        OidcVerifier(ISSUER, "", "")
    with pytest.raises(ConfigurationError, match="https"):
        OidcVerifier(ISSUER, "http://plain.example.test/jwks", "hub")
    # Without a JWKS the keys come from discovery, which is https only (loopback too).
    for issuer in ("http://login.example.test/realms/x", "http://127.0.0.1:8080/realms/x"):
        with pytest.raises(ConfigurationError, match="oidc_issuer .*needs an https issuer"):
            OidcVerifier(issuer, "", "hub")
    # With a JWKS file the issuer is only compared with iss: a plain-http dev realm works.
    OidcVerifier("http://localhost:8080/realms/dev", "/etc/dicomhub/jwks.json", "hub")
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


# ------------------------------------------------------- a real identity provider over HTTPS


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdentityProvider]:
    with IdentityProvider(tmp_path_factory.mktemp("idp")) as provider:
        yield provider


def _keycloak(idp: IdentityProvider, **options: Any) -> OidcVerifier:
    """A verifier of the realm found by discovery, as the documentation configures it."""
    settings: dict[str, Any] = {
        "accept_azp": True,
        "role_claim": "realm_access.roles",
        "ca_file": str(idp.ca_file),
        **options,
    }
    return OidcVerifier(idp.keycloak.issuer, "", "dicomhub", "preferred_username", **settings)


def _unverified(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def test_a_keycloak_access_token_without_nbf_is_accepted_through_discovery(idp: IdentityProvider) -> None:
    realm = idp.keycloak
    discovered, fetched = idp.count(realm.discovery_path), idp.count(realm.jwks_path)
    verifier = _keycloak(idp)
    token = realm.access_token("alice", realm_roles=["dicom-reader"])
    claims = _unverified(token)
    assert "nbf" not in claims and claims["aud"] == "account" and claims["azp"] == "dicomhub"
    identity = verifier.verify(token)
    assert identity.principal == "alice"
    assert identity.claim_values == {"offline_access", "uma_authorization", "dicom-reader"}
    # One discovery document and one JWKS, then the cache: its encryption key is not used.
    assert verifier.verify(realm.access_token("bob")).principal == "bob"
    assert (idp.count(realm.discovery_path), idp.count(realm.jwks_path)) == (discovered + 1, fetched + 1)
    # Client roles, by a dotted path through resource_access.
    clients = _keycloak(idp, role_claim="resource_access.dicomhub.roles")
    assert clients.verify(realm.access_token("carol", client_roles=["uploader"])).claim_values == {"uploader"}
    assert clients.verify(realm.access_token("dave")).claim_values == frozenset()


def test_times_are_checked_with_a_small_clock_skew(idp: IdentityProvider) -> None:
    verifier, realm, now = _keycloak(idp), idp.keycloak, int(time.time())
    skew = LEEWAY_SECONDS
    assert verifier.principal(realm.access_token("alice", nbf=now + skew // 3)) == "alice"
    assert verifier.principal(realm.access_token("alice", exp=now - skew // 3)) == "alice"
    assert verifier.principal(realm.access_token("alice", iat=now + skew // 3)) == "alice"
    with pytest.raises(TokenRejected, match=r"not yet valid \(nbf\)"):
        verifier.principal(realm.access_token("alice", nbf=now + skew + 60))
    with pytest.raises(TokenRejected, match=r"not yet valid \(iat\)"):
        verifier.principal(realm.access_token("alice", iat=now + skew + 60))
    with pytest.raises(TokenRejected, match="expired"):
        verifier.principal(realm.access_token("alice", exp=now - skew - 60))
    with pytest.raises(TokenRejected, match="exp"):
        verifier.principal(realm.access_token("alice", exp=None))  # exp is required


def test_issuer_audience_azp_and_token_type(idp: IdentityProvider) -> None:
    realm = idp.keycloak
    with_azp, strict = _keycloak(idp), _keycloak(idp, accept_azp=False)
    keycloak_default = realm.access_token("alice")  # aud "account", the client in azp
    assert with_azp.principal(keycloak_default) == "alice"
    with pytest.raises(TokenRejected, match="audience"):
        strict.principal(keycloak_default)
    # With Keycloak's audience mapper the client is in aud: accepted either way.
    mapped = realm.access_token("alice", aud=["dicomhub", "account"])
    assert strict.principal(mapped) == with_azp.principal(mapped) == "alice"
    with pytest.raises(TokenRejected, match="no aud"):
        strict.principal(realm.access_token("alice", aud=None))
    assert with_azp.principal(realm.access_token("alice", aud=None)) == "alice"  # Keycloak omits it
    for claims in ({"azp": "other-client"}, {"azp": "other-client", "aud": None}, {"aud": 7}):
        with pytest.raises(TokenRejected, match="aud"):
            with_azp.principal(realm.access_token("alice", **claims))
    with pytest.raises(TokenRejected, match="issuer"):
        with_azp.principal(realm.access_token("alice", iss=realm.issuer + "-other"))
    with pytest.raises(TokenRejected, match="iss"):
        with_azp.principal(realm.access_token("alice", iss=None))
    # Keycloak's ID token, same key and client: not an access token.
    with pytest.raises(TokenRejected, match="'ID', not an access token"):
        with_azp.principal(realm.access_token("alice", typ="ID", aud="dicomhub"))
    with pytest.raises(TokenRejected, match="preferred_username"):
        with_azp.principal(realm.access_token("alice", preferred_username=None))


def test_an_unknown_key_id_refreshes_the_keys_once_a_minute_over_https(idp: IdentityProvider) -> None:
    realm = idp.keycloak
    now = [5000.0]
    verifier = _keycloak(idp, clock=lambda: now[0])
    assert verifier.principal(realm.access_token("alice")) == "alice"
    discovered, fetched = idp.count(realm.discovery_path), idp.count(realm.jwks_path)
    rotated = realm.add_key("kc-rsa-rotated", published=False)
    try:
        token = realm.access_token("alice", kid=rotated.kid)
        with pytest.raises(TokenRejected, match="unknown key"):
            verifier.principal(token)
        assert idp.count(realm.jwks_path) == fetched + 1  # the one refresh
        rotated.published = True
        now[0] += 30
        for _ in range(3):  # within the minute: no further fetch, whatever the tokens say
            with pytest.raises(TokenRejected, match="unknown key"):
                verifier.principal(token)
        assert idp.count(realm.jwks_path) == fetched + 1
        now[0] += 31
        assert verifier.principal(token) == "alice"
        assert verifier.principal(realm.access_token("bob", kid=rotated.kid)) == "bob"
        assert idp.count(realm.jwks_path) == fetched + 2
        assert idp.count(realm.discovery_path) == discovered  # the jwks_uri is cached
    finally:
        realm.keys.remove(rotated)


def test_entra_id_v2_tokens_with_app_roles_and_groups(idp: IdentityProvider) -> None:
    tenant = idp.entra
    readers, radiology = "0b6f1a0e-3c6e-4c59-9d1a-6f1c3a3a2c11", "5d2c0a7e-8a1b-4f2e-9b55-0f6b7d9c1e22"
    token = tenant.access_token(
        "alice@hospital.example.test", roles=["Dicom.Read"], groups=[readers, radiology]
    )
    claims = _unverified(token)
    assert claims["aud"] == tenant.app_id and claims["ver"] == "2.0" and claims["iss"].endswith("/v2.0")
    assert "alg" not in tenant.jwks()["keys"][0]  # Entra ID's JWKS names no algorithm

    def verifier(role_claim: str, audience: str = tenant.app_id) -> OidcVerifier:
        return OidcVerifier(
            tenant.issuer, "", audience, "oid", role_claim=role_claim, ca_file=str(idp.ca_file)
        )

    by_roles = verifier("roles").verify(token)
    assert by_roles.principal == claims["oid"] and by_roles.claim_values == {"Dicom.Read"}
    assert verifier("groups").verify(token).claim_values == {readers, radiology}
    assert (
        verifier("roles").verify(tenant.access_token("bob@hospital.example.test")).claim_values == frozenset()
    )
    with pytest.raises(TokenRejected, match="audience"):
        verifier("roles", audience="api://dicomhub").verify(token)  # a v1.0 audience: not in a v2.0 token
    with pytest.raises(TokenRejected, match="not yet valid"):
        verifier("roles").verify(
            tenant.access_token("alice@hospital.example.test", nbf=int(time.time()) + 600)
        )


def test_discovery_needs_the_configured_issuer_an_https_jwks_uri_and_a_trusted_certificate(
    idp: IdentityProvider, caplog: pytest.LogCaptureFixture
) -> None:
    realm = idp.keycloak
    token = realm.access_token("alice")
    caplog.set_level(logging.WARNING, logger="dicomhub.oidc")
    for override, logged in (
        ({"issuer": "https://elsewhere.example.test/realms/hospital"}, "Discovery 4.3"),
        ({"issuer": realm.issuer + "/"}, "must be identical"),
        ({"jwks_uri": realm.jwks_uri.replace("https://", "http://")}, "no https jwks_uri"),
    ):
        realm.discovery_overrides = override
        try:
            caplog.clear()
            with pytest.raises(TokenRejected, match="unknown key"):
                _keycloak(idp).principal(token)
            assert logged in caplog.text
            assert any(r.levelno == logging.ERROR for r in caplog.records)
        finally:
            realm.discovery_overrides = {}
    # A redirect to plain http is not followed.
    idp.redirects[realm.discovery_path] = idp.base_url.replace("https://", "http://") + realm.discovery_path
    try:
        caplog.clear()
        with pytest.raises(TokenRejected, match="unknown key"):
            _keycloak(idp).principal(token)
        assert "redirect to http://" in caplog.text
    finally:
        del idp.redirects[realm.discovery_path]
    # The issuer's certificate is verified: the system's authorities do not know the test CA.
    caplog.clear()
    with pytest.raises(TokenRejected, match="unknown key"):
        _keycloak(idp, ca_file="").principal(token)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    with pytest.raises(ConfigurationError, match="oidc_ca_file"):
        _keycloak(idp, ca_file=str(idp.ca_file) + ".missing")
    assert _keycloak(idp).principal(token) == "alice"  # and all is well again


def test_claim_values_by_name_or_dotted_path() -> None:
    claims: dict[str, Any] = {
        "realm_access": {"roles": ["a", "b", 3]},
        "groups": ["/radiology/readers"],
        "https://dicomhub.example.org/roles": ["reader"],
        "role": "admin",
        "scope": "openid profile dicom.read",
        "scp": "Dicom.Read  Dicom.Write",
        "nested": {"deeper": {"value": {"not": "a list"}}},
    }
    assert claim_values(claims, "realm_access.roles") == {"a", "b"}
    assert claim_values(claims, "groups") == {"/radiology/readers"}
    assert claim_values(claims, "https://dicomhub.example.org/roles") == {"reader"}
    assert claim_values(claims, "role") == {"admin"}
    assert claim_values(claims, "scope") == {"openid", "profile", "dicom.read"}
    assert claim_values(claims, "scp") == {"Dicom.Read", "Dicom.Write"}
    for missing in ("nested.deeper.value", "realm_access.roles.x", "resource_access.dicomhub.roles", "x"):
        assert claim_values(claims, missing) == frozenset()


# ------------------------------------------------------- role mapping: settings and grants


def test_role_mapping_settings_from_toml_environment_and_flags(tmp_path: Path) -> None:
    toml = tmp_path / "dicomhub.toml"
    toml.write_text(
        'oidc_issuer = "https://login.example.test/realms/hospital"\n'
        'oidc_role_claim = "realm_access.roles"\n'
        "[oidc_roles]\n"
        '"dicom-admin" = "admin"\n'
        '"/radiology/cardio" = ["reader@label:cardio", "uploader@label:cardio"]\n'
    )
    settings = load_settings(config_file=toml, environ={})
    assert settings.oidc_roles == (
        "dicom-admin=admin",
        "/radiology/cardio=reader@label:cardio",
        "/radiology/cardio=uploader@label:cardio",
    )
    grants = parse_claim_grants(settings.oidc_roles)
    assert grants[0] == ClaimGrant("dicom-admin", Grant("admin", Scope(ScopeKind.ARCHIVE)))
    assert grants[1].grant == Grant("reader", Scope(ScopeKind.LABEL, "cardio"))
    env = {"DICOMHUB_OIDC_ROLES": "dicom-reader=reader, dicom-uploader=uploader@archive"}
    assert load_settings(environ=env).oidc_roles == ("dicom-reader=reader", "dicom-uploader=uploader@archive")
    flags = load_settings({"oidc_roles": ["Dicom.Read=reader@patient:P7"]}, environ=env)
    assert flags.oidc_roles == ("Dicom.Read=reader@patient:P7",)
    for bad, message in (
        ("dicom-reader", "VALUE=ROLE"),
        ("=reader", "VALUE=ROLE"),
        ("dicom-reader=superuser", "unknown role"),
        ("dicom-reader=reader@label:bad label", "label name"),
        ("trusted=reidentifier@project:TRIAL", "named principals only"),
    ):
        with pytest.raises(ConfigurationError, match=f"oidc_roles .*{message}"):
            parse_claim_grants([bad])


def test_bad_oidc_settings_stop_the_start(tmp_path: Path) -> None:
    issuer = "https://login.example.test/realms/hospital"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"oidc_issuer": "http://login.example.test/realms/hospital", "oidc_audience": "a"}, "https"),
        ({"oidc_issuer": issuer}, "oidc_audience"),
        ({"oidc_role_claim": "groups", "oidc_roles": ["g=reader"]}, "need oidc_issuer"),
        ({"oidc_issuer": issuer, "oidc_audience": "a", "oidc_role_claim": "groups"}, "go together"),
        ({"oidc_issuer": issuer, "oidc_audience": "a", "oidc_roles": ["g=reader"]}, "go together"),
        (
            {"oidc_issuer": issuer, "oidc_audience": "a", "oidc_role_claim": "groups", "oidc_roles": ["g=x"]},
            "unknown role",
        ),
        (
            {"oidc_issuer": issuer, "oidc_audience": "a", "oidc_ca_file": str(tmp_path / "no.pem")},
            "oidc_ca_file",
        ),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigurationError, match=message):
            open_oidc(load_settings(overrides, environ={}))


def test_claim_grants_add_to_the_stored_grants_of_the_principal(
    idp: IdentityProvider, tmp_path: Path
) -> None:
    realm = idp.keycloak
    settings = load_settings(
        {
            "data_dir": tmp_path / "data",
            "oidc_issuer": realm.issuer,
            "oidc_audience": "dicomhub",
            "oidc_accept_azp": True,
            "oidc_principal_claim": "preferred_username",
            "oidc_ca_file": str(idp.ca_file),
            "oidc_role_claim": "realm_access.roles",
            "oidc_roles": ["dicom-reader=reader@label:cardio", "dicom-curator=curator@label:cardio"],
        },
        environ={},
    )
    archive = open_archive(settings)
    try:
        access = archive.access
        cardio = Scope(ScopeKind.LABEL, "cardio")
        found = access.authenticate("Bearer " + realm.access_token("alice", realm_roles=["dicom-reader"]))
        assert found.principal == "alice" and found.access is not None
        assert found.access.grants == {Grant("reader", cardio)}
        assert access.grant("alice", "uploader", "patient:P7", granted_by="test")
        found = access.authenticate("Bearer " + realm.access_token("alice", realm_roles=["dicom-reader"]))
        assert found.access is not None
        assert found.access.grants == {
            Grant("reader", cardio),
            Grant("uploader", Scope(ScopeKind.PATIENT, "P7")),
        }
        # No mapped value: the stored grants alone, looked up as for an API token.
        found = access.authenticate("Bearer " + realm.access_token("bob", realm_roles=["offline_access"]))
        assert (found.principal, found.access) == ("bob", None)
        assert access.access_for("bob").grants == frozenset()
        refused = access.authenticate("Bearer " + realm.access_token("alice", exp=int(time.time()) - 600))
        assert (refused.principal, refused.reason) == (None, "expired")
    finally:
        archive.close()


def test_a_refetch_under_way_does_not_hold_up_tokens_of_known_keys() -> None:
    known, rotated = _key(), _key()
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def loader(_source: str) -> dict[str, Any]:
        calls.append(_source)
        if len(calls) > 1:  # the refetch: an issuer that answers slowly
            started.set()
            release.wait(10)
        return _jwks((known, "known"))

    verifier = OidcVerifier(ISSUER, "https://issuer.example.test/jwks", "hub", loader=loader)
    assert verifier.principal(_token(known, "known")) == "alice"
    outcome: list[str] = []

    def unknown_key() -> None:  # refused after the refetch: the issuer does not list it yet
        try:
            verifier.principal(_token(rotated, "new"))
        except TokenRejected as exc:
            outcome.append(str(exc))

    unknown = threading.Thread(target=unknown_key)
    unknown.start()
    try:
        assert started.wait(10)
        begun = time.monotonic()
        assert verifier.principal(_token(known, "known", sub="bob")) == "bob"
        assert time.monotonic() - begun < 1.0
    finally:
        release.set()
        unknown.join(10)
    assert len(calls) == 2 and outcome == ["the token is signed by an unknown key"]
