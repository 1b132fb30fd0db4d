"""Process and server helpers for the DIMSE benchmark (Orthanc, dicomhub, storescp)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HOST = "127.0.0.1"
SCU_AET = "BENCHSCU"
MOVE_AET = "BENCHSCP"
ORTHANC_BIN = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

_START = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def dcmtk_env() -> dict[str, str]:
    """Environment for every DCMTK process (both servers alike)."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - localhost only
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def http_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - localhost only
        return json.loads(r.read())


def describe_exit(returncode: int | None) -> str:
    """``exit code 0`` / ``killed by SIGTERM (-15)`` / ``running``."""
    if returncode is None:
        return "running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name} ({returncode})"
    return f"exit code {returncode}"


def stop_process(proc: subprocess.Popen[Any] | None, name: str, grace: float = 15.0) -> None:
    """terminate -> wait -> kill, on the process group the process leads (started by us).

    A process that had already ended on its own is reported with its exit
    status (a server that dies during a run must not go unnoticed).
    """
    if proc is None:
        return
    if proc.poll() is not None:
        log(f"{name} had already ended: {describe_exit(proc.returncode)}")
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log(f"{name} did not stop after SIGTERM, killing")
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def spawn(
    cmd: list[str], logfile: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[subprocess.Popen[Any], IO[Any]]:
    fh = open(logfile, "ab")  # noqa: SIM115 - closed by the owner
    proc = subprocess.Popen(
        cmd,
        stdout=fh,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    return proc, fh


def _machine_cpu_ticks() -> tuple[int, int]:
    """(busy, total) CPU clock ticks of the whole machine so far, from /proc/stat: every
    process and kernel thread (write-back, memory reclaim), not only the servers."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def wait_until_quiet(
    servers: list[Server], *, quiet_seconds: float = 3.0, busy_share: float = 0.05, timeout: float = 600.0
) -> float:
    """Flush dirty pages and wait until the machine's CPUs are busy less than
    ``busy_share`` of the time for ``quiet_seconds`` in a row; return the seconds it took.

    Every server is measured on a quiet machine: not while the page cache still writes
    back what a server just loaded (a file-system flush would wait for the other's
    bytes), not while the kernel still reclaims the memory a load filled, and not
    while a server still does work of its own after the load (dicomhub's background
    process prepares header JSON, validation and digests). The time is reported, so
    what a server still had to do is not hidden. ``servers`` must be alive.
    """
    start = time.monotonic()
    for s in servers:
        s.died("while waiting for a quiet machine")
    os.sync()
    quiet_since: float | None = None
    busy, total = _machine_cpu_ticks()
    while time.monotonic() - start < timeout:
        time.sleep(0.5)
        now_busy, now_total = _machine_cpu_ticks()
        share = (now_busy - busy) / max(1, now_total - total)
        busy, total = now_busy, now_total
        now = time.monotonic()
        if share > busy_share:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= quiet_seconds:
            break
    os.sync()
    return time.monotonic() - start


def tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------- servers


def _process_table() -> dict[int, tuple[int, float]]:
    """Every process of the machine: pid -> (parent pid, CPU seconds used so far)."""
    table: dict[int, tuple[int, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return table


def _tree(root: int, table: dict[int, tuple[int, float]]) -> set[int]:
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, (ppid, _cpu) in table.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def _tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and its descendants (Linux /proc)."""
    table = _process_table()
    return sum(table[pid][1] for pid in _tree(root, table) if pid in table)


def tree_memory_kb(root: int) -> tuple[int, int]:
    """Resident and proportional set size (kB) of ``root`` and its descendants.

    RSS counts a page shared by several processes of the tree once in each of them;
    PSS divides it among them, so the tree's PSS is what it really takes.
    """
    rss = pss = 0
    for pid in _tree(root, _process_table()):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    key, _sep, value = line.partition(":")
                    if key == "Rss":
                        rss += int(value.split()[0])
                    elif key == "Pss":
                        pss += int(value.split()[0])
        except (OSError, ValueError):
            continue  # gone meanwhile
    return rss, pss


class MemoryPeak:
    """Samples :func:`tree_memory_kb` of a process tree every ``interval`` seconds in a
    thread, between ``with`` and its end; ``rss_mb`` and ``pss_mb`` are the peaks."""

    def __init__(self, root: int, interval: float = 0.2) -> None:
        self.root, self.interval = root, interval
        self.rss_mb = self.pss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="memory-peak", daemon=True)

    def _sample(self) -> None:
        while True:
            rss, pss = tree_memory_kb(self.root)
            self.rss_mb, self.pss_mb = max(self.rss_mb, rss / 1024), max(self.pss_mb, pss / 1024)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> MemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_quiet(pid: int, limit: float = 20.0, step: float = 0.25, busy: float = 0.05) -> float:
    """Wait until the process tree of ``pid`` has finished starting up: two consecutive
    ``step`` intervals in which it used under ``busy`` of a core. A server answers its
    health check before its workers have imported everything and its background jobs
    have made their first pass; a timed run started then measures that start-up, not
    the server. Returns the seconds waited (at most ``limit``)."""
    start = time.monotonic()
    quiet, last = 0, _tree_cpu_seconds(pid)
    while quiet < 2 and time.monotonic() - start < limit:
        time.sleep(step)
        now = _tree_cpu_seconds(pid)
        quiet = quiet + 1 if now - last < busy * step else 0
        last = now
    return time.monotonic() - start


@dataclass
class Server:
    """A DIMSE server under test.  Managed servers can be restarted with an empty archive."""

    key: str  # "subject" or "orthanc"
    label: str  # column title
    host: str = HOST
    port: int = 0
    aet: str = ""
    managed: bool = False
    move_port: int = 0  # where the server must send C-MOVE sub-operations (BENCHSCP)
    workdir: Path | None = None
    proc: subprocess.Popen[Any] | None = field(default=None, repr=False)
    _logfh: IO[Any] | None = field(default=None, repr=False)
    generation: int = 0
    exit_status: str | None = None  # set when the process is found dead (see died())

    def start(self) -> None:  # pragma: no cover - overridden
        pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.died()
        stop_process(self.proc, self.label)
        self.proc = None
        if self._logfh:
            self._logfh.close()
            self._logfh = None

    def restart_empty(self) -> None:
        """Stop and start again with a fresh (empty) storage directory."""
        if not self.managed:
            raise RuntimeError("cannot empty an external server")
        self.stop()
        self.start()

    def describe(self) -> str:
        return f"{self.label} {self.aet}@{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def died(self, when: str = "") -> str | None:
        """If the managed process has ended on its own: log how (exit status, signal,
        last log lines) once and return the description; else None."""
        if self.proc is None or self.proc.poll() is None:
            return None
        status = describe_exit(self.proc.returncode)
        if self.exit_status is None:
            self.exit_status = status
            logfile = self.logfile() if self.workdir else None
            log(
                f"{self.label} (pid {self.proc.pid}) DIED{' ' + when if when else ''}: {status}"
                + (f"; last lines of {logfile}:\n{tail(logfile)}" if logfile else "")
            )
        return self.exit_status

    def logfile(self) -> Path | None:
        return None


@dataclass
class ExternalServer(Server):
    def start(self) -> None:
        if not port_open(self.host, self.port, timeout=3):
            raise RuntimeError(f"target {self.host}:{self.port} is not reachable")


@dataclass
class OrthancServer(Server):
    """Orthanc on free localhost ports with its own storage under ``workdir``.

    ``dicomweb`` loads the DICOMweb plugin (under ``/dicom-web/``);
    ``extra_config`` is merged over the configuration (e.g. ``DicomModalities``,
    ``LimitFindResults``). Used by the benchmarks and by the migration tests.
    """

    binary: str = ORTHANC_BIN
    http_port: int = 0
    version_str: str = "?"
    dicomweb: bool = False
    extra_config: dict[str, Any] = field(default_factory=dict)

    def logfile(self) -> Path | None:
        assert self.workdir
        return self.workdir / f"orthanc-{self.key}.log"

    def start(self) -> None:
        assert self.workdir is not None
        self.generation += 1
        gen = self.workdir / f"{self.key}-orthanc-{self.generation}"
        gen.mkdir(parents=True)
        self.port, self.http_port = free_port(), free_port()
        config = self.config(gen)
        cfg = gen / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=1))
        log(f"starting {self.product} ({self.key}) DICOM {self.port} HTTP {self.http_port}")
        self.proc, self._logfh = spawn(
            [self.binary, str(cfg)], self.logfile() or gen / "log", env=dcmtk_env(), cwd=gen
        )
        deadline = time.monotonic() + 60
        url = f"http://{HOST}:{self.http_port}/system"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}:\n{tail(self.logfile())}")
            if http_ok(url) and port_open(HOST, self.port):
                self.version_str = self.version()
                wait_quiet(self.proc.pid)
                return
            time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not become ready:\n{tail(self.logfile())}")

    product = "Orthanc"

    def config(self, gen: Path) -> dict[str, Any]:
        """The Orthanc configuration for a fresh storage generation ``gen``."""
        return {
            "Name": f"dimse-bench-{self.key}",
            "StorageDirectory": str(gen / "storage"),
            "IndexDirectory": str(gen / "index"),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {
                MOVE_AET: [MOVE_AET, HOST, self.move_port],
                SCU_AET: [SCU_AET, HOST, 104],  # calling AE of our SCUs (never contacted)
            },
            "Plugins": [DICOMWEB_PLUGIN] if self.dicomweb else [],
            "DicomWeb": {"Enable": self.dicomweb, "Root": "/dicom-web/"},
            "LuaScripts": [],
            **self.extra_config,
        }

    @property
    def dicomweb_url(self) -> str:
        return f"http://{HOST}:{self.http_port}/dicom-web"

    def statistics(self) -> dict[str, Any]:
        return dict(http_json(f"http://{HOST}:{self.http_port}/statistics"))

    def version(self) -> str:
        try:
            return str(http_json(f"http://{HOST}:{self.http_port}/system").get("Version", "?"))
        except Exception:  # noqa: BLE001
            return "?"


