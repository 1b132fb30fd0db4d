"""A local OpenID Connect identity provider for the tests: HTTPS on 127.0.0.1.

It serves, for a Keycloak realm and an Entra ID tenant, the discovery document
(``ISSUER/.well-known/openid-configuration``) and the JWKS at the paths those
providers use, with a certificate of a test CA (``tests/e2e/tlscerts.py``), and
signs access tokens shaped as they issue them (RS256, ``kid`` in the header):

* Keycloak (``https://HOST/realms/REALM``): no ``nbf``; ``typ: Bearer``; ``aud``
  ``account`` and the client in ``azp``; ``realm_access.roles``,
  ``resource_access.CLIENT.roles``, ``preferred_username``; its JWKS also lists
  an encryption key (``use: enc``, ``RSA-OAEP``).
* Entra ID v2.0 (``https://HOST/TENANT/v2.0``, keys at
  ``/TENANT/discovery/v2.0/keys`` without ``alg``): ``aud`` the API's client id,
  ``azp`` the calling app, ``roles``, ``groups`` (object ids), ``oid``, ``tid``,
  ``scp``, ``ver: 2.0``, and ``nbf``.

The Keycloak realm also runs the authorization code flow with PKCE (RFC 7636,
S256) for a public client: its authorization endpoint approves ``login_user``
at once (no form) and sends the browser back with a code and the state; its
token endpoint exchanges that code, once, for an access token of that user,
after checking the client, the redirect URI and the code verifier.

Every request path is recorded, so that tests can count fetches.
"""

from __future__ import annotations

import abc
import base64
import hashlib
import json
import secrets
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.e2e.tlscerts import make_pki

HOST = "127.0.0.1"
ENTRA_TENANT = "9f1c2b3a-4d5e-4f60-8a7b-1c2d3e4f5a6b"


def _public_jwk(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return jwk


@dataclass
class SigningKey:
    kid: str
    private: rsa.RSAPrivateKey
    published: bool = True  # listed in the JWKS


@dataclass
class Provider(abc.ABC):
    """One issuer on the local server: its discovery document, keys and tokens."""

    idp: IdentityProvider
    issuer_path: str  # e.g. /realms/hospital
    jwks_path: str
    keys: list[SigningKey] = field(default_factory=list)
    # Replaces fields of the discovery document (an issuer that does not match...).
    discovery_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return self.idp.base_url + self.issuer_path

    @property
    def jwks_uri(self) -> str:
        return self.idp.base_url + self.jwks_path

    @property
    def discovery_path(self) -> str:
        return self.issuer_path + "/.well-known/openid-configuration"

    def add_key(self, kid: str, published: bool = True) -> SigningKey:
        key = SigningKey(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), published)
        self.keys.append(key)
        return key

    def key(self, kid: str) -> SigningKey:
        return next(k for k in self.keys if k.kid == kid)

    def sign(self, claims: dict[str, Any], kid: str | None = None) -> str:
        key = self.key(kid) if kid else self.keys[0]
        return jwt.encode(claims, key.private, algorithm="RS256", headers={"kid": key.kid, "typ": "JWT"})

    @abc.abstractmethod
    def jwks(self) -> dict[str, Any]:
        """The JWKS document, as this provider publishes it."""

    @abc.abstractmethod
    def discovery(self) -> dict[str, Any]:
        """The discovery document, as this provider publishes it."""


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    challenge: str


