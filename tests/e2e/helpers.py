"""Process management and DCMTK wrappers for the end-to-end tests.

Every DCMTK process gets ``TCP_NODELAY=1`` in its environment (Debian's DCMTK
is 10-30x slower without it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pydicom.config
from pydicom.dataset import Dataset

from tests.backends import backend_env

HOST = "127.0.0.1"
SERVER_START_TIMEOUT = 30.0
DCMTK_TIMEOUT = 120.0

# Servers that are alive (or were started during the running test); conftest
# attaches their logs to failing test reports.
LIVE_SERVERS: list[DicomhubServer] = []


# --------------------------------------------------------------------------- basics


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def dicomhub_command() -> list[str]:
    """The command that runs the dicomhub CLI.

    ``E2E_DICOMHUB_CMD`` (shell syntax) overrides the lookup; otherwise the
    console script next to ``sys.executable`` or on PATH.
    """
    override = os.environ.get("E2E_DICOMHUB_CMD")
    if override:
        return shlex.split(override)
    beside = Path(sys.executable).parent / "dicomhub"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("dicomhub")
    if found:
        return [found]
    raise AssertionError(
        "dicomhub console script not found (neither next to "
        f"{sys.executable} nor on PATH); is the package installed in the venv?"
    )


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for child processes: no stray DICOMHUB_* settings, TCP_NODELAY=1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMHUB_")}
    env["TCP_NODELAY"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def wait_for_port(port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listening on {HOST}:{port} after {timeout}s")


# --------------------------------------------------------------------------- CLI


def _cli_backend_env(args: Sequence[str]) -> dict[str, str]:
    """The backend environment of the archive a CLI command names with ``--data-dir``."""
    for i, arg in enumerate(args[:-1]):
        if arg == "--data-dir":
            return backend_env(args[i + 1])
        if arg.startswith("--data-dir="):
            return backend_env(arg.split("=", 1)[1])
    return {}


def run_cli(*args: str, timeout: float = 120.0, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run ``dicomhub ARGS...``; return (returncode, stdout+stderr)."""
    cmd = [*dicomhub_command(), *args]
    try:
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=clean_env({**_cli_backend_env(args), **(env or {})}),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")
        raise AssertionError(f"{shlex.join(cmd)} timed out after {timeout}s:\n{out}") from exc
    return proc.returncode, proc.stdout.decode(errors="replace")


def run_cli_split(*args: str, timeout: float = 120.0) -> tuple[int, str, str]:
    """Run ``dicomhub ARGS...``; return (returncode, stdout, stderr) separately."""
    cmd = [*dicomhub_command(), *args]
    proc = subprocess.run(
        cmd, capture_output=True, env=clean_env(_cli_backend_env(args)), timeout=timeout, check=False
    )
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


def ls_json(data_dir: Path, level: str = "study") -> list[dict[str, object]]:
    rc, out, err = run_cli_split("ls", "--data-dir", str(data_dir), "--level", level, "--json")
    assert rc == 0, f"dicomhub ls failed ({rc}):\n{out}\n{err}"
    try:
        parsed = json.loads(out)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"dicomhub ls --json did not print JSON:\n{out}\n{err}") from exc
    assert isinstance(parsed, list), f"ls --json must print a JSON array, got {type(parsed)}"
    return parsed


def ls_study(data_dir: Path, study_uid: str) -> dict[str, object] | None:
    rows = [r for r in ls_json(data_dir, "study") if r.get("StudyInstanceUID") == study_uid]
    assert len(rows) <= 1, f"ls shows study {study_uid} {len(rows)} times: {rows}"
    return rows[0] if rows else None


def study_instance_count(data_dir: Path, study_uid: str) -> int:
    row = ls_study(data_dir, study_uid)
    return 0 if row is None else int(row["NumberOfStudyRelatedInstances"])  # type: ignore[call-overload]


# --------------------------------------------------------------------------- server


