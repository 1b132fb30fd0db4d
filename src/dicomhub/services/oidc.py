"""OpenID Connect bearer tokens: JWTs checked against the issuer's published keys.

Only asymmetric signatures are accepted (RS256, ES256): an ``alg`` of ``none``
or an HMAC one would let anyone who knows the JWKS (it is public) forge tokens.

Claims, as identity providers issue them (Keycloak, Entra ID, Auth0, Google):

* ``iss`` and ``exp`` are required; ``iss`` must be the configured issuer.
* The audience: the configured value must be in ``aud`` (a string or a list);
  with ``accept_azp``, a token whose ``azp`` (authorized party) is that value
  is accepted too, whatever its ``aud``: Keycloak names its client there and
  puts ``account``, or nothing, in ``aud``.
* ``nbf`` and ``iat`` are checked when present (not in the future): many access
  tokens carry no ``nbf``, and refusing them refused every Keycloak token.
* All times with :data:`LEEWAY_SECONDS` of clock skew.
* A ``typ`` claim, when present, must be ``Bearer``: Keycloak marks its ID tokens
  ``ID``, and an ID token is not an access token even when signed by the same key.

The keys come from a JWKS file, an https JWKS URL, or, with neither, from the
issuer's discovery document (``ISSUER/.well-known/openid-configuration``,
OpenID Connect Discovery 1.0 section 4), which must name the configured issuer
exactly (section 4.3) and an https ``jwks_uri``. Discovery is https only, with
no exception for loopback: keys read over plain http can be replaced by anyone
on the path, and a local identity provider can be given a certificate (the
tests do). The keys are cached and fetched again when a token names a key id
the cache does not hold, at most once a minute, so that a flood of tokens with
made-up key ids cannot make the archive hammer the issuer.

References
----------
OpenID Connect Core 1.0, section 2 (ID token claims, ``azp``); OpenID Connect
Discovery 1.0, sections 4 and 4.3; RFC 7519 section 4.1 (``nbf``, ``iat``).
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from dicomhub.errors import ConfigurationError

__all__ = [
    "ALGORITHMS",
    "LEEWAY_SECONDS",
    "OidcIdentity",
    "OidcVerifier",
    "TokenRejected",
    "claim_values",
    "discovery_url",
    "https_loader",
]

LOGGER = logging.getLogger("dicomhub.oidc")

ALGORITHMS = ("RS256", "ES256")
# Clock skew allowed between the issuer and this archive, for exp, nbf and iat.
LEEWAY_SECONDS = 30
_REFETCH_SECONDS = 60.0
_MAX_DOCUMENT_BYTES = 1 << 20
_FETCH_TIMEOUT = 10.0
# Role claims of more values than this are cut: nobody holds thousands of roles,
# and a token should not make the mapping loop long.
_MAX_CLAIM_VALUES = 1000
# Claims holding space-separated scopes rather than one value.
_SCOPE_CLAIMS = frozenset({"scope", "scp"})
# What a loader may raise when the issuer cannot be read: logged, the token refused.
_UNAVAILABLE = (OSError, ValueError, http.client.HTTPException, ConfigurationError)


class TokenRejected(Exception):
    """The JWT is not acceptable; the message says why (never echoed with the token)."""


@dataclass(frozen=True, slots=True)
class OidcIdentity:
    """Who a valid token names, and the values of its role claim (empty when none
    is configured or the token carries none)."""

    principal: str
    claim_values: frozenset[str] = frozenset()


def discovery_url(issuer: str) -> str:
    """The discovery document of ``issuer``: any terminating ``/`` removed, then
    ``/.well-known/openid-configuration`` appended (OpenID Connect Discovery 1.0, 4)."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def claim_values(claims: Mapping[str, Any], path: str) -> frozenset[str]:
    """The strings a token holds at ``path``.

    ``path`` names a claim outright when the token has a claim of that name
    (Auth0's namespaced claims are URLs, dots included); else each ``.`` steps
    into an object: ``realm_access.roles``, ``resource_access.dicomhub.roles``.
    A string gives itself, a list its strings; anything else gives nothing. The
    OAuth scope claims ``scope`` (RFC 8693, 4.2) and ``scp`` (Entra ID) are strings
    of space-separated scopes: each scope is a value.
    """
    node: Any
    if path in claims:
        node = claims[path]
    else:
        node = claims
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return frozenset()
            node = node[part]
    if isinstance(node, str):
        if path in _SCOPE_CLAIMS:
            return frozenset(node.split()[:_MAX_CLAIM_VALUES])
        return frozenset({node})
    if isinstance(node, list):
        return frozenset(v for v in node[:_MAX_CLAIM_VALUES] if isinstance(v, str))
    return frozenset()


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to https URLs only: a redirect to http would hand the keys'
    integrity to whoever is on the path."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not newurl.startswith("https://"):
            raise urllib.error.HTTPError(newurl, code, f"redirect to {newurl[:100]} refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def https_loader(ca_file: str = "") -> Callable[[str], dict[str, Any]]:
    """A reader of JSON documents (discovery, JWKS) from https URLs or files.

    Parameters
    ----------
    ca_file
        A PEM bundle of the certificate authorities the issuer's certificate must
        chain to; only those are trusted then. Empty: the system's trust store.

    Returns
    -------
    Callable
        ``load(source)``: the JSON object at ``source`` (at most 1 MiB).

    Raises
    ------
    ConfigurationError
        When ``ca_file`` cannot be loaded. The loader raises it for a source that is
        neither a file nor an https URL, a document too large or not a JSON object,
        and ``OSError`` when the source cannot be read.
    """
    try:
        context = ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"oidc_ca_file {ca_file!r}: cannot load it: {exc}") from exc
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _HttpsOnlyRedirects())

    def load(source: str) -> dict[str, Any]:
        if source.startswith("https://"):
            request = urllib.request.Request(source, headers={"Accept": "application/json"})
            with opener.open(request, timeout=_FETCH_TIMEOUT) as response:
                body = response.read(_MAX_DOCUMENT_BYTES + 1)
        elif "://" in source:
            raise ConfigurationError(f"{source!r}: an https URL or a file")
        else:
            body = Path(source).read_bytes()
        if len(body) > _MAX_DOCUMENT_BYTES:
            raise ConfigurationError(f"{source} is larger than 1 MiB")
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise ConfigurationError(f"{source} is not JSON") from exc
        if not isinstance(document, dict):
            raise ConfigurationError(f"{source} is not a JSON object")
        return document

    return load