@dataclass
class KeycloakRealm(Provider):
    realm: str = "hospital"
    client: str = "dicomhub"
    # Who the authorization endpoint logs in, and with which realm roles (None: refuse).
    login_user: str | None = None
    login_roles: tuple[str, ...] = ()
    codes: dict[str, _Grant] = field(default_factory=dict)

    @property
    def authorization_path(self) -> str:
        return self.issuer_path + "/protocol/openid-connect/auth"

    @property
    def token_path(self) -> str:
        return self.issuer_path + "/protocol/openid-connect/token"

    def authorize(self, query: dict[str, str]) -> tuple[int, Any]:
        """Approve ``login_user`` at once: a redirect back with a code and the state."""
        redirect_uri = query.get("redirect_uri", "")
        if query.get("response_type") != "code" or query.get("client_id") != self.client or not redirect_uri:
            return 400, {"error": "invalid_request"}
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return 400, {"error": "invalid_request", "error_description": "PKCE S256 required"}
        back: dict[str, str] = {"state": query.get("state", "")}
        if self.login_user is None:
            back["error"] = "access_denied"
        else:
            code = secrets.token_urlsafe(24)
            self.codes[code] = _Grant(self.client, redirect_uri, query["code_challenge"])
            back["code"] = code
        return 302, redirect_uri + "?" + urllib.parse.urlencode(back)

    def token(self, form: dict[str, str]) -> tuple[int, Any]:
        """Exchange a code (once) for an access token of ``login_user`` (RFC 6749 4.1.3)."""
        grant = self.codes.pop(form.get("code", ""), None)
        if form.get("grant_type") != "authorization_code" or grant is None:
            return 400, {"error": "invalid_grant"}
        if form.get("client_id") != grant.client_id or form.get("redirect_uri") != grant.redirect_uri:
            return 400, {"error": "invalid_grant", "error_description": "client or redirect_uri"}
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant.challenge:
            return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
        assert self.login_user is not None
        token = self.access_token(self.login_user, realm_roles=self.login_roles)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": "openid"}

    def jwks(self) -> dict[str, Any]:
        keys = [
            {**_public_jwk(k.private), "kid": k.kid, "alg": "RS256", "use": "sig"}
            for k in self.keys
            if k.published
        ]
        # Keycloak publishes its encryption key too; it must never verify a signature.
        keys.append(
            {**_public_jwk(self.idp.enc_key), "kid": "enc-" + self.realm, "alg": "RSA-OAEP", "use": "enc"}
        )
        return {"keys": keys}

    def discovery(self) -> dict[str, Any]:
        oidc = self.issuer + "/protocol/openid-connect"
        return {
            "issuer": self.issuer,
            "authorization_endpoint": oidc + "/auth",
            "token_endpoint": oidc + "/token",
            "introspection_endpoint": oidc + "/token/introspect",
            "userinfo_endpoint": oidc + "/userinfo",
            "end_session_endpoint": oidc + "/logout",
            "jwks_uri": self.jwks_uri,
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "response_types_supported": ["code", "id_token", "code id_token"],
            "subject_types_supported": ["public", "pairwise"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256", "PS256"],
            "scopes_supported": ["openid", "profile", "email", "roles"],
            **self.discovery_overrides,
        }

    def access_token(
        self,
        username: str,
        realm_roles: Sequence[str] = (),
        client_roles: Sequence[str] = (),
        kid: str | None = None,
        lifetime: int = 300,
        **overrides: Any,
    ) -> str:
        """An access token as Keycloak 2x issues it to ``self.client`` (no nbf)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "exp": now + lifetime,
            "iat": now,
            "auth_time": now - 5,
            "jti": str(uuid.uuid4()),
            "iss": self.issuer,
            "aud": "account",
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, username)),
            "typ": "Bearer",
            "azp": self.client,
            "sid": str(uuid.uuid4()),
            "acr": "1",
            "allowed-origins": ["https://viewer.example.test"],
            "realm_access": {"roles": ["offline_access", "uma_authorization", *realm_roles]},
            "resource_access": {
                self.client: {"roles": list(client_roles)},
                "account": {"roles": ["manage-account", "manage-account-links", "view-profile"]},
            },
            "scope": "openid profile email",
            "email_verified": True,
            "name": username.title(),
            "preferred_username": username,
            "given_name": username.title(),
            "family_name": "Test",
            "email": f"{username}@hospital.example.test",
        }
        if not client_roles:
            del claims["resource_access"][self.client]
        claims.update(overrides)
        return self.sign({k: v for k, v in claims.items() if v is not None}, kid)


@dataclass
class EntraTenant(Provider):
    tenant: str = ENTRA_TENANT
    app_id: str = "6e74172b-be56-4843-9ff4-e66a39bb12e3"  # the API's client id: the audience

    def jwks(self) -> dict[str, Any]:
        # Entra ID lists no "alg"; "issuer" is the tenant's v2.0 issuer.
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "kid": k.kid,
                    "x5t": k.kid,
                    "n": _public_jwk(k.private)["n"],
                    "e": _public_jwk(k.private)["e"],
                    "issuer": self.issuer,
                }
                for k in self.keys
                if k.published
            ]
        }

    def discovery(self) -> dict[str, Any]:
        base = self.idp.base_url + "/" + self.tenant
        return {
            "token_endpoint": base + "/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": self.jwks_uri,
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": self.issuer,
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": base + "/oauth2/v2.0/authorize",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": base + "/oauth2/v2.0/logout",
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "acr",
                "nonce",
                "tid",
                "ver",
            ],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            **self.discovery_overrides,
        }

    def access_token(
        self,
        upn: str,
        roles: Sequence[str] = (),
        groups: Sequence[str] = (),
        kid: str | None = None,
        lifetime: int = 3600,
        **overrides: Any,
    ) -> str:
        """A v2.0 access token for the API ``self.app_id``, as Entra ID issues it."""
        now = int(time.time())
        oid = str(uuid.uuid5(uuid.NAMESPACE_URL, upn))
        claims: dict[str, Any] = {
            "aud": self.app_id,
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "aio": "AWQAm/8ZAAAA" + uuid.uuid4().hex,
            "azp": "04b07795-8ddb-461a-bbee-02f9e1bf7b46",
            "azpacr": "0",
            "name": upn.split("@")[0].title(),
            "oid": oid,
            "preferred_username": upn,
            "rh": "0.AXoA" + uuid.uuid4().hex,
            "roles": list(roles),
            "groups": list(groups),
            "scp": "access_as_user",
            "sub": secrets.token_urlsafe(32)[:43],  # pairwise: per user and application
            "tid": self.tenant,
            "uti": uuid.uuid4().hex[:22],
            "ver": "2.0",
        }
        for name in ("roles", "groups"):
            if not claims[name]:
                del claims[name]  # Entra ID leaves out a claim with no value
        claims.update(overrides)
        return self.sign({k: v for k, v in claims.items() if v is not None}, kid)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        idp = self.server.idp
        idp.record(self.path)
        self._send(*idp.answer(self.path))

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        idp = self.server.idp
        idp.record(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        if self.path == idp.keycloak.token_path:
            self._send(*idp.keycloak.token(form))
        else:
            self._send(404, {"error": "not found"})

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        if status in (301, 302):
            self.send_header("Location", str(body))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    idp: IdentityProvider
    context: ssl.SSLContext

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        # The TLS handshake happens in the handler thread, not in the accept loop.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address


class IdentityProvider:
    """The HTTPS server with a Keycloak realm and an Entra ID tenant; a context manager."""

    def __init__(self, directory: Path) -> None:
        pki = make_pki(directory)
        self.ca_file = pki.ca
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server.cert, pki.server.key)
        self._server = _Server((HOST, 0), _Handler)
        self._server.idp = self
        self._server.context = context
        self.base_url = f"https://{HOST}:{self._server.server_address[1]}"
        self.enc_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.requests: list[str] = []
        # Paths answered with a redirect to the given URL.
        self.redirects: dict[str, str] = {}
        self._lock = threading.Lock()
        self.keycloak = KeycloakRealm(
            self, "/realms/hospital", "/realms/hospital/protocol/openid-connect/certs"
        )
        self.keycloak.add_key("kc-rsa-1")
        self.entra = EntraTenant(self, f"/{ENTRA_TENANT}/v2.0", f"/{ENTRA_TENANT}/discovery/v2.0/keys")
        self.entra.add_key("nOo3ZDrODXEK1jKWhXslHR_KXEg")
        # A short poll interval: close() waits for it.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="test-idp", daemon=True
        )
        self._thread.start()

    def record(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)

    def count(self, path: str) -> int:
        with self._lock:
            return self.requests.count(path)

    def answer(self, path: str) -> tuple[int, Any]:
        if path in self.redirects:
            return 302, self.redirects[path]
        route, _, query = path.partition("?")
        if route == self.keycloak.authorization_path:
            return self.keycloak.authorize(dict(urllib.parse.parse_qsl(query)))
        for provider in (self.keycloak, self.entra):
            if path == provider.discovery_path:
                return 200, provider.discovery()
            if path == provider.jwks_path:
                return 200, provider.jwks()
        return 404, {"error": "not found"}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> IdentityProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