class DicomhubServer:
    """``dicomhub serve`` as a subprocess."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        *,
        aet: str = "DICOMHUB",
        remote_aes: Mapping[str, tuple[str, int]] | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        use_env_config: bool = False,
        https_context: ssl.SSLContext | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        # Set for a server started with --https: how clients (and the health check) verify it.
        self.https_context = https_context
        self.log_path = Path(log_path)
        self.aet = aet
        self.remote_aes = dict(remote_aes or {})
        self.args = list(args)
        self.env = dict(env or {})
        self.use_env_config = use_env_config
        self.dimse_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None
        self.starts = 0

    # -- identity
    @property
    def base_url(self) -> str:
        return f"{'https' if self.https_context else 'http'}://{HOST}:{self.http_port}"

    def __repr__(self) -> str:
        return f"<dicomhub {self.aet}@{HOST}:{self.dimse_port} http:{self.http_port} {self.data_dir}>"

    def command(self) -> tuple[list[str], dict[str, str]]:
        cmd = [*dicomhub_command(), "serve"]
        # The archive's database and storage (DICOMHUB_TEST_BACKEND), unless the test sets its own.
        env = clean_env({**backend_env(self.data_dir), **self.env})
        if self.use_env_config:
            env.update(
                {
                    "DICOMHUB_DATA_DIR": str(self.data_dir),
                    "DICOMHUB_AET": self.aet,
                    "DICOMHUB_DIMSE_PORT": str(self.dimse_port),
                    "DICOMHUB_HTTP_PORT": str(self.http_port),
                    "DICOMHUB_HOST": HOST,
                }
            )
        else:
            cmd += [
                "--data-dir", str(self.data_dir),
                "--aet", self.aet,
                "--dimse-port", str(self.dimse_port),
                "--http-port", str(self.http_port),
                "--host", HOST,
            ]  # fmt: skip
        for name, (host, port) in self.remote_aes.items():
            cmd += ["--remote-ae", f"{name}={host}:{port}"]
        cmd += self.args
        return cmd, env

    # -- lifecycle
    def start(self, timeout: float = SERVER_START_TIMEOUT) -> DicomhubServer:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd, env = self.command()
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        log.write(f"\n===== start #{self.starts}: {shlex.join(cmd)}\n".encode())
        log.flush()
        self._log_file = log
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )  # fmt: skip
        if self not in LIVE_SERVERS:
            LIVE_SERVERS.append(self)
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last = "no attempt"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"dicomhub serve exited with {self.proc.returncode} during startup\n"
                    f"--- log ---\n{self.log_tail()}"
                )
            try:
                r = httpx.get(f"{self.base_url}/healthz", timeout=1.0, verify=self.https_context or True)
                if r.status_code == 200:
                    wait_for_port(self.dimse_port, timeout=max(1.0, deadline - time.monotonic()))
                    return
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.1)
        self.kill9()
        raise AssertionError(
            f"dicomhub serve not healthy after {timeout}s (last: {last})\n--- log ---\n{self.log_tail()}"
        )

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthz(self) -> int:
        verify = self.https_context or True
        return httpx.get(f"{self.base_url}/healthz", timeout=5.0, verify=verify).status_code

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._killpg()
                self.proc.wait(10)
        return self._reap()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._killpg()
            self.proc.wait(10)
        self._reap()

    def _killpg(self) -> None:
        assert self.proc is not None
        # The server runs in its own session; kill its whole process group
        # (covers --workers N child processes), nothing else.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def _reap(self) -> int | None:
        rc = None if self.proc is None else self.proc.returncode
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None
        return rc

    def restart(self, timeout: float = SERVER_START_TIMEOUT) -> DicomhubServer:
        """Stop (if running) and start again on the same data dir and ports."""
        if self.is_running():
            self.stop()
        return self.start(timeout)

    def close(self) -> None:
        self.stop()
        if self.proc is not None and self.proc.poll() is None:  # pragma: no cover
            self._killpg()
        with contextlib.suppress(ValueError):
            LIVE_SERVERS.remove(self)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 200) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class ServerPool:
    """Starts servers in a tmp dir and closes all of them at the end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.servers: list[DicomhubServer] = []

    def create(self, name: str = "hub", data_dir: Path | None = None, **kwargs: object) -> DicomhubServer:
        idx = len(self.servers)
        root = self.base / f"{name}{idx}"
        root.mkdir(parents=True, exist_ok=True)
        srv = DicomhubServer(
            data_dir or root / "data",
            root / "server.log",
            **kwargs,  # type: ignore[arg-type]
        )
        self.servers.append(srv)
        return srv

    def start(self, name: str = "hub", data_dir: Path | None = None, **kwargs: object) -> DicomhubServer:
        return self.create(name, data_dir, **kwargs).start()

    def close(self) -> None:
        for srv in self.servers:
            srv.close()


