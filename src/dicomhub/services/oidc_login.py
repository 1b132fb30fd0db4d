"""Log-in through an OpenID Connect provider: the authorization code flow with PKCE.

The web UI is a public client (it holds no secret). The archive runs the flow
on the browser's behalf: :meth:`OidcLogin.begin` makes a ``state`` and a PKCE
verifier, keeps them here (single use, ten minutes) and gives the URL of the
provider's authorization endpoint; :meth:`OidcLogin.finish` takes the code the
provider sent back, checks the state, and exchanges the code with the verifier
at the token endpoint. The access token it returns is checked by the caller
with the archive's own verifier (services/oidc.py) like any bearer token.

Both endpoints come from the issuer's discovery document, which must name the
configured issuer exactly and https endpoints: the code and the token travel
there.

References
----------
RFC 6749 4.1 (authorization code grant), 10.12 (state against CSRF); RFC 7636
(PKCE, S256); OpenID Connect Discovery 1.0, 3 and 4.3.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import secrets
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dicomhub.errors import ConfigurationError
from dicomhub.services.oidc import discovery_url, https_loader

__all__ = ["LoginFailed", "OidcLogin", "pkce_challenge"]

# How long a started log-in may take, and how many may be under way at once: the
# oldest are dropped beyond that, so that a flood of starts cannot grow memory.
STATE_SECONDS = 600.0
_MAX_PENDING = 10_000
_TIMEOUT = 10.0
_MAX_BODY = 1 << 20
_UNAVAILABLE = (OSError, ValueError, http.client.HTTPException, ConfigurationError)


class LoginFailed(Exception):
    """The log-in cannot complete; the message says why, for the person logging in."""


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of ``verifier`` (RFC 7636 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class _Pending:
    verifier: str
    redirect_uri: str
    started: float


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A token endpoint answers; it does not send the code elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class OidcLogin:
    """The authorization code flow of one issuer for the UI's public client.

    Parameters
    ----------
    issuer
        The configured ``oidc_issuer``: its discovery document gives the endpoints.
    client_id
        The UI's client at the provider (a public client allowed the redirect URI
        ``BASE/ui/login/callback``).
    scope
        What to ask for (``openid`` at least).
    provider_name
        Shown on the log-in button.
    ca_file
        PEM bundle the provider's certificate must chain to (empty: the system's).
    loader
        Reads the discovery document (tests pass their own).
    clock
        Monotonic seconds, for the lifetime of a state.
    """

    def __init__(
        self,
        issuer: str,
        client_id: str,
        scope: str = "openid",
        provider_name: str = "",
        *,
        ca_file: str = "",
        loader: Callable[[str], dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (issuer and client_id):
            raise ConfigurationError("oidc_ui_client_id needs oidc_issuer")
        self.issuer = issuer
        self.client_id = client_id
        self.scope = scope or "openid"
        self.provider_name = provider_name or "OpenID Connect"
        self._loader = loader if loader is not None else https_loader(ca_file)
        try:
            context = ssl.create_default_context(cafile=ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"oidc_ca_file {ca_file!r}: cannot load it: {exc}") from exc
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), _NoRedirects()
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._endpoints: tuple[str, str] | None = None

    def _discover(self) -> tuple[str, str]:
        """The (authorization, token) endpoints, read once and kept."""
        if self._endpoints is not None:
            return self._endpoints
        url = discovery_url(self.issuer)
        try:
            document = self._loader(url)
        except _UNAVAILABLE as exc:
            raise LoginFailed(f"cannot read the identity provider's discovery document: {exc}") from exc
        if document.get("issuer") != self.issuer:
            raise LoginFailed(f"the discovery document {url} does not name the configured issuer")
        endpoints = (document.get("authorization_endpoint"), document.get("token_endpoint"))
        for endpoint in endpoints:
            if not isinstance(endpoint, str) or not endpoint.startswith("https://"):
                raise LoginFailed(
                    f"the discovery document {url} lacks an https authorization or token endpoint"
                )
        self._endpoints = (str(endpoints[0]), str(endpoints[1]))
        return self._endpoints

    def begin(self, redirect_uri: str) -> tuple[str, str]:
        """Start a log-in: the new ``state`` and the authorization URL to send the browser to.

        Raises
        ------
        LoginFailed
            When the provider's discovery document cannot be read or is unusable.
        """
        authorization_endpoint, _ = self._discover()
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)  # 64 characters of the unreserved set (RFC 7636 4.1)
        now = self._clock()
        with self._lock:
            while self._pending:
                oldest = next(iter(self._pending.values()))
                if len(self._pending) < _MAX_PENDING and now - oldest.started < STATE_SECONDS:
                    break
                self._pending.popitem(last=False)
            self._pending[state] = _Pending(verifier, redirect_uri, now)
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": self.scope,
                "state": state,
                "code_challenge": pkce_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        separator = "&" if "?" in authorization_endpoint else "?"
        return state, authorization_endpoint + separator + query

    def finish(self, state: str, code: str) -> str:
        """The access token for ``code``, when ``state`` is one this archive started.

        Raises
        ------
        LoginFailed
            For an unknown, used or expired state, or a code the provider refuses.
        """
        with self._lock:
            pending = self._pending.pop(state, None)
        if pending is None or self._clock() - pending.started >= STATE_SECONDS:
            raise LoginFailed("this log-in was not started here, was already used, or took too long")
        _, token_endpoint = self._discover()
        form = urllib.parse.urlencode(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": pending.redirect_uri,
                "client_id": self.client_id,
                "code_verifier": pending.verifier,
            }
        ).encode("ascii")
        request = urllib.request.Request(
            token_endpoint,
            data=form,
            headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        )
        try:
            with self._opener.open(request, timeout=_TIMEOUT) as response:
                body = response.read(_MAX_BODY)
        except urllib.error.HTTPError as exc:
            raise LoginFailed(f"the identity provider refused the code: {_oauth_error(exc)}") from exc
        except _UNAVAILABLE as exc:
            raise LoginFailed(f"cannot reach the identity provider's token endpoint: {exc}") from exc
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise LoginFailed("the token endpoint did not answer JSON") from exc
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise LoginFailed("the token endpoint gave no access token")
        return token


def _oauth_error(exc: urllib.error.HTTPError) -> str:
    """``error`` and ``error_description`` of an RFC 6749 5.2 answer, else the status."""
    try:
        answer = json.loads(exc.read(_MAX_BODY))
    except (OSError, ValueError):
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        description = answer.get("error_description")
        detail = f" ({str(description)[:200]})" if isinstance(description, str) else ""
        return f"{answer['error'][:64]}{detail}"
    return f"HTTP {exc.code}"
