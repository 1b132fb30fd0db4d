"""Prometheus metric families, shared by every process of ``dicomhub serve``.

``dicomhub serve`` runs DIMSE worker processes, a background process and the
HTTP process. prometheus_client's multiprocess mode lets each process count
into memory-mapped files in one directory (``PROMETHEUS_MULTIPROC_DIR``),
which the HTTP process adds up at scrape time (``MultiProcessCollector``):
an increment is a write to a mapped page, no system call, so counting every
C-STORE costs nothing measurable. :func:`use_directory` points this process
at the directory; ``serve`` calls :func:`prepare_directory` first, which
empties it, so counters start at zero with each start of the server (as
Prometheus expects of a restart) and never go down while it runs.

prometheus_client picks in-memory or file-backed values when it is first
imported, so the families are created on first use (:func:`metrics`), never
at import time, and :func:`use_directory` re-selects the value class if the
library was imported before the directory was known.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomhub.errors import IndexUnavailable, StorageError

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = [
    "MULTIPROC_ENV",
    "Metrics",
    "ProcessTable",
    "count_backend_error",
    "mark_process_dead",
    "metrics",
    "multiprocess_dir",
    "new_directory",
    "prepare_directory",
    "scrape_registry",
    "use_directory",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds. DIMSE: an echo takes a millisecond, a C-MOVE of a study minutes.
_DIMSE_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
# HTTP: a QIDO-RS answer takes milliseconds, a study download seconds.
_HTTP_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The metric families dicomhub counts into (see docs/operations.md for each)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.associations: Counter = Counter(
            "dicomhub_associations",
            "DIMSE associations by calling AE title and outcome (released, aborted, rejected).",
            ["calling_ae", "outcome"],
        )
        self.contexts_rejected: Counter = Counter(
            "dicomhub_presentation_contexts_rejected",
            "Proposed presentation contexts refused, by calling AE title.",
            ["calling_ae"],
        )
        self.dimse_received_bytes: Counter = Counter(
            "dicomhub_dimse_received_bytes",
            "Bytes received on DIMSE associations, by calling AE title.",
            ["calling_ae"],
        )
        self.dimse_operations: Counter = Counter(
            "dicomhub_dimse_operations",
            "DIMSE operations served, by calling AE title, operation and status class.",
            ["calling_ae", "operation", "status"],
        )
        self.dimse_seconds: Histogram = Histogram(
            "dicomhub_dimse_operation_duration_seconds",
            "Time to serve a DIMSE operation (request received to final response sent), by operation.",
            ["operation"],
            buckets=_DIMSE_BUCKETS,
        )
        self.http_requests: Counter = Counter(
            "dicomhub_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
        )
        self.http_seconds: Histogram = Histogram(
            "dicomhub_http_request_duration_seconds",
            "Time to answer an HTTP request (to the last byte of the body), by method and route template.",
            ["method", "route"],
            buckets=_HTTP_BUCKETS,
        )
        self.stored_objects: Counter = Counter(
            "dicomhub_stored_objects",
            "Objects handed to the one ingest path, by outcome (stored, replaced, already-present).",
            ["outcome"],
        )
        self.stored_bytes: Counter = Counter(
            "dicomhub_stored_bytes",
            "Bytes of objects written to the blob store (stored or replaced, as received).",
        )
        self.backend_errors: Counter = Counter(
            "dicomhub_backend_errors",
            "Index and blob store failures that reached a client or a background job, by back end.",
            ["backend", "channel"],
        )
        self.queue_depth: Gauge = Gauge(
            "dicomhub_queue_depth",
            "Items waiting in an in-process queue (audit-backlog, audit-syslog), summed over live processes.",
            ["queue"],
            multiprocess_mode="livesum",
        )
        self.syslog_messages: Counter = Counter(
            "dicomhub_audit_syslog_messages",
            "Audit messages for the syslog collector, by result (sent, dropped-full, dropped-too-large).",
            ["result"],
        )
        self.syslog_connect_failures: Counter = Counter(
            "dicomhub_audit_syslog_connect_failures",
            "Failed attempts to connect to (or write to) the syslog collector.",
        )


_metrics: Metrics | None = None
_metrics_lock = threading.Lock()


def metrics() -> Metrics:
    """The metric families of this process, created on first use.

    Thread-safe: the first calls may come from several threads at once (the
    threads of ``dicomhub import``, of a DIMSE worker's associations), and a
    second :class:`Metrics` would register every family twice.

    Returns
    -------
    Metrics
        One instance per process.
    """
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


def multiprocess_dir() -> str | None:
    """The multiprocess directory this process counts into, or None (in-memory values)."""
    return os.environ.get(MULTIPROC_ENV) or None


def use_directory(path: str | os.PathLike[str]) -> None:
    """Count into ``path`` from now on (and so will processes started after this).

    Parameters
    ----------
    path : path-like
        The multiprocess directory; it must exist.

    Notes
    -----
    Sets ``PROMETHEUS_MULTIPROC_DIR`` in this process's environment, which
    spawned workers inherit. Must run before :func:`metrics` is first called.
    """
    os.environ[MULTIPROC_ENV] = str(path)
    import prometheus_client.values as values

    # The library chose its value class when it was imported, maybe before this.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def prepare_directory(path: Path) -> Path:
    """Create ``path`` empty (removing what a previous run left) and count into it.

    Parameters
    ----------
    path : Path
        The directory; created when missing.

    Returns
    -------
    Path
        ``path``.
    """
    if path.exists():
        # Only the library's own files: an operator may point this at a folder of their own.
        for item in path.glob("*.db"):
            item.unlink()
    else:
        path.mkdir(parents=True)
    use_directory(path)
    return path


_DIRECTORY_PREFIX = "dicomhub-metrics-"


def new_directory(alive: Callable[[int], bool], parent: Path | None = None) -> Path:
    """A fresh, empty multiprocess directory for one start of ``serve``, in ``parent``
    (the system's temporary folder by default).

    Its name carries the pid of the server that made it. A server stopped by
    ``kill -9`` (or a crash) never reaches :func:`remove_directory`, so before
    making its own, a start removes the directories of servers whose pid no
    longer runs: without that, each such stop left one behind for good. A
    directory of a running server (another instance on the same machine) is kept.
    ``alive`` tells whether a pid still runs
    (:func:`dicomhub.services.liveness.process_alive`, given by the caller: telemetry
    sits below services).
    """
    parent = Path(tempfile.gettempdir()) if parent is None else parent
    for stale in parent.glob(f"{_DIRECTORY_PREFIX}*"):
        owner = stale.name[len(_DIRECTORY_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not alive(int(owner)) and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{_DIRECTORY_PREFIX}{os.getpid()}-", dir=parent))


def remove_directory(path: Path) -> None:
    """Remove a multiprocess directory this server created (at shutdown)."""
    shutil.rmtree(path, ignore_errors=True)


def mark_process_dead(pid: int) -> None:
    """Forget the live gauges of the ended process ``pid`` (its counters stay counted).

    Parameters
    ----------
    pid : int
        The process id of a worker that exited.
    """
    directory = multiprocess_dir()
    if directory is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def count_backend_error(exc: BaseException, channel: str) -> None:
    """Count ``exc`` in ``dicomhub_backend_errors_total`` when it is an index or blob store failure.

    Parameters
    ----------
    exc : BaseException
        An exception an adapter is about to turn into a status.
    channel : str
        ``dimse``, ``http`` or ``background``.
    """
    if isinstance(exc, StorageError):
        metrics().backend_errors.labels(backend="storage", channel=channel).inc()
    elif isinstance(exc, IndexUnavailable):
        metrics().backend_errors.labels(backend="index", channel=channel).inc()


class ProcessTable:
    """``dicomhub_process_*`` of the server's processes, read from ``/proc`` at scrape time.

    prometheus_client's own process collector describes only the process that
    serves the scrape; the DIMSE workers and the background process are
    separate processes, so this reads their ``/proc/<pid>/stat`` too.
    """

    def __init__(self, processes: Callable[[], Mapping[str, int]]) -> None:
        """``processes`` gives ``{role: pid}`` (e.g. ``http``, ``dimse-0``, ``background``)."""
        self._processes = processes
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._page = os.sysconf("SC_PAGESIZE") if hasattr(os, "sysconf") else 4096

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cpu = CounterMetricFamily(
            "dicomhub_process_cpu_seconds",
            "User and system CPU time of each server process.",
            labels=["process"],
        )
        rss = GaugeMetricFamily(
            "dicomhub_process_resident_memory_bytes",
            "Resident memory of each server process.",
            labels=["process"],
        )
        fds = GaugeMetricFamily(
            "dicomhub_process_open_fds", "Open file descriptors of each server process.", labels=["process"]
        )
        for role, pid in sorted(self._processes().items()):
            try:
                with open(f"/proc/{pid}/stat", "rb") as fh:
                    # Fields after the command name, which may hold spaces and parentheses.
                    parts = fh.read().rsplit(b")", 1)[1].split()
                open_fds = len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                continue  # the process ended (a worker being restarted)
            cpu.add_metric([role], (int(parts[11]) + int(parts[12])) / self._ticks)
            rss.add_metric([role], int(parts[21]) * self._page)
            fds.add_metric([role], open_fds)
        yield from (cpu, rss, fds)


class _Forward:
    """Collects what another registry holds (the in-memory default, outside ``serve``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()


def scrape_registry(*collectors: Any) -> CollectorRegistry:
    """A registry with every process's metrics (or this process's outside ``serve``) and ``collectors``.

    Parameters
    ----------
    *collectors
        Objects with a ``collect()`` method, added to the registry.

    Returns
    -------
    CollectorRegistry
        Ready for ``generate_latest``; build it once, collect it per scrape.
    """
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    directory = multiprocess_dir()
    if directory is not None:
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        metrics()  # the families exist (at zero) before the first scrape
        registry.register(_Forward(REGISTRY))
    for collector in collectors:
        registry.register(collector)
    return registry