def find_dicomhub(cmd_override: str | None) -> list[str]:
    if cmd_override:
        return shlex.split(cmd_override)
    cand = Path(sys.executable).parent / "dicomhub"
    if cand.exists():
        return [str(cand)]
    found = shutil.which("dicomhub")
    if found:
        return [found]
    raise RuntimeError(
        "dicomhub executable not found next to the interpreter or on PATH "
        "(use --dicomhub-cmd, --target host:port:AET or --no-dicomhub)"
    )


@dataclass
class DicomhubServer(Server):
    command: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    http_port: int = 0

    def logfile(self) -> Path | None:
        assert self.workdir
        return self.workdir / f"dicomhub-{self.key}.log"

    def start(self) -> None:
        assert self.workdir is not None
        self.generation += 1
        gen = self.workdir / f"{self.key}-dicomhub-{self.generation}"
        data = gen / "data"
        data.mkdir(parents=True)
        self.port, self.http_port = free_port(), free_port()
        cmd = [
            *self.command,
            "serve",
            "--data-dir",
            str(data),
            "--aet",
            self.aet,
            "--dimse-port",
            str(self.port),
            "--http-port",
            str(self.http_port),
            "--host",
            HOST,
            "--remote-ae",
            f"{MOVE_AET}={HOST}:{self.move_port}",
            *self.extra_args,
        ]
        log(f"starting dicomhub: {shlex.join(cmd)}")
        # A fatal signal in native code (SIGSEGV, SIGABRT, SIGBUS ...) then leaves
        # the Python stacks of every thread in the log instead of nothing.
        env = {**dcmtk_env(), "PYTHONFAULTHANDLER": "1"}
        self.exit_status = None
        self.proc, self._logfh = spawn(cmd, self.logfile() or gen / "log", env=env, cwd=gen)
        deadline = time.monotonic() + 90
        url = f"http://{HOST}:{self.http_port}/healthz"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dicomhub exited with {self.proc.returncode}:\n{tail(self.logfile())}")
            if http_ok(url) and port_open(HOST, self.port):
                wait_quiet(self.proc.pid)
                return
            time.sleep(0.1)
        raise RuntimeError(f"dicomhub did not become ready:\n{tail(self.logfile())}")


