"""The OHIF install (services.ohif) and its serving at /ohif (web.ohif), on a small fake
``@ohif/app`` tarball with the markers of the real build."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from dicomhub.errors import ConfigurationError, InvalidRequest
from dicomhub.services import ohif
from dicomhub.web.ohif import ohif_mount

INDEX = (
    '<html><head><script>window.PUBLIC_URL="/"</script><script src="/app-config.js"></script>'
    '<link href="/app.bundle.css" rel="stylesheet"><script defer src="/app.bundle.0123456789abcdef.js">'
    "</script></head><body></body></html>"
)
FILES = {
    "package/package.json": json.dumps({"name": "@ohif/app", "version": "9.9.9"}),
    "package/LICENSE": "The MIT License (MIT)",
    "package/dist/index.html": INDEX,
    "package/dist/app-config.js": "window.config = {};",
    "package/dist/app.bundle.0123456789abcdef.js": 'x;\n__webpack_require__.p = "/";\ny;',
    "package/dist/histogram-worker.bundle.fedcba9876543210.js": '__webpack_require__.p = "/";',
    "package/dist/app.bundle.css": "@font-face{src:url(/a34f9d1faa5f3315.woff2)}",
    "package/dist/0ddf166f7a343eda.wasm": "\0asm",
    "package/dist/app.bundle.0123456789abcdef.js.map": "{}",
}


def tarball(path: Path, files: dict[str, str] = FILES) -> tuple[Path, str]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return path, "sha512-" + base64.b64encode(hashlib.sha512(buf.getvalue()).digest()).decode()


def test_install_serves_the_build_under_ohif(tmp_path: Path) -> None:
    tgz, integrity = tarball(tmp_path / "app.tgz")
    done = ohif.install(tmp_path / "data", tgz, "https://pacs.example/dicomweb", integrity)
    assert done.version == "9.9.9" and ohif.active_viewer(tmp_path / "data") == done
    html = (done.path / "index.html").read_text()
    assert (
        'window.PUBLIC_URL="/ohif/"' in html
        and 'src="/ohif/app.bundle.' in html
        and 'src="/' not in html.replace('src="/ohif/', "")
    )
    for script in ("app.bundle.0123456789abcdef.js", "histogram-worker.bundle.fedcba9876543210.js"):
        assert '__webpack_require__.p = "/ohif/";' in (done.path / script).read_text()
    assert "url(/ohif/a34f9d1faa5f3315.woff2)" in (done.path / "app.bundle.css").read_text()
    assert (done.path / "LICENSE").read_text().startswith("The MIT License")
    assert not (done.path / "app.bundle.0123456789abcdef.js.map").exists()
    config = (done.path / "app-config.js").read_text()
    assert '"https://pacs.example/dicomweb"' in config and 'routerBasename: "/ohif"' in config
    assert "dicomhub.token" in config


def test_a_refused_tarball_leaves_the_served_viewer(tmp_path: Path) -> None:
    data = tmp_path / "data"
    tgz, integrity = tarball(tmp_path / "app.tgz")
    ohif.install(data, tgz, "", integrity)
    with pytest.raises(InvalidRequest, match="does not match the integrity"):
        ohif.install(data, tgz, "", "sha512-AAAA")
    with pytest.raises(InvalidRequest, match="no known integrity"):
        ohif.install(data, tgz, "")
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(InvalidRequest, match="not a readable npm tarball"):
        ohif.install(data, bad, "", integrity)
    evil, evil_integrity = tarball(tmp_path / "evil.tgz", {**FILES, "package/dist/../../x.js": "x"})
    with pytest.raises(InvalidRequest, match="unsafe path"):
        ohif.install(data, evil, "", evil_integrity)
    other = {k: v for k, v in FILES.items() if "bundle.0123" not in k}
    unknown, unknown_integrity = tarball(tmp_path / "unknown.tgz", other)
    with pytest.raises(InvalidRequest, match="unknown OHIF build"):
        ohif.install(data, unknown, "", unknown_integrity)
    served = ohif.active_viewer(data)
    assert served is not None and served.version == "9.9.9"
    assert [p.name for p in ohif.ohif_root(data).iterdir() if p.is_dir()] == ["9.9.9"]
    assert ohif.uninstall(data) == served and ohif.active_viewer(data) is None


class Client:
    """Requests to an ASGI app in this thread (httpx's ASGI transport)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def request(self, method: str, path: str) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
                return await client.request(method, path)

        return asyncio.run(go())

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)

    def post(self, path: str) -> httpx.Response:
        return self.request("POST", path)


def test_ohif_routes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    client = Client(Starlette(routes=[ohif_mount(data)]))
    r = client.get("/ohif/viewer")
    assert r.status_code == 404 and "dicomhub ohif install" in r.text
    tgz, integrity = tarball(tmp_path / "app.tgz")
    ohif.install(data, tgz, "", integrity)
    r = client.get("/ohif/")
    assert r.status_code == 200 and 'window.PUBLIC_URL="/ohif/"' in r.text
    assert (
        r.headers["cache-control"] == "no-cache"
        and "'wasm-unsafe-eval'" in r.headers["content-security-policy"]
    )
    # OHIF's client-side routes get index.html; a missing asset does not.
    assert client.get("/ohif/viewer?StudyInstanceUIDs=1.2.3").text == r.text
    assert client.get("/ohif/nope.js").status_code == 404
    wasm = client.get("/ohif/0ddf166f7a343eda.wasm")
    assert wasm.headers["content-type"] == "application/wasm"
    assert "immutable" in wasm.headers["cache-control"]
    js = client.get("/ohif/app.bundle.0123456789abcdef.js")
    assert js.headers["content-type"].startswith("text/javascript")
    assert client.get("/ohif/app-config.js").headers["cache-control"] == "no-cache"
    assert client.get("/ohif/%2e%2e/%2e%2e/etc/passwd").status_code in (400, 404)
    assert client.post("/ohif/").status_code == 405


def test_fetching_without_npm_or_registry_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ConfigurationError, match="npm is not installed"):
        ohif.fetch_from_registry("3.13.2", tmp_path)
    # An npm that cannot reach its registry (what npm prints offline).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text("#!/bin/sh\necho 'npm error code ENOTFOUND' >&2\nexit 1\n")
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(ConfigurationError, match="offline or no such version.*ENOTFOUND"):
        ohif.fetch_from_registry("3.13.2", tmp_path)
