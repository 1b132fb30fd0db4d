"""Log-in from the web UI through the OpenID Connect provider (``oidc_ui_client_id``).

* ``GET /ui/login/options``: what the log-in form may offer (the provider's name).
* ``GET /ui/login/oidc``: starts the authorization code flow with PKCE
  (services/oidc_login.py) and sends the browser to the provider.
* ``GET /ui/login/callback``: where the provider sends it back; the code is
  exchanged server-side, the access token checked as any bearer token, and a
  page whose served script (static/login_callback.js) keeps it in
  sessionStorage, as a pasted token is kept.

The state is tied to the browser that started the log-in by an HttpOnly cookie
holding it: a callback URL made by someone else (their code and state) fails
in another browser, so nobody can be logged in as someone else (login CSRF,
RFC 6749 10.12). The PKCE verifier never leaves the server.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from dicomhub.config import Settings
from dicomhub.errors import NotFound
from dicomhub.services.archive import Archive
from dicomhub.services.oidc_login import LoginFailed, OidcLogin
from dicomhub.web.ui.pages import page

__all__ = ["CALLBACK_PATH", "routes"]

CALLBACK_PATH = "/ui/login/callback"
_COOKIE = "dicomhub_oidc_state"
_COOKIE_PATH = "/ui/login"
_MAX_PARAM = 4096


def _failure(reason: str, status: int = 400, *, used: bool = False) -> HTMLResponse:
    """The error page; ``used``: the state was spent, its cookie goes too (not before:
    a stray callback must not end a log-in this browser has under way)."""
    response = page("login_error.html", "Log-in failed", "", {"reason": reason})
    response.status_code = status
    if used:
        response.delete_cookie(_COOKIE, path=_COOKIE_PATH)
    return response


def _redirect_uri(request: Request, public_base_url: str) -> str:
    """Where the provider sends the browser back: the public origin (``public_base_url``'s)
    when configured, else this request's."""
    parts = urlsplit(public_base_url)
    if parts.scheme and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}{CALLBACK_PATH}"
    url = request.url
    return f"{url.scheme}://{url.netloc}{request.scope.get('root_path', '')}{CALLBACK_PATH}"


def routes(archive: Archive, settings: Settings) -> list[BaseRoute]:
    """The log-in routes; the OIDC ones answer 404 unless ``oidc_ui_client_id`` is set."""
    login: OidcLogin | None = None
    if settings.oidc_ui_client_id:
        login = OidcLogin(
            settings.oidc_issuer,
            settings.oidc_ui_client_id,
            settings.oidc_ui_scope,
            settings.oidc_ui_provider_name,
            ca_file=settings.oidc_ca_file,
        )

    def options(_request: Request) -> JSONResponse:
        offered = None if login is None else {"name": login.provider_name, "url": "/ui/login/oidc"}
        return JSONResponse({"oidc": offered}, headers={"Cache-Control": "no-cache"})

    def start(request: Request) -> Response:
        if login is None:
            raise NotFound("log-in through OpenID Connect is not configured (oidc_ui_client_id)")
        try:
            state, url = login.begin(_redirect_uri(request, settings.public_base_url))
        except LoginFailed as exc:
            return _failure(str(exc), 502)
        response = RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})
        response.set_cookie(
            _COOKIE,
            state,
            max_age=600,
            path=_COOKIE_PATH,
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="lax",  # sent on the provider's top-level redirect back, not on cross-site requests
        )
        return response

    def callback(request: Request) -> Response:
        if login is None:
            raise NotFound("log-in through OpenID Connect is not configured (oidc_ui_client_id)")
        params = request.query_params
        if "error" in params:
            # RFC 6749 4.1.2.1: the provider refused (the person declined, an unknown client...).
            described = params.get("error_description", "")[:200]
            detail = f" ({described})" if described else ""
            return _failure(f"the identity provider refused the log-in: {params['error'][:64]}{detail}")
        state, code = params.get("state", ""), params.get("code", "")
        if not state or not code or len(state) > _MAX_PARAM or len(code) > _MAX_PARAM:
            return _failure("the identity provider's answer lacks the code or the state")
        if request.cookies.get(_COOKIE) != state:
            return _failure("this log-in was not started in this browser (the state does not match)")
        try:
            token = login.finish(state, code)
        except LoginFailed as exc:
            return _failure(str(exc), used=True)
        found = archive.access.authenticate(f"Bearer {token}")
        if found.principal is None:
            return _failure(
                f"the identity provider's access token is not accepted here: {found.detail}", used=True
            )
        response = page("login_callback.html", "Logging in", "login_callback.js", {"token": token})
        # The token is in this answer: nothing may keep it, and the URL's code goes nowhere.
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.delete_cookie(_COOKIE, path=_COOKIE_PATH)
        return response

    return [
        Route("/ui/login/options", options, methods=["GET"]),
        Route("/ui/login/oidc", start, methods=["GET"]),
        Route(CALLBACK_PATH, callback, methods=["GET"]),
    ]