# --------------------------------------------------------------------------- DCMTK


def run_dcmtk(
    tool: str, *args: str | os.PathLike[str], timeout: float = DCMTK_TIMEOUT, cwd: Path | None = None
) -> tuple[int, str]:
    """Run a DCMTK tool with TCP_NODELAY=1; return (returncode, stdout+stderr)."""
    cmd = [tool, *map(str, args)]
    try:
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            timeout=timeout,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")
        raise AssertionError(f"{shlex.join(cmd)} timed out after {timeout}s:\n{out[-5000:]}") from exc
    return proc.returncode, proc.stdout.decode(errors="replace")


def popen_dcmtk(tool: str, *args: str | os.PathLike[str], log: Path) -> subprocess.Popen[bytes]:
    fh = open(log, "wb")  # noqa: SIM115 - the child owns it; closed by caller via proc
    try:
        return subprocess.Popen([tool, *map(str, args)], stdout=fh, stderr=subprocess.STDOUT, env=clean_env())
    finally:
        fh.close()


def _keys(keys: Mapping[str, str | None] | Iterable[tuple[str, str | None]]) -> list[str]:
    items = keys.items() if isinstance(keys, Mapping) else keys
    out: list[str] = []
    for k, v in items:
        out += ["-k", k if v is None else f"{k}={v}"]
    return out


def echo(server: DicomhubServer, calling: str = "ECHOSCU") -> tuple[int, str]:
    return run_dcmtk(
        "echoscu", "-v", "-aet", calling, "-aec", server.aet, HOST, str(server.dimse_port), timeout=30
    )


def assert_alive(server: DicomhubServer, grace: float = 5.0) -> None:
    """The process runs and accepts a C-ECHO (retried for ``grace`` seconds)."""
    deadline = time.monotonic() + grace
    while True:
        assert server.is_running(), f"server process died\n{server.log_tail()}"
        rc, out = echo(server)
        if rc == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert rc == 0, f"echoscu failed against the server (retried {grace}s):\n{out}"


@dataclass
class StoreResult:
    returncode: int
    output: str
    statuses: dict[str, int]  # SOP Instance UID -> DIMSE status of its C-STORE-RSP

    def failed(self) -> dict[str, int]:
        return {k: v for k, v in self.statuses.items() if v != 0 and not 0xB000 <= v <= 0xBFFF}


_RSP_BLOCK = re.compile(r"Message Type\s*:\s*C-STORE RSP(.*?)(?:={5,}|\Z)", re.S)
_AFFECTED = re.compile(r"Affected SOP Instance UID\s*:\s*(\S+)")
_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")


def parse_store_statuses(output: str) -> dict[str, int]:
    """(SOP Instance UID -> status) from ``storescu -d`` output."""
    statuses: dict[str, int] = {}
    for block in _RSP_BLOCK.findall(output):
        m_uid, m_st = _AFFECTED.search(block), _STATUS.search(block)
        if m_uid and m_st:
            statuses[m_uid.group(1)] = int(m_st.group(1), 16)
    return statuses


def store(
    server: DicomhubServer,
    *paths: str | os.PathLike[str],
    calling: str = "STORESCU",
    extra: Sequence[str] = (),
    timeout: float = DCMTK_TIMEOUT,
) -> StoreResult:
    """storescu (debug output, --no-halt) the given files/directories."""
    args: list[str | os.PathLike[str]] = ["-d", "-nh", "+sd", "+r", "-aet", calling, "-aec", server.aet]
    args += list(extra)
    args += [HOST, str(server.dimse_port), *paths]
    rc, out = run_dcmtk("storescu", *args, timeout=timeout)
    return StoreResult(rc, out, parse_store_statuses(out))


