"""``pip install dicomhub`` into an environment that already has other versions of its dependencies.

A fresh virtual environment gets pydicom, numpy and SQLAlchemy at the lowest versions
pyproject.toml allows, then dicomhub from a copy of the source tree (a regular, non-editable
install with a real resolve, no constraints file): pip must keep what it found, since it
satisfies the ranges, and the installed dicomhub must run (without uvloop and httptools too)
and answer a C-ECHO and serve the web UI. Wheels come
from pip's cache, so a second run downloads nothing; the venv is made without its own pip
(pip runs from the test's interpreter with ``--python``), which saves seeding one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .helpers import ServerPool, echo

pytestmark = [pytest.mark.e2e, pytest.mark.backend_neutral]

ROOT = Path(__file__).resolve().parents[2]

# The lower bounds of pyproject.toml for the packages most often installed already.
PREINSTALLED = {"pydicom": "3.0.1", "numpy": "2.0.2", "SQLAlchemy": "2.0.30"}


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return done


def _source_copy(dest: Path) -> Path:
    """The files a build needs, without the work tree's build products (egg-info, caches)."""
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(
        ROOT / "src",
        dest / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    return dest


def test_pip_install_keeps_preinstalled_versions_and_serves(
    tmp_path: Path, servers: ServerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    _pip(python, "install", "--quiet", *(f"{name}=={version}" for name, version in PREINSTALLED.items()))

    source = tmp_path / "source"
    source.mkdir()
    _pip(python, "install", "--quiet", str(_source_copy(source)))

    listed = json.loads(_pip(python, "list", "--format=json").stdout)
    versions = {row["name"].lower(): row["version"] for row in listed}
    for name, version in PREINSTALLED.items():
        assert versions[name.lower()] == version, f"{name} changed to {versions[name.lower()]}"
    assert "dicomhub" in versions and "highdicom" not in versions and "python-multipart" not in versions

    dicomhub = venv / "bin" / "dicomhub"
    done = subprocess.run([str(dicomhub), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("dicomhub "), done
    done = subprocess.run([str(dicomhub), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "serve" in done.stdout, done
    # The shipped IOD tables are read from the installed package, not from the source tree.
    check = (
        "import dicomhub.iod.tables as t; import dicomhub; "
        "assert '/site-packages/' in dicomhub.__file__, dicomhub.__file__; "
        "assert t.iod_for_sop_class('1.2.840.10008.5.1.4.1.1.2') is not None; "
        "print(t.condition_counts().evaluated)"
    )
    done = subprocess.run(
        [str(python), "-c", check], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0 and int(done.stdout) > 0, done

    # uvloop and httptools are optional speed-ups of uvicorn (no Windows or PyPy builds):
    # the server must run without them, on asyncio and h11.
    assert "uvloop" in versions and "httptools" in versions
    _pip(python, "uninstall", "--yes", "--quiet", "uvloop", "httptools")
    monkeypatch.setenv("E2E_DICOMHUB_CMD", str(dicomhub))
    server = servers.start(aet="INSTALLED")  # waits for /healthz over HTTP
    rc, out = echo(server)
    assert rc == 0 and "Received Echo Response (Success)" in out, out
    # The web UI's templates and scripts are package data of the installed wheel.
    page = httpx.get(server.base_url + "/", timeout=30)
    assert page.status_code == 200 and "<h1>Studies</h1>" in page.text, page.text[:300]
    script = httpx.get(server.base_url + "/ui/static/viewport.js", timeout=30)
    assert script.status_code == 200 and "transfer-syntax=1.2.840.10008.1.2.1" in script.text