class OidcVerifier:
    """Validates JWTs of one issuer for one audience; names the principal by one claim.

    Parameters
    ----------
    issuer
        The ``iss`` tokens must carry, and where discovery starts.
    jwks
        A JWKS file or https URL; empty: found through the issuer's discovery
        document (the issuer must then be an https URL).
    audience
        The value tokens must name in ``aud`` (or in ``azp``, with ``accept_azp``).
    principal_claim
        The claim naming the principal (``sub``, ``preferred_username``, ``oid``...).
    accept_azp
        Accept a token whose ``azp`` equals ``audience`` whatever its ``aud``.
    role_claim
        The claim (a name, or a dotted path into objects) whose values
        :meth:`verify` reports; empty: none.
    loader
        Reads a JSON document from a URL or file (default :func:`https_loader`
        trusting ``ca_file``); tests pass their own.
    ca_file
        See :func:`https_loader`.
    clock
        Monotonic seconds, for the refetch limit.

    Raises
    ------
    ConfigurationError
        For a missing issuer or audience, a JWKS URL that is not https, an issuer
        that is not https when discovery needs it, or a CA bundle that cannot be read.
    """

    def __init__(
        self,
        issuer: str,
        jwks: str,
        audience: str,
        principal_claim: str = "sub",
        *,
        accept_azp: bool = False,
        role_claim: str = "",
        loader: Callable[[str], dict[str, Any]] | None = None,
        ca_file: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (issuer and audience):
            raise ConfigurationError("OpenID Connect needs oidc_issuer and oidc_audience")
        if "://" in jwks and not jwks.startswith("https://"):
            raise ConfigurationError(f"oidc_jwks {jwks!r}: an https URL or a file")
        if not jwks and not issuer.startswith("https://"):
            raise ConfigurationError(
                f"oidc_issuer {issuer!r}: discovery (no oidc_jwks given) needs an https issuer; "
                "keys read over plain http could be replaced by anyone on the way"
            )
        self.issuer = issuer
        self.audience = audience
        self.principal_claim = principal_claim or "sub"
        self.accept_azp = accept_azp
        self.role_claim = role_claim
        self._source = jwks
        self._loader = loader if loader is not None else https_loader(ca_file)
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}
        self._jwks_uri: str | None = None  # found by discovery; None: discover (again)
        self._fetched_at: float | None = None
        self._refetched_at: float | None = None

    @property
    def discovery_url(self) -> str | None:
        """Where the keys are found when no JWKS is configured (else None)."""
        return None if self._source else discovery_url(self.issuer)

    def _discover(self) -> str:
        """The ``jwks_uri`` of the issuer's discovery document, checked."""
        url = discovery_url(self.issuer)
        document = self._loader(url)
        named = document.get("issuer")
        if named != self.issuer:
            raise ConfigurationError(
                f"the discovery document {url} names the issuer {str(named)[:200]!r}, not "
                f"oidc_issuer {self.issuer!r} (they must be identical: OpenID Connect Discovery 4.3)"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
            raise ConfigurationError(f"the discovery document {url} has no https jwks_uri")
        return jwks_uri

    def _load_keys(self) -> dict[str, Any]:
        source = self._source
        if not source:
            if self._jwks_uri is None:
                self._jwks_uri = self._discover()
            source = self._jwks_uri
        try:
            document = self._loader(source)
        except _UNAVAILABLE:
            if not self._source:
                self._jwks_uri = None  # the next refetch discovers again: it may have moved
            raise
        if not isinstance(document.get("keys"), list):
            raise ConfigurationError(f"the JWKS {source} has no 'keys' list")
        import jwt  # on first use: PyJWT and cryptography take ~8 MB a server without OIDC need not pay

        keys: dict[str, Any] = {}
        for index, jwk in enumerate(document["keys"]):
            # Keycloak publishes its encryption key (use "enc") beside the signing ones.
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(jwk)
            except jwt.PyJWTError:
                continue
            if key.algorithm_name in ALGORITHMS:
                keys[str(jwk.get("kid", f"#{index}"))] = key
        return keys

    def _refresh(self, force: bool) -> None:
        """Load the keys when never loaded; with ``force`` (an unknown key id), load them
        again unless that was done less than a minute ago."""
        if not force and self._fetched_at is not None:
            # Without the lock: a token of a known key never waits for a refetch that
            # another request (an unknown key id) has under way with a slow issuer.
            return
        with self._lock:
            now = self._clock()
            if self._fetched_at is not None:
                if not force:
                    return
                if self._refetched_at is not None and now - self._refetched_at < _REFETCH_SECONDS:
                    return
                self._refetched_at = now
            self._fetched_at = now
            try:
                self._keys = self._load_keys()
            except _UNAVAILABLE as exc:
                # Kept: the keys known so far; the next try is a refetch, rate-limited.
                where = self._source or discovery_url(self.issuer)
                log = LOGGER.error if isinstance(exc, ConfigurationError) else LOGGER.warning
                log("cannot load the OpenID Connect keys (%s): %s", where, exc)

    def _key_for(self, kid: str | None) -> Any:
        self._refresh(force=False)
        if kid is None:
            if len(self._keys) == 1:
                return next(iter(self._keys.values()))
            raise TokenRejected("the token names no key (kid) and the JWKS has several")
        if kid not in self._keys:
            self._refresh(force=True)
        if kid not in self._keys:
            raise TokenRejected("the token is signed by an unknown key")
        return self._keys[kid]

    def _check_audience(self, claims: Mapping[str, Any]) -> None:
        aud = claims.get("aud")
        if isinstance(aud, str):
            audiences = [aud]
        elif isinstance(aud, list):
            audiences = [a for a in aud if isinstance(a, str)]
        elif aud is None:
            audiences = []
        else:
            raise TokenRejected("the token's aud is neither a string nor a list")
        if self.audience in audiences:
            return
        if self.accept_azp and claims.get("azp") == self.audience:
            return
        if aud is None and not self.accept_azp:
            raise TokenRejected("the token has no aud claim")
        raise TokenRejected("the token is not meant for this archive (audience)")

    def verify(self, token: str) -> OidcIdentity:
        """The identity a valid token names.

        Raises
        ------
        TokenRejected
            When the token is malformed, signed by no key of the issuer, expired,
            not yet valid, of another issuer or audience, not an access token, or
            lacks the principal claim.
        """
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRejected("not a JWT") from exc
        if header.get("alg") not in ALGORITHMS:
            raise TokenRejected(f"signature algorithm {str(header.get('alg'))[:16]!r} is not accepted")
        kid = header.get("kid")
        key = self._key_for(kid if isinstance(kid, str) else None)
        if key.algorithm_name != header["alg"]:
            raise TokenRejected("the token's algorithm does not match its key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[header["alg"]],
                issuer=self.issuer,
                # nbf and iat are checked when present; aud by _check_audience (azp).
                options={"require": ["iss", "exp"], "verify_aud": False},
                leeway=LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenRejected("the token has expired") from exc
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"the token is not valid: {exc}") from exc
        self._check_audience(claims)
        typ = claims.get("typ")
        if typ is not None and str(typ).lower() != "bearer":
            raise TokenRejected(f"the token is of type {str(typ)[:16]!r}, not an access token (Bearer)")
        name = claims.get(self.principal_claim)
        if not isinstance(name, str) or not name or len(name) > 128:
            raise TokenRejected(f"the token has no usable {self.principal_claim!r} claim")
        values = claim_values(claims, self.role_claim) if self.role_claim else frozenset()
        return OidcIdentity(name, values)

    def principal(self, token: str) -> str:
        """The principal a valid token names; raises :class:`TokenRejected`."""
        return self.verify(token).principal
