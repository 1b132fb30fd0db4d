"""A throw-away PostgreSQL cluster for tests and benchmarks.

Started from the distribution's binaries (Debian: /usr/lib/postgresql/*/bin;
``scripts/install-test-deps.sh`` installs them when missing) on a free port of
127.0.0.1, with its data directory under the system temp dir, and removed by
:meth:`PostgresCluster.stop`. PostgreSQL refuses to run as root, so when the
tests run as root (CI) the server runs as the unprivileged user ``nobody``.
Authentication is ``trust`` on the loopback interface only.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PostgresCluster", "postgres_bin_dir"]

_SUPERUSER = "dicomhub"
_UNPRIVILEGED = "nobody"


def postgres_bin_dir() -> Path:
    """The bin directory of the newest installed PostgreSQL server."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if not found:
        raise RuntimeError(
            "no PostgreSQL server under /usr/lib/postgresql/*/bin: run scripts/install-test-deps.sh"
        )
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """One ``postgres`` server in a temporary data directory.

    ``durable=False`` (tests) turns fsync off: the cluster is thrown away
    anyway. Benchmarks keep the defaults, so that commit costs are real.
    """

    def __init__(self, durable: bool = False, settings: Sequence[str] = ()) -> None:
        self.bin = postgres_bin_dir()
        self.durable = durable
        self.settings = list(settings)
        self.port = 0
        self.root: Path | None = None
        self._options: list[str] = []
        self._user: str | None = _UNPRIVILEGED if os.geteuid() == 0 else None

    # -------------------------------------------------------------- lifecycle

    def start(self) -> PostgresCluster:
        self.root = Path(tempfile.mkdtemp(prefix="dicomhub-pg-"))
        data = self.root / "data"
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb", "-D", str(data), "-U", _SUPERUSER, "--auth=trust", "-E", "UTF8",
            "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.root}",
            "-c max_connections=300",
            "-c shared_buffers=128MB",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        options += [f"-c {s}" for s in self.settings]
        self._options = options
        for _attempt in range(5):
            self.port = _free_port()
            if self._pg_ctl_start().returncode == 0:
                return self
        raise RuntimeError(f"PostgreSQL did not start:\n{self.log_tail()}")

    def _pg_ctl_start(self) -> subprocess.CompletedProcess[str]:
        assert self.root is not None
        return self._run(
            "pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "server.log"), "-w", "-t", "60",
            "-o", " ".join([f"-p {self.port}", *self._options]), "start", check=False,
        )  # fmt: skip

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server but keep its data (``pg_ctl stop -m fast|immediate``): an outage."""
        assert self.root is not None
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", mode, "-w", "-t", "60", "stop")

    def start_server(self) -> None:
        """Start the server stopped by :meth:`stop_server` again, on the same port."""
        proc = self._pg_ctl_start()
        if proc.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start again:\n{proc.stderr}\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server and remove its data directory."""
        if self.root is None:
            return
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        if self.root is None:
            return ""
        try:
            return "\n".join((self.root / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -------------------------------------------------------------- databases

    def url(self, database: str = "postgres") -> str:
        """The ``postgresql://`` URL of ``database`` (what ``--database-url`` takes)."""
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a fresh name by default); return its URL."""
        name = name or "t_" + uuid.uuid4().hex[:16]
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql as the superuser; return its unaligned output."""
        proc = subprocess.run(
            [
                str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", "127.0.0.1", "-p", str(self.port), "-U", _SUPERUSER, "-d", database, "-c", sql,
            ],  # fmt: skip
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed: {proc.stderr.strip()}")
        return proc.stdout

    # -------------------------------------------------------------- helpers

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            user=self._user,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc


if __name__ == "__main__":  # pragma: no cover - manual smoke test
    with PostgresCluster() as cluster:
        print(cluster.create_database())
        time.sleep(0.1)
