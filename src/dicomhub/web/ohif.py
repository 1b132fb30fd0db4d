"""``/ohif``: the OHIF viewer installed by ``dicomhub ohif install`` (docs/ohif.md).

The viewer is a prebuilt single-page application: its files are served as
they are, and any other path without a file extension (``/ohif/viewer``,
``/ohif/?...``: OHIF's client-side routes) gets its ``index.html``. Like the
UI's pages it is public and holds no archive data: OHIF asks DICOMweb with
the caller's token (see :func:`dicomhub.services.ohif.app_config`).

OHIF decodes images in WebAssembly and web workers and its build uses
``eval`` and inline scripts, so it has its own, looser Content Security
Policy, sent only under ``/ohif``; the UI's strict one is untouched.
Which version is served is read per request: an install or uninstall is
seen by a running server.
"""

from __future__ import annotations

import html
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount
from starlette.types import Receive, Scope, Send

from dicomhub.services.ohif import active_viewer

__all__ = ["OHIF_MOUNT", "OhifFiles", "ohif_mount"]

OHIF_MOUNT = "/ohif"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".jsonc": "application/json",
    ".webapp": "application/manifest+json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".xml": "application/xml",
}
# webpack names its chunks, codecs and fonts after a content hash: those never change.
_HASHED = re.compile(r"(^|\.)[0-9a-f]{16}\.(js|wasm|woff2)$")
# Where a page reads its configuration or boots from: always revalidated.
_NO_CACHE = {"index.html", "app-config.js"}


def _csp(connect: str) -> str:
    return (
        "default-src 'self'; "
        "script-src 'self' 'unsafe-inline' 'unsafe-eval' 'wasm-unsafe-eval' blob:; "
        "worker-src 'self' blob:; "
        f"connect-src 'self' {connect}data: blob:; "
        "img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; font-src 'self' data:; "
        "object-src 'none'; base-uri 'self'; frame-ancestors 'self'"
    )


def _not_installed(csp: str) -> Response:
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>OHIF is not installed</title></head>"
        "<body><h1>OHIF is not installed</h1>"
        "<p>Install the viewer into this server's data directory with "
        "<code>dicomhub ohif install</code> (it fetches the prebuilt <code>@ohif/app</code> "
        "package with npm); the running server then serves it here. See docs/ohif.md.</p>"
        f'<p><a href="{html.escape("/")}">Back to dicomhub</a></p></body></html>'
    )
    return HTMLResponse(
        body, status_code=404, headers={"Cache-Control": "no-cache", "Content-Security-Policy": csp}
    )


class OhifFiles:
    """ASGI app serving the active OHIF install from ``data_dir``, with the SPA fallback."""

    def __init__(self, data_dir: Path, dicomweb_origin: str = "") -> None:
        self._data_dir = data_dir
        self._csp = _csp(f"{dicomweb_origin} " if dicomweb_origin else "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = self._respond(request)
        await response(scope, receive, send)

    def _respond(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return PlainTextResponse("method not allowed", status_code=405, headers={"Allow": "GET, HEAD"})
        viewer = active_viewer(self._data_dir)
        if viewer is None:
            return _not_installed(self._csp)
        # Inside the mount: the request's path below its root_path (what StaticFiles serves too).
        mount, full = request.scope.get("root_path", ""), request.scope["path"]
        relative = PurePosixPath((full[len(mount) :] if full.startswith(mount) else full).lstrip("/"))
        if ".." in relative.parts or "\\" in str(relative) or "\x00" in str(relative):
            return PlainTextResponse("bad path", status_code=400)
        root = viewer.path.resolve()
        name = str(relative)
        candidate = (root / relative).resolve() if name not in ("", ".") else root / "index.html"
        if not candidate.is_relative_to(root):
            return PlainTextResponse("bad path", status_code=400)
        if not candidate.is_file():
            if "." in relative.name:
                return PlainTextResponse(f"no such file in OHIF {viewer.version}", status_code=404)
            candidate = root / "index.html"  # one of OHIF's client-side routes
        if candidate.name in _NO_CACHE:
            cache = "no-cache"
        elif _HASHED.search(candidate.name):
            cache = "public, max-age=31536000, immutable"
        else:
            cache = "public, max-age=3600"
        return FileResponse(
            candidate,
            media_type=_TYPES.get(candidate.suffix.lower(), "application/octet-stream"),
            headers={
                "Cache-Control": cache,
                "Content-Security-Policy": self._csp,
                "X-Content-Type-Options": "nosniff",
            },
        )


def ohif_mount(data_dir: Path, public_base_url: str = "") -> Mount:
    """The ``/ohif`` mount; ``public_base_url``'s origin may be where OHIF's DICOMweb requests go."""
    parts = urlsplit(public_base_url)
    origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
    return Mount(OHIF_MOUNT, app=OhifFiles(data_dir, origin), name="ohif")
