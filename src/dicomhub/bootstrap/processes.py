"""The processes of ``dicomhub serve``: the supervisor (:func:`serve`), its DIMSE
workers, the background worker with its threads, and the HL7 v2 listener.

The archive they run on is wired in :mod:`dicomhub.bootstrap`; this module only
starts, runs and stops processes and threads around it.
"""

from __future__ import annotations

import datetime as dt
import faulthandler
import logging
import multiprocessing
import os
import signal
import socket
import threading
from collections.abc import Callable
from multiprocessing.context import ForkServerContext
from typing import TYPE_CHECKING, Any

from dicomhub.bootstrap import configure_logging, open_archive
from dicomhub.bootstrap.plugins import plugin_host
from dicomhub.config import Settings
from dicomhub.config.checks import tls_client_context, tls_server_context
from dicomhub.errors import ConfigurationError, DicomhubError
from dicomhub.model.commitment import CommitmentResult
from dicomhub.services.archive import Archive
from dicomhub.services.liveness import process_alive
from dicomhub.services.peers import PeerService

if TYPE_CHECKING:
    from dicomhub.hl7.mllp import MllpListener

__all__ = [
    "commitment_deliverer",
    "mpps_sender",
    "run_background_worker",
    "run_dimse_worker",
    "run_migration_jobs",
    "serve",
    "start_fork_server",
    "start_hl7_listener",
    "worker_context",
]

_LOGGER = logging.getLogger("dicomhub")