def store_ok(
    server: DicomhubServer, *paths: str | os.PathLike[str], expect: int | None = None, **kw: object
) -> StoreResult:
    res = store(server, *paths, **kw)  # type: ignore[arg-type]
    assert res.returncode == 0, f"storescu failed ({res.returncode}):\n{res.output[-4000:]}"
    assert not res.failed(), f"storescu got failure statuses {res.failed()}\n{res.output[-4000:]}"
    if expect is not None:
        ok = [u for u, s in res.statuses.items() if s == 0]
        assert len(ok) == expect, f"expected {expect} successful C-STOREs, got {len(ok)}"
    return res


def find(
    server: DicomhubServer,
    level: str,
    keys: Mapping[str, str | None] | Iterable[tuple[str, str | None]],
    out_dir: Path,
    *,
    model: str = "S",
    calling: str = "FINDSCU",
    expect_rc: int | None = 0,
) -> list[Dataset]:
    """C-FIND with findscu -X; returns the identifiers of the pending responses.

    ``model`` is "S" (Study Root) or "P" (Patient Root). Keys are DCMTK
    ``-k`` expressions, value None means "return key, universal match".
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("rsp*.dcm"):
        old.unlink()
    rc, out = run_dcmtk(
        "findscu", f"-{model}", "-v", "-X", "-od", out_dir, "-aet", calling, "-aec", server.aet,
        *_keys([("QueryRetrieveLevel", level)]), *_keys(keys), HOST, str(server.dimse_port),
    )  # fmt: skip
    if expect_rc is not None:
        assert rc == expect_rc, f"findscu returned {rc}:\n{out[-4000:]}"
    assert "Final Find Response (Success)" in out or expect_rc != 0, (
        f"no successful final response:\n{out[-4000:]}"
    )
    return [pydicom.dcmread(p, force=True) for p in sorted(out_dir.glob("rsp*.dcm"))]


_COUNTS = {
    name: re.compile(rf"{name.capitalize()} Suboperations\s*:\s*(\d+|none)")
    for name in ("remaining", "completed", "failed", "warning")
}
_DIMSE_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")


@dataclass
class RetrieveResult:
    returncode: int
    output: str

    def final_counts(self) -> dict[str, int | None]:
        """Sub-operation counts of the last (final) response in the output."""
        final = self.output
        idx = max(self.output.rfind("C-GET RSP"), self.output.rfind("C-MOVE RSP"))
        if idx >= 0:
            final = self.output[idx:]
        out: dict[str, int | None] = {}
        for name, rx in _COUNTS.items():
            m = rx.search(final)
            out[name] = int(m.group(1)) if m and m.group(1).isdigit() else None
        return out

    def statuses(self) -> list[int]:
        """DIMSE status of every C-GET/C-MOVE response, in order."""
        res = []
        for m in re.finditer(r"Message Type\s*:\s*C-(?:GET|MOVE) RSP(.*?)(?:={5,}|\Z)", self.output, re.S):
            st = _DIMSE_STATUS.search(m.group(1))
            if st:
                res.append(int(st.group(1), 16))
        return res


def get(
    server: DicomhubServer,
    level: str,
    keys: Mapping[str, str | None],
    out_dir: Path,
    *,
    model: str = "S",
    calling: str = "GETSCU",
) -> RetrieveResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    rc, out = run_dcmtk(
        "getscu", f"-{model}", "-d", "-od", out_dir, "-aet", calling, "-aec", server.aet,
        *_keys([("QueryRetrieveLevel", level)]), *_keys(keys), HOST, str(server.dimse_port),
    )  # fmt: skip
    return RetrieveResult(rc, out)


def move(
    server: DicomhubServer,
    destination: str,
    level: str,
    keys: Mapping[str, str | None],
    *,
    model: str = "S",
    calling: str = "MOVESCU",
) -> RetrieveResult:
    rc, out = run_dcmtk(
        "movescu", f"-{model}", "-d", "-aet", calling, "-aec", server.aet, "-aem", destination,
        *_keys([("QueryRetrieveLevel", level)]), *_keys(keys), HOST, str(server.dimse_port),
    )  # fmt: skip
    return RetrieveResult(rc, out)


def read_dir(directory: Path) -> dict[str, Dataset]:
    """All DICOM files below ``directory`` keyed by SOP Instance UID."""
    out: dict[str, Dataset] = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            ds = pydicom.dcmread(p, force=True)
            uid = str(ds.SOPInstanceUID)
            assert uid not in out, f"{uid} received twice"
            out[uid] = ds
    return out


def assert_same_instances(received: Mapping[str, Dataset], originals: Sequence[Dataset]) -> None:
    """Same SOP Instance UIDs, study/series UIDs and identical PixelData."""
    expected = {str(d.SOPInstanceUID): d for d in originals}
    assert set(received) == set(expected), (
        f"missing {sorted(set(expected) - set(received))[:5]}, "
        f"unexpected {sorted(set(received) - set(expected))[:5]}"
    )
    for uid, orig in expected.items():
        got = received[uid]
        assert got.SOPClassUID == orig.SOPClassUID, uid
        assert got.StudyInstanceUID == orig.StudyInstanceUID, uid
        assert got.SeriesInstanceUID == orig.SeriesInstanceUID, uid
        assert got.PatientID == orig.PatientID, uid
        assert bytes(got.PixelData) == bytes(orig.PixelData), f"PixelData differs for {uid}"


# --------------------------------------------------------------------------- storescp


class StoreSCP:
    """DCMTK storescp on a free port writing into ``out_dir``."""

    def __init__(
        self,
        out_dir: Path,
        log: Path,
        aet: str = "STORESCP",
        implicit_only: bool = False,
        extra: Sequence[str] = (),
    ) -> None:
        self.out_dir = out_dir
        self.log = log
        self.aet = aet
        self.implicit_only = implicit_only
        self.extra = tuple(extra)  # more storescp options (e.g. +tls KEY CERT +cf CA)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreSCP:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        args = ["-v", "-aet", self.aet, "-od", str(self.out_dir)]
        if self.implicit_only:
            args.append("+xi")
        args += self.extra
        args.append(str(self.port))
        self.proc = popen_dcmtk("storescp", *args, log=self.log)
        wait_for_port(self.port, proc=self.proc)
        return self

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    def clear(self) -> None:
        for p in self.out_dir.iterdir():
            if p.is_file():
                p.unlink()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# --------------------------------------------------------------------------- pynetdicom SCU


def is_failure(status: int | None) -> bool:
    """True for DIMSE failure statuses (not success, warning, pending or cancel)."""
    if status is None:
        return False
    return not (status == 0x0000 or 0xB000 <= status <= 0xBFFF or status in (0xFF00, 0xFF01, 0xFE00))


def is_contract_failure(status: int | None) -> bool:
    """A failure in the 0xA900 (dataset/SOP class mismatch) or 0xCxxx range."""
    return status is not None and (0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF)


def pyn_store(
    server: DicomhubServer,
    items: Sequence[str | os.PathLike[str] | Dataset],
    *,
    calling: str = "PYNSCU",
    sop_classes: Sequence[str] | None = None,
    transfer_syntaxes: Sequence[str] | None = None,
    on_result: object = None,
    dimse_timeout: float = 30,
) -> list[tuple[str | None, int | None, str | None]]:
    """Send ``items`` over one association with pynetdicom.

    Paths are sent as they are on disk (pynetdicom's chunked mode: the file
    meta names the SOP class/instance, the data set bytes are not decoded), so
    broken files reach the server unchanged. Returns (SOP Instance UID,
    status or None if no response, ErrorComment) per item; stops at the
    first item without a response (association gone).
    ``on_result(uid, status)`` is called after every response.
    """
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage
    from pynetdicom import AE, _config

    ae = AE(ae_title=calling)
    ae.acse_timeout = 10
    ae.dimse_timeout = dimse_timeout
    ae.network_timeout = dimse_timeout
    ts = list(transfer_syntaxes or [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for sop in sop_classes or [CTImageStorage, MRImageStorage]:
        ae.add_requested_context(sop, ts)
    assoc = ae.associate(HOST, server.dimse_port, ae_title=server.aet)
    assert assoc.is_established, "pynetdicom could not associate with the server"
    results: list[tuple[str | None, int | None, str | None]] = []
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    settings = pydicom.config.settings
    validation = settings.reading_validation_mode, settings.writing_validation_mode
    # deliberately invalid UIDs must not trip pydicom's validation (warnings are errors)
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        for item in items:
            if isinstance(item, Dataset):
                uid: str | None = str(item.get("SOPInstanceUID", "")) or None
            else:
                meta = pydicom.dcmread(
                    item, stop_before_pixels=True, force=True, specific_tags=["SOPInstanceUID"]
                )
                uid = str(meta.file_meta.get("MediaStorageSOPInstanceUID", "")) or None
            if not assoc.is_established:
                break
            try:
                rsp = assoc.send_c_store(item)
            except (RuntimeError, OSError):
                rsp = Dataset()
            status = int(rsp.Status) if "Status" in rsp else None
            comment = str(rsp.get("ErrorComment", "")) or None
            results.append((uid, status, comment))
            if on_result is not None:
                on_result(uid, status)  # type: ignore[operator]
            if status is None:
                break
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        settings.reading_validation_mode, settings.writing_validation_mode = validation
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return results


def pyn_associate(
    server: DicomhubServer, abstract_syntaxes: Sequence[str], calling: str = "PYNSCU"
) -> tuple[bool, list[str], str]:
    """Associate proposing only ``abstract_syntaxes``.

    Returns (established, accepted abstract syntaxes, rejection description).
    """
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.acse_timeout = 10
    ae.network_timeout = 10
    for sop in abstract_syntaxes:
        ae.add_requested_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(HOST, server.dimse_port, ae_title=server.aet)
    try:
        accepted = [str(cx.abstract_syntax) for cx in assoc.accepted_contexts]
        established = assoc.is_established
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else ""
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return established, accepted, why


# --------------------------------------------------------------------------- processes, polling, multipart


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set size, KiB) of a live process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/PID/task/*/children)."""
    out: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out += [int(x) for x in children.read_text().split()]
    return sorted(set(out))


