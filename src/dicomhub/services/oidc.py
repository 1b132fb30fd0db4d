"""OpenID Connect bearer tokens: JWTs checked against the issuer's published keys.

Only asymmetric signatures are accepted (RS256, ES256): an ``alg`` of ``none``
or an HMAC one would let anyone who knows the JWKS (it is public) forge tokens.
``iss``, ``aud``, ``exp`` and ``nbf`` are required and checked. The JWKS comes
from a file or an https URL; it is cached and fetched again when a token names
a key id the cache does not hold, at most once a minute, so that a flood of
tokens with made-up key ids cannot make the archive hammer the issuer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt

from dicomhub.errors import ConfigurationError

__all__ = ["ALGORITHMS", "OidcVerifier", "TokenRejected"]

LOGGER = logging.getLogger("dicomhub.oidc")

ALGORITHMS = ("RS256", "ES256")
_REFETCH_SECONDS = 60.0
_MAX_JWKS_BYTES = 1 << 20


class TokenRejected(Exception):
    """The JWT is not acceptable; the message says why (never echoed with the token)."""


def _load_jwks(source: str) -> dict[str, Any]:
    if source.startswith("https://"):
        with urllib.request.urlopen(source, timeout=10) as response:  # noqa: S310 (https only)
            body = response.read(_MAX_JWKS_BYTES + 1)
        if len(body) > _MAX_JWKS_BYTES:
            raise ConfigurationError(f"the JWKS at {source} is larger than 1 MiB")
    elif "://" in source:
        raise ConfigurationError(f"oidc_jwks {source!r}: an https URL or a file")
    else:
        body = Path(source).read_bytes()
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise ConfigurationError(f"the JWKS {source} is not JSON") from exc
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ConfigurationError(f"the JWKS {source} has no 'keys' list")
    return document


class OidcVerifier:
    """Validates JWTs of one issuer for one audience; names the principal by one claim."""

    def __init__(
        self,
        issuer: str,
        jwks: str,
        audience: str,
        principal_claim: str = "sub",
        *,
        loader: Callable[[str], dict[str, Any]] = _load_jwks,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (issuer and jwks and audience):
            raise ConfigurationError("OpenID Connect needs oidc_issuer, oidc_jwks and oidc_audience")
        if "://" in jwks and not jwks.startswith("https://"):
            raise ConfigurationError(f"oidc_jwks {jwks!r}: an https URL or a file")
        self.issuer = issuer
        self.audience = audience
        self.principal_claim = principal_claim or "sub"
        self._source = jwks
        self._loader = loader
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._refetched_at: float | None = None

    def _refresh(self, force: bool) -> None:
        """Load the JWKS when never loaded; with ``force`` (an unknown key id), load it
        again unless that was done less than a minute ago."""
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
                document = self._loader(self._source)
            except (OSError, ValueError, ConfigurationError) as exc:
                # Kept: the keys known so far; the next try is a refetch, rate-limited.
                LOGGER.warning("cannot load the JWKS %s: %s", self._source, exc)
                return
            keys: dict[str, Any] = {}
            for index, jwk in enumerate(document["keys"]):
                if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                    continue
                try:
                    key = jwt.PyJWK(jwk)
                except jwt.PyJWTError:
                    continue
                if key.algorithm_name in ALGORITHMS:
                    keys[str(jwk.get("kid", f"#{index}"))] = key
            self._keys = keys

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

    def principal(self, token: str) -> str:
        """The principal a valid token names; raises :class:`TokenRejected`."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRejected("not a JWT") from exc
        if header.get("alg") not in ALGORITHMS:
            raise TokenRejected(f"signature algorithm {str(header.get('alg'))[:16]!r} is not accepted")
        key = self._key_for(header.get("kid"))
        if key.algorithm_name != header["alg"]:
            raise TokenRejected("the token's algorithm does not match its key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[header["alg"]],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["iss", "aud", "exp", "nbf"]},
                leeway=30,
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenRejected("the token has expired") from exc
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"the token is not valid: {exc}") from exc
        name = claims.get(self.principal_claim)
        if not isinstance(name, str) or not name or len(name) > 128:
            raise TokenRejected(f"the token has no usable {self.principal_claim!r} claim")
        return name