@dataclass
class StoreSCP:
    """DCMTK storescp acting as the C-MOVE destination BENCHSCP for one server."""

    name: str
    outdir: Path
    logpath: Path
    port: int = 0
    proc: subprocess.Popen[Any] | None = None
    _fh: IO[Any] | None = None

    def start(self) -> None:
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        cmd = [
            "storescp",
            "-aet",
            MOVE_AET,
            "-od",
            str(self.outdir),
            "-ta",
            "30",
            "-td",
            "60",
            str(self.port),
        ]
        self.proc, self._fh = spawn(cmd, self.logpath, env=dcmtk_env())
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"storescp exited: {tail(self.logpath)}")
            if port_open(HOST, self.port):
                return
            time.sleep(0.05)
        raise RuntimeError("storescp did not start listening")

    def clear(self) -> None:
        for p in self.outdir.iterdir():
            if p.is_file():
                p.unlink()

    def count(self) -> int:
        return sum(1 for p in self.outdir.iterdir() if p.is_file() and not p.name.startswith("."))

    def stop(self) -> None:
        stop_process(self.proc, f"storescp ({self.name})", grace=5)
        self.proc = None
        if self._fh:
            self._fh.close()
            self._fh = None


@contextlib.contextmanager
def work_dir(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary work folder for one benchmark run, removed afterwards unless ``keep``."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class LocalDicomhub:
    """A ``dicomhub serve`` a benchmark started (see :func:`running_dicomhub`)."""

    http_port: int
    dimse_port: int
    hl7_port: int  # 0: no HL7 listener
    log_path: Path


@contextlib.contextmanager
def running_dicomhub(
    command: Sequence[str], work: Path, data: Path, extra_args: Sequence[str] = (), *, hl7: bool = False
) -> Iterator[LocalDicomhub]:
    """``dicomhub serve`` on free loopback ports with its data in ``data``, ready (health
    check answered, DIMSE and HL7 ports open) when the block starts; stopped when it ends."""
    http_port, dimse_port, hl7_port = free_port(), free_port(), free_port() if hl7 else 0
    cmd = [
        *command, "serve", "--data-dir", str(data), "--host", HOST,
        "--http-port", str(http_port), "--dimse-port", str(dimse_port),
        *(["--hl7-port", str(hl7_port)] if hl7 else []), *extra_args,
    ]  # fmt: skip
    log(f"starting dicomhub: {shlex.join(cmd)}")
    log_path = work / "dicomhub.log"
    proc, logfh = spawn(cmd, log_path, env=dcmtk_env(), cwd=work)
    try:
        deadline = time.monotonic() + 90
        ports = [dimse_port] + ([hl7_port] if hl7 else [])
        while not (http_ok(f"http://{HOST}:{http_port}/healthz") and all(port_open(HOST, p) for p in ports)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"dicomhub did not start:\n{tail(log_path)}")
            time.sleep(0.1)
        yield LocalDicomhub(http_port, dimse_port, hl7_port, log_path)
    finally:
        stop_process(proc, "dicomhub")
        logfh.close()