def descendant_pids(pid: int) -> list[int]:
    """Children, grandchildren, ... of ``pid``."""
    seen: list[int] = []
    todo = child_pids(pid)
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.append(p)
            todo += child_pids(p)
    return sorted(seen)


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f[9])
    return inodes


def listening_pids(port: int, candidates: Iterable[int]) -> list[int]:
    """Those of ``candidates`` holding a socket that listens on ``port``."""
    wanted = {f"socket:[{i}]" for i in _listening_inodes(port)}
    found: list[int] = []
    for pid in candidates:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        found.append(pid)
                        break
    return found


def wait_until(
    predicate: object, timeout: float = 20.0, interval: float = 0.25, what: str = "condition"
) -> object:
    """Call ``predicate()`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()  # type: ignore[operator]
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached after {timeout}s (last value {value!r})")
        time.sleep(interval)


def metric_samples(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition: ``'name{labels}'`` (exactly as
    written, labels in the server's order) -> value."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


def split_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a multipart body as (lower-cased headers, content)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    assert m, f"no boundary in {content_type!r}"
    delim = b"--" + m.group(1).encode()
    parts: list[tuple[dict[str, str], bytes]] = []
    for chunk in body.split(delim)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk
        head, _, content = chunk.partition(b"\r\n\r\n")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        parts.append((headers, content))
    return parts


# --------------------------------------------------------------------------- backend-neutral looks inside


def index_rows(data_dir: Path, sql: str, **params: object) -> list[tuple[object, ...]]:
    """Rows of a read-only SQL statement (named ``:params``) on the index of the archive in
    ``data_dir``, whichever backend it is on (DICOMHUB_TEST_BACKEND)."""
    from sqlalchemy import text

    from dicomhub.index.engine import connect_engine

    url = backend_env(data_dir).get("DICOMHUB_DATABASE_URL") or f"sqlite:///{Path(data_dir) / 'index.sqlite'}"
    engine = connect_engine(url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params).all()]
    finally:
        engine.dispose()


def _s3_object(data_dir: Path, key: str) -> tuple[object, str, str]:
    """(client, bucket, object key) of blob ``key`` of an archive on S3."""
    import boto3

    from tests import s3backend

    url = backend_env(data_dir)["DICOMHUB_STORAGE_URL"]
    bucket, _, prefix = url[len("s3://") :].partition("/")
    env = s3backend.s3_env()
    # One client per test process: building a boto3 client loads botocore's
    # endpoint and service models (tens of ms), which per blob read made the
    # pixel comparisons of whole series take a minute.
    settings = (
        env["AWS_ENDPOINT_URL"],
        env["AWS_REGION"],
        env["AWS_ACCESS_KEY_ID"],
        env["AWS_SECRET_ACCESS_KEY"],
    )
    client = _S3_CLIENTS.get(settings)
    if client is None:
        client = _S3_CLIENTS.setdefault(
            settings,
            boto3.session.Session().client(
                "s3",
                endpoint_url=settings[0],
                region_name=settings[1],
                aws_access_key_id=settings[2],
                aws_secret_access_key=settings[3],
            ),
        )
    return client, bucket, (prefix.strip("/") + "/" if prefix.strip("/") else "") + key


_S3_CLIENTS: dict[tuple[str, str, str, str], object] = {}


def _on_s3(data_dir: Path) -> bool:
    return backend_env(data_dir).get("DICOMHUB_STORAGE_URL", "").startswith("s3://")


def read_blob(data_dir: Path, key: str) -> bytes | None:
    """The stored bytes of blob ``key`` (None when absent), on disk or in the bucket."""
    if _on_s3(data_dir):
        client, bucket, name = _s3_object(data_dir, key)
        try:
            return bytes(client.get_object(Bucket=bucket, Key=name)["Body"].read())  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - NoSuchKey and friends: absent
            return None
    path = Path(data_dir) / "blobs" / key[:2] / key[2] / key
    return path.read_bytes() if path.is_file() else None


def write_blob(data_dir: Path, key: str, data: bytes) -> None:
    """Overwrite the stored bytes of blob ``key`` behind the archive's back (damage tests)."""
    if _on_s3(data_dir):
        client, bucket, name = _s3_object(data_dir, key)
        client.put_object(Bucket=bucket, Key=name, Body=data)  # type: ignore[attr-defined]
        return
    path = Path(data_dir) / "blobs" / key[:2] / key[2] / key
    path.parent.mkdir(parents=True, exist_ok=True)  # folders are made as keys first need them
    path.write_bytes(data)


