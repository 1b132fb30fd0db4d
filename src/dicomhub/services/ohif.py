"""Installing the prebuilt OHIF viewer (the ``@ohif/app`` npm package) into the data directory.

The package on the npm registry ships a built ``dist/`` that assumes it is
served at ``/``: its ``index.html`` names its assets ``/app.bundle...js`` and
webpack's public path (where the lazily loaded chunks, workers and codec
WebAssembly come from) is the literal ``"/"``. dicomhub serves it under
:data:`OHIF_PREFIX` instead, so the install rewrites those few places, as one
would rebuild OHIF with ``PUBLIC_URL=/ohif/`` (Orthanc's OHIF plugin builds
OHIF itself; dicomhub has no build step). A release whose files no longer
have these markers is refused rather than installed half-working.

Layout under ``<data dir>/ohif/``: one folder per version (the package's
``dist/`` with its ``LICENSE``, MIT), and ``active`` naming the one served.
``app-config.js`` is written by :func:`app_config` at install: OHIF's
DICOMweb data source pointing at this archive, and the caller's dicomhub token
(the one the UI keeps in ``sessionStorage``) added to OHIF's requests to it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from dicomhub.errors import ConfigurationError, InvalidRequest

__all__ = [
    "OHIF_PACKAGE",
    "OHIF_PREFIX",
    "OHIF_VERSION",
    "OhifInstall",
    "active_viewer",
    "app_config",
    "fetch_from_registry",
    "install",
    "ohif_root",
    "uninstall",
]

OHIF_PACKAGE = "@ohif/app"
# The version dicomhub is tested with (the default of ``dicomhub ohif install``).
OHIF_VERSION = "3.13.2"
# npm's ``dist.integrity`` of the releases dicomhub knows, for installs from a tarball offline.
KNOWN_INTEGRITY = {
    "3.13.2": (
        "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
    ),
}
OHIF_PREFIX = "/ohif/"
_ACTIVE = "active"
# Source maps are for OHIF's developers (a third of the package): not installed.
_SKIPPED_SUFFIXES = (".map",)
_NPM_TIMEOUT = 600


@dataclass(frozen=True)
class OhifInstall:
    """An installed viewer: its version and the folder served at :data:`OHIF_PREFIX`."""

    version: str
    path: Path


def ohif_root(data_dir: Path) -> Path:
    """Where the viewers are installed."""
    return data_dir / "ohif"


def active_viewer(data_dir: Path) -> OhifInstall | None:
    """The viewer to serve, or None when none is installed."""
    root = ohif_root(data_dir)
    try:
        version = (root / _ACTIVE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    folder = root / version
    if not version or "/" in version or not (folder / "index.html").is_file():
        return None
    return OhifInstall(version, folder)


def app_config(dicomweb_root: str) -> str:
    """OHIF's ``app-config.js`` for this archive.

    ``dicomweb_root`` is the absolute DICOMweb root (the public base URL's), or
    "" for the origin the viewer is served from. OHIF's dicomweb data source
    takes its ``Authorization`` header from its user-authentication service,
    which only OHIF's own OIDC set-up or a ``?token=`` in the viewer's URL
    fill; dicomhub's token is neither, so this script adds it to every
    request OHIF sends to the DICOMweb root, for fetch() and XMLHttpRequest
    (dicomweb-client and cornerstone use the latter). No token, no header:
    the archive then answers 401 when it requires authentication.
    """
    root = json.dumps(dicomweb_root.rstrip("/"))
    return f"""/* Written by `dicomhub ohif install`: OHIF's configuration for this dicomhub archive. */
(function () {{
  const root = {root} || window.location.origin + "/dicomweb";
  const TOKEN_KEY = "dicomhub.token";
  function bearer(url) {{
    let absolute;
    try {{
      absolute = new URL(url, window.location.href).href;
    }} catch (_) {{
      return null;
    }}
    if (absolute !== root && !absolute.startsWith(root + "/")) return null;
    const token = window.sessionStorage.getItem(TOKEN_KEY);
    return token ? "Bearer " + token : null;
  }}
  const open = XMLHttpRequest.prototype.open;
  const send = XMLHttpRequest.prototype.send;
  const setRequestHeader = XMLHttpRequest.prototype.setRequestHeader;
  XMLHttpRequest.prototype.open = function (method, url) {{
    this._dicomhubAuth = bearer(String(url));
    this._dicomhubAuthSet = false;
    return open.apply(this, arguments);
  }};
  XMLHttpRequest.prototype.setRequestHeader = function (name) {{
    if (String(name).toLowerCase() === "authorization") this._dicomhubAuthSet = true;
    return setRequestHeader.apply(this, arguments);
  }};
  XMLHttpRequest.prototype.send = function () {{
    if (this._dicomhubAuth && !this._dicomhubAuthSet) {{
      setRequestHeader.call(this, "Authorization", this._dicomhubAuth);
    }}
    return send.apply(this, arguments);
  }};
  const originalFetch = window.fetch;
  window.fetch = function (input, init) {{
    const url = typeof input === "string" || input instanceof URL ? String(input) : input.url;
    const auth = bearer(url);
    if (auth) {{
      const given = (init && init.headers) || (input instanceof Request ? input.headers : undefined);
      const headers = new Headers(given);
      if (!headers.has("Authorization")) headers.set("Authorization", auth);
      init = Object.assign({{}}, init, {{ headers: headers }});
    }}
    return originalFetch.call(this, input, init);
  }};

  window.config = {{
    routerBasename: "{OHIF_PREFIX.rstrip("/")}",
    extensions: [],
    modes: [],
    customizationService: {{}},
    showStudyList: true,
    maxNumberOfWebWorkers: 3,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: true,
    showLoadingIndicator: true,
    strictZSpacingForVolumeViewport: true,
    groupEnabledModesFirst: true,
    maxNumRequests: {{ interaction: 100, thumbnail: 5, prefetch: 25 }},
    showErrorDetails: "always",
    defaultDataSourceName: "dicomhub",
    dataSources: [
      {{
        namespace: "@ohif/extension-default.dataSourcesModule.dicomweb",
        sourceName: "dicomhub",
        configuration: {{
          friendlyName: "dicomhub",
          name: "dicomhub",
          wadoUriRoot: root,
          qidoRoot: root,
          wadoRoot: root,
          qidoSupportsIncludeField: false,
          imageRendering: "wadors",
          thumbnailRendering: "wadors",
          enableStudyLazyLoad: true,
          supportsFuzzyMatching: false,
          supportsWildcard: true,
          staticWado: false,
          singlepart: "bulkdata,video",
          bulkDataURI: {{ enabled: true, relativeResolution: "studies" }},
          omitQuotationForMultipartRequest: true,
          dicomUploadEnabled: false,
        }},
      }},
    ],
  }};
}})();
"""


def _integrity(data: bytes) -> str:
    """npm's ``dist.integrity`` (Subresource Integrity, sha512) of a tarball."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def _npm(*args: str) -> str:
    try:
        done = subprocess.run(  # noqa: S603 - fixed program, arguments are ours
            ["npm", *args], capture_output=True, text=True, timeout=_NPM_TIMEOUT, check=False
        )
    except FileNotFoundError as exc:
        raise ConfigurationError("npm is not installed: install Node.js's npm or use --from-tarball") from exc
    except subprocess.TimeoutExpired as exc:
        raise ConfigurationError(f"npm {args[0]} did not finish in {_NPM_TIMEOUT} s") from exc
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise ConfigurationError(f"npm {args[0]} failed (offline or no such version?): {reason}")
    return done.stdout


def fetch_from_registry(version: str, into: Path) -> tuple[Path, str]:
    """``npm pack`` the package from the configured registry; (tarball, the registry's integrity)."""
    spec = f"{OHIF_PACKAGE}@{version}"
    integrity = _npm("view", spec, "dist.integrity").strip()
    if not integrity.startswith("sha512-"):
        raise ConfigurationError(f"the registry has no {spec} (npm view answered {integrity!r})")
    out = _npm("pack", spec, "--pack-destination", str(into), "--json")
    try:
        filename = json.loads(out)[0]["filename"]
    except (ValueError, LookupError, TypeError) as exc:
        raise ConfigurationError(f"npm pack gave no file name: {out[:200]!r}") from exc
    return into / Path(filename).name, integrity


def _package_version(archive: tarfile.TarFile) -> str:
    member = archive.extractfile("package/package.json")
    if member is None:
        raise InvalidRequest("the tarball has no package/package.json")
    meta = json.loads(member.read())
    if meta.get("name") != OHIF_PACKAGE or not isinstance(meta.get("version"), str):
        raise InvalidRequest(f"the tarball is not {OHIF_PACKAGE} (package.json names {meta.get('name')!r})")
    version: str = meta["version"]
    if not version or "/" in version or version.startswith("."):
        raise InvalidRequest(f"bad version {version!r} in package.json")
    return version


def _replace_once(text: str, old: str, new: str, where: str) -> str:
    count = text.count(old)
    if count != 1:
        raise InvalidRequest(
            f"{where}: expected {old!r} once, found it {count} times (an unknown OHIF build?)"
        )
    return text.replace(old, new)


def _serve_under_prefix(folder: Path) -> None:
    """Point the build's root-relative asset URLs and webpack's public path at :data:`OHIF_PREFIX`."""
    index = folder / "index.html"
    html = index.read_text(encoding="utf-8")
    if html.count('window.PUBLIC_URL="/"') < 1:
        raise InvalidRequest("index.html does not set window.PUBLIC_URL: an unknown OHIF build")
    html = html.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{OHIF_PREFIX}"')
    html = html.replace('href="/', f'href="{OHIF_PREFIX}').replace('src="/', f'src="{OHIF_PREFIX}')
    index.write_text(html, encoding="utf-8")
    # Every webpack runtime (the app's and each web worker's) has its own public path.
    runtime = '__webpack_require__.p = "/";'
    rewritten = 0
    for script in sorted(folder.glob("*.js")):
        code = script.read_text(encoding="utf-8")
        if runtime in code:
            code = _replace_once(code, runtime, f'__webpack_require__.p = "{OHIF_PREFIX}";', script.name)
            script.write_text(code, encoding="utf-8")
            rewritten += script.name.startswith("app.bundle.")
    if rewritten != 1:
        raise InvalidRequest("app.bundle.*.js sets no webpack public path: an unknown OHIF build")
    # The style sheets name their fonts from the root too.
    for sheet in folder.glob("*.css"):
        css = sheet.read_text(encoding="utf-8")
        if "url(/" in css:
            sheet.write_text(css.replace("url(/", f"url({OHIF_PREFIX}"), encoding="utf-8")


def _extract(archive: tarfile.TarFile, into: Path) -> None:
    for member in archive.getmembers():
        name = member.name
        if name == "package/LICENSE":
            target = "LICENSE"
        elif name.startswith("package/dist/") and not name.endswith(_SKIPPED_SUFFIXES):
            target = name.removeprefix("package/dist/")
        else:
            continue
        parts = Path(target).parts
        if not target or Path(target).is_absolute() or ".." in parts:
            raise InvalidRequest(f"unsafe path in the tarball: {name!r}")
        if member.isdir():
            continue
        if not member.isfile():
            raise InvalidRequest(f"the tarball holds a link or device: {name!r}")
        source = archive.extractfile(member)
        if source is None:  # pragma: no cover - isfile() members always have data
            continue
        path = into / target
        path.parent.mkdir(parents=True, exist_ok=True)
        with source, path.open("wb") as out:
            shutil.copyfileobj(source, out)


def install(data_dir: Path, tarball: Path, dicomweb_root: str, integrity: str | None = None) -> OhifInstall:
    """Install the ``@ohif/app`` tarball and make it the served viewer.

    The tarball must match ``integrity`` (npm's ``dist.integrity``), or when
    that is None the integrity dicomhub knows for its version
    (:data:`KNOWN_INTEGRITY`). The new folder is complete before ``active``
    names it, so a failed install leaves the served viewer as it was.

    Raises
    ------
    InvalidRequest
        Not a readable ``@ohif/app`` tarball, an integrity mismatch, or an
        unknown version with no integrity to check.
    """
    try:
        data = tarball.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"cannot read {tarball}: {exc.strerror or exc}") from exc
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            version = _package_version(archive)
            expected = integrity or KNOWN_INTEGRITY.get(version)
            if expected is None:
                raise InvalidRequest(
                    f"no known integrity for {OHIF_PACKAGE} {version}: give --integrity "
                    f"(npm view {OHIF_PACKAGE}@{version} dist.integrity)"
                )
            if _integrity(data) != expected:
                raise InvalidRequest(f"{tarball} does not match the integrity {expected} of {version}")
            root = ohif_root(data_dir)
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
            try:
                _extract(archive, staging)
                _serve_under_prefix(staging)
                (staging / "app-config.js").write_text(app_config(dicomweb_root), encoding="utf-8")
                final = root / version
                if final.exists():
                    shutil.rmtree(final)
                staging.rename(final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    except (tarfile.TarError, EOFError, ValueError, KeyError, zlib.error) as exc:
        raise InvalidRequest(f"{tarball} is not a readable npm tarball: {exc}") from exc
    marker = root / f".{_ACTIVE}.tmp"
    marker.write_text(version + "\n", encoding="utf-8")
    os.replace(marker, root / _ACTIVE)
    return OhifInstall(version, final)


def uninstall(data_dir: Path) -> OhifInstall | None:
    """Remove every installed viewer; the one that was served, if any."""
    served = active_viewer(data_dir)
    root = ohif_root(data_dir)
    if root.exists():
        shutil.rmtree(root)
    return served