def worker_context() -> ForkServerContext:
    """How the DIMSE workers and the background process start: forked by a fork server
    that has imported what they run (:mod:`dicomhub.bootstrap.preload`).

    Spawned, each of them imported pydicom, pynetdicom, SQLAlchemy and the archive
    anew, about 80 MB of private memory each. Forked from one process that imported
    them once, they share those pages (copy-on-write) and the tree's proportional set
    size drops by about a quarter. Not forked from the server process itself: it runs
    threads by then (HTTP, webhooks, routing), and a worker restarted after a crash
    would be forked from a process whose locks another thread may hold.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["dicomhub.bootstrap.preload"])
    return context


def start_fork_server() -> None:
    """Start the fork server of :func:`worker_context` now, without waiting for its
    imports; the first process started from the context waits for them."""
    import multiprocessing.forkserver

    worker_context()
    multiprocessing.forkserver.ensure_running()


def run_dimse_worker(
    settings: Settings,
    listener: socket.socket,
    index: int,
    load: Any,
    parent: int,
    tls_listener: socket.socket | None = None,
) -> None:
    """Entry point of a DIMSE worker process (see :class:`dicomhub.dimse.server.DimseWorkers`)."""
    from dicomhub.dimse import server

    server.die_with_parent(parent)
    configure_logging(settings.log_level, settings.log_format)
    archive = open_archive(settings, upgrade=False)
    try:
        server.serve_worker(archive, settings, listener, index, load, tls_listener)
    finally:
        archive.close()


def run_background_worker(settings: Settings, parent: int) -> None:
    """Entry point of the background process: header metadata, data set digests, the
    decode check, IOD validation, the delivery of Storage Commitment reports and
    of MPPS status messages (HL7), and de-identification runs.

    A process of its own, because the work is pure Python: as a thread of the
    HTTP process it held the GIL for milliseconds at a time and QIDO-RS
    answers waited for it.
    """
    from dicomhub.dimse import server

    server.die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    configure_logging(settings.log_level, settings.log_format)
    archive = open_archive(settings, upgrade=False)
    from dicomhub.migrate.outbound import sender_factory  # routing's senders: this process only

    archive.routing.use_senders(sender_factory(archive, settings, plugin_host(settings)))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [
        threading.Thread(
            target=archive.decode_check.run_worker, args=(stop,), name="decode-check", daemon=True
        ),
        threading.Thread(target=archive.validation.run_worker, args=(stop,), name="validation", daemon=True),
        threading.Thread(
            target=archive.commitment.run_delivery,
            args=(stop, commitment_deliverer(settings, archive.peers)),
            name="commitment-delivery",
            daemon=True,
        ),
        threading.Thread(target=archive.deid.run_worker, args=(stop,), name="deid-runs", daemon=True),
        threading.Thread(target=archive.stability.run_worker, args=(stop,), name="stability", daemon=True),
        threading.Thread(target=archive.trash.run_worker, args=(stop,), name="trash-purge", daemon=True),
        threading.Thread(target=archive.retention.run_worker, args=(stop,), name="retention", daemon=True),
        threading.Thread(target=archive.webhooks.run_worker, args=(stop,), name="webhooks", daemon=True),
        *(
            [
                threading.Thread(
                    target=archive.plugin_events.run_worker, args=(stop,), name="plugin-events", daemon=True
                )
            ]
            if archive.plugin_events is not None
            else []
        ),
        threading.Thread(
            target=archive.routing.run_enqueuer, args=(stop,), name="route-enqueue", daemon=True
        ),
        threading.Thread(
            target=archive.routing.run_forwarder, args=(stop,), name="route-forward", daemon=True
        ),
        threading.Thread(
            target=archive.mpps.run_delivery, args=(stop, mpps_sender(settings)), name="mpps-hl7", daemon=True
        ),
        threading.Thread(
            target=archive.content_digests.run_worker, args=(stop,), name="content-digests", daemon=True
        ),
        threading.Thread(
            target=run_migration_jobs, args=(archive, settings, stop), name="migration-jobs", daemon=True
        ),
    ]
    for thread in threads:
        thread.start()
    try:
        archive.headers.run_worker(stop)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
        archive.close()


def run_migration_jobs(archive: Archive, settings: Settings, stop: threading.Event) -> None:
    """Run the migration jobs the HTTP API queues (and those a crashed server left), one at a time."""
    from dicomhub.migrate.runner import STALE, Migrator, owner_gone, owner_name
    from dicomhub.model.migration import JobState

    owner = owner_name("server")
    migrator = Migrator(archive, settings)
    while not stop.wait(1.0):
        try:
            job_id = archive.migration.claim_next_job(owner, dt.datetime.now(dt.UTC) - STALE, "server:%")
            if job_id is None:
                # A job whose server process on this host is gone (killed, crashed) is
                # taken over at once, not after its heartbeat has gone stale: a
                # restarted server resumes it seconds after it starts, not STALE later.
                orphaned = [
                    j["id"]
                    for j in archive.migration.jobs()
                    if j["state"] in (JobState.RUNNING.value, JobState.STOPPING.value)
                    and str(j["owner"] or "").startswith("server:")
                    and owner_gone(j["owner"])
                ]
                if orphaned:
                    job_id = archive.migration.claim_orphaned_job(min(orphaned), owner)
            if job_id is not None:
                migrator.run(job_id, owner, stop=stop)
        except DicomhubError as exc:
            logging.getLogger("dicomhub.migrate").warning("migration worker: %s", exc)


def start_hl7_listener(settings: Settings, archive: Archive) -> MllpListener | None:
    """The HL7 v2 (MLLP) listener of ``settings.hl7_port``, started; None when it is 0.

    Runs in the calling (HTTP) process, a thread per connection. MLLP carries no
    credentials: a message acts as an unrestricted caller named by its sending
    application (MSH-3), so the port is for the order system's network only
    (docs/orders.md). Raises OSError when the port cannot be bound.
    """
    if not settings.hl7_port:
        return None
    from dicomhub.hl7.messages import handle
    from dicomhub.hl7.mllp import MllpListener
    from dicomhub.model.caller import Caller, Channel

    def respond(frame: bytes, address: str) -> bytes:
        return handle(frame, archive.orders, lambda application: Caller(Channel.HL7, application, address))

    listener = MllpListener(
        settings.host,
        settings.hl7_port,
        respond,
        idle_timeout=settings.network_timeout,
        max_connections=settings.max_associations,
    )
    return listener.start()


def commitment_deliverer(settings: Settings, peers: PeerService) -> Callable[[str, CommitmentResult], None]:
    """Sends Storage Commitment reports on new associations to the requesting peers."""
    from dicomhub.dimse.commitment import send_report

    def deliver(ae_title: str, result: CommitmentResult) -> None:
        peer = peers.report_peer(ae_title)
        if peer is None:
            raise ConfigurationError(
                f"{ae_title} is not a peer with a host and a port (dicomhub peer add, [[peer]] or "
                "--remote-ae), so the report cannot be sent"
            )
        # A peer with tls gets its report over DICOM TLS only, never plain TCP.
        tls = tls_client_context(settings) if peer.tls else None
        send_report(
            peer.host,
            peer.port or 0,
            peer.ae_title,
            settings.aet,
            result,
            timeout=settings.acse_timeout,
            tls=tls,
        )

    return deliver


def mpps_sender(settings: Settings) -> Callable[[str, str], None]:
    """Sends the MPPS status messages over MLLP (see :class:`dicomhub.services.mpps.MppsService`)."""
    from dicomhub.hl7.client import send_message

    def send(destination: str, message: str) -> None:
        send_message(destination, message, timeout=settings.network_timeout)

    return send


def serve(settings: Settings) -> None:
    """Run ``dicomhub serve``: DIMSE worker processes, the background process and
    the HTTP server in this process, until a signal stops them; then shut all down.

    The index is migrated before any worker starts. SIGINT and SIGTERM end the
    HTTP server, after which the workers, the background process, the listeners,
    the audit backlog and the archive are closed, in that order.

    Raises
    ------
    ConfigurationError
        For a TLS certificate or key that cannot be loaded.
    DicomhubError
        When the DIMSE or the HTTP port cannot be listened on.
    """
    from dicomhub.telemetry.metrics import new_directory, prepare_directory, remove_directory

    if settings.dimse_tls_port or settings.https:
        tls_server_context(settings)  # a certificate that cannot be loaded stops serve here
    # Before any metric is counted and any worker spawned (they inherit the directory):
    # every process counts into it, /metrics adds them up; a fresh one per start.
    metrics_dir = prepare_directory(new_directory(process_alive))
    # The fork server imports what the workers run (about a second): started now, it
    # does so while this process migrates the index and builds the HTTP app, instead
    # of after. It starts after the metrics directory, whose place it passes on.
    start_fork_server()
    try:
        _serve_with_metrics(settings)
    finally:
        remove_directory(metrics_dir)


def _serve_with_metrics(settings: Settings) -> None:
    import uvicorn

    from dicomhub import __version__
    from dicomhub.conformance import conformance_renderer, http_routes_of
    from dicomhub.dimse.server import DimseWorkers, bind_listener
    from dicomhub.web.app import create_app
    from dicomhub.web.protocol import http_protocol

    archive = open_archive(settings)  # migrates the index before any worker starts
    archive.webhooks.begin()  # before anything can be stored
    if archive.plugin_events is not None:
        archive.plugin_events.begin()
    archive.routing.begin()  # an unknown peer stops serve here; the enqueuer starts at now
    # dimse_port 0 with a TLS port: DICOM TLS only (its listener serves as both).
    tls_only = settings.dimse_port == 0 and settings.dimse_tls_port > 0
    try:
        tls_listener = (
            bind_listener(settings.host, settings.dimse_tls_port) if settings.dimse_tls_port else None
        )
        listener = (
            tls_listener if tls_only and tls_listener else bind_listener(settings.host, settings.dimse_port)
        )
    except OSError as exc:
        archive.close()
        raise DicomhubError(f"cannot listen on {settings.host} for DIMSE: {exc.strerror}") from exc
    context = worker_context()
    workers = DimseWorkers(settings, listener, run_dimse_worker, tls_listener, context)
    workers.start()
    background = context.Process(
        target=run_background_worker,
        args=(settings, os.getpid()),
        name="dicomhub-background",
        daemon=True,
    )
    background.start()
    # The statement lists the app's own routes: built on the first request, when `app` exists.
    conformance = conformance_renderer(settings, lambda: http_routes_of(app.routes))

    def processes() -> dict[str, int]:
        found = {"http": os.getpid(), "background": background.pid or 0}
        found.update({f"dimse-{i}": p.pid for i, p in enumerate(workers.processes) if p is not None})
        return found

    app = create_app(
        archive,
        settings,
        dimse_alive=workers.alive,
        conformance=conformance,
        processes=processes,
        plugin_host=plugin_host(settings),
    )
    try:
        hl7 = start_hl7_listener(settings, archive)
    except OSError as exc:
        background.terminate()
        workers.stop()
        archive.close()
        where = f"{settings.host}:{settings.hl7_port}"
        raise DicomhubError(f"cannot listen on {where} for HL7: {exc.strerror}") from exc
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        log_level="warning",
        # Our access log (dicomhub.web.observe) has the request id and the principal;
        # log_config None: uvicorn's loggers go through our handler and format.
        access_log=False,
        log_config=None,
        lifespan="off",
        # Deadlines for a slow request head or body (uvicorn has none of its own).
        http=http_protocol(
            settings.http_header_timeout, settings.http_body_timeout, settings.http_body_min_rate
        ),
        # HTTPS: the same context as DICOM TLS (TLS 1.2+, BCP 195 ciphers, client certificates).
        ssl_context_factory=(lambda _cfg, _default: tls_server_context(settings)) if settings.https else None,
    )

    class _Server(uvicorn.Server):
        # uvicorn stops quietly on a signal; an operator (and a benchmark that
        # sees the process gone) must be able to tell who ended it.
        def handle_exit(self, sig: int, frame: object) -> None:
            _LOGGER.warning("signal %s received: shutting down", signal.Signals(sig).name)
            super().handle_exit(sig, frame)  # type: ignore[arg-type]
            # uvicorn raises the signal again once it has stopped, which killed this
            # process before the clean-up below (audit backlog, workers, syslog feed,
            # metrics directory) could run: let run() return instead.
            self._captured_signals.clear()

    # A crash in native code (a codec, the SQLite driver) leaves Python stacks in the log.
    faulthandler.enable()
    server = _Server(config)
    dimse_port = "-" if tls_only else listener.getsockname()[1]
    tls_port = f", DICOM TLS on port {settings.dimse_tls_port}" if settings.dimse_tls_port else ""
    scheme = "https" if settings.https else "http"
    banner = (
        f"dicomhub {__version__}: AE title {settings.aet}, DIMSE on {settings.host}:{dimse_port}{tls_port}"
        f" ({settings.worker_count} workers), HTTP on {scheme}://{settings.host}:{settings.http_port}"
        f" (/healthz), data in {settings.data_dir.resolve()}"
    )
    if settings.log_format == "json":
        _LOGGER.info("%s", banner)  # a JSON log stays all JSON
    else:
        print(banner, flush=True)
    if hl7 is not None:
        print(f"dicomhub: HL7 v2 (MLLP) on {settings.host}:{hl7.port}", flush=True)
    try:
        server.run()
    finally:
        if hl7 is not None:
            hl7.close()
        app.state.audit_backlog.close()
        background.terminate()
        workers.stop()
        background.join(5)
        listener.close()
        if tls_listener is not None:
            tls_listener.close()
        archive.close()
    if not server.started:
        raise DicomhubError(f"cannot serve HTTP on port {settings.http_port}")