# ---------------------------------------------------------------- HTTP clients of an --auth server


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of ``token`` (none for an empty token: no access control)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def stow(url: str, token: str, datasets: Sequence[Dataset], timeout: float = 60.0) -> None:
    """Store ``datasets`` over STOW-RS at the server ``url`` (one request); asserts 200."""
    boundary = "e2e-stow-boundary"
    parts = []
    for ds in datasets:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        parts.append(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buf.getvalue() + b"\r\n"
        )
    r = httpx.post(
        f"{url}/dicomweb/studies",
        content=b"".join(parts) + f"--{boundary}--\r\n".encode(),
        headers={
            **bearer(token),
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=timeout,
    )
    assert r.status_code == 200, r.text


def add_user(server: DicomhubServer, name: str, role: str, scope: str, admin_token: str = "") -> str:
    """A new user's token: with ``admin_token`` over HTTP (faster), else by the CLI."""
    if admin_token:
        r = httpx.post(
            f"{server.base_url}/users",
            json={"name": name, "grants": [{"role": role, "scope": scope}]},
            headers=bearer(admin_token),
            timeout=30,
        )
        assert r.status_code == 201, r.text
        return str(r.json()["token"])
    rc, out = run_cli(
        "user", "add", name, "--role", role, "--scope", scope, "--data-dir", str(server.data_dir)
    )
    assert rc == 0, out
    return out.strip().splitlines()[-1]
