"""The DIMSE listener: worker processes sharing one socket, a thread per association.

One Python process uses one core, so ``dicomhub serve`` runs the DIMSE side
in several worker processes that share one listening socket. Each worker
accepts connections (deferring to a less busy sibling, so that parallel
associations spread over the cores) and runs each association on its own
thread with :func:`dicomhub.dimse.association.serve_association`: the
providers of Verification, Storage, Query/Retrieve (FIND, GET, MOVE),
Modality Worklist, Storage Commitment and MPPS on a blocking socket, built on
pynetdicom's PDU classes and negotiation. (pynetdicom's own reactor polls its socket with 1 ms
sleeps, which capped a store at a few hundred instances per second.)
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import select
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any

from dicomhub.config import Settings
from dicomhub.config.checks import tls_server_context
from dicomhub.dimse import association
from dicomhub.dimse.contexts import (
    STORAGE_SOP_CLASSES,
    STORAGE_TRANSFER_SYNTAXES,
)
from dicomhub.dimse.handlers import handle_find, handle_n_action, handle_retrieve, handle_store
from dicomhub.dimse.requests import AssociationConfig, AssociationInfo, Rejection
from dicomhub.dimse.session import AssociationSession
from dicomhub.dimse.stats import AssociationRecorder
from dicomhub.dimse.worklist import handle_worklist_find
from dicomhub.model.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomhub.model.peer import Role
from dicomhub.services.archive import Archive
from dicomhub.services.audit_writer import AuditWriter
from dicomhub.services.liveness import process_alive
from dicomhub.telemetry import context as log_context
from dicomhub.telemetry.metrics import mark_process_dead

__all__ = ["DimseWorkers", "bind_listener", "association_config"]

LOGGER = logging.getLogger("dicomhub.dimse")

# How long a worker lets a less loaded sibling take a pending connection.
_DEFER_SECONDS = 0.002


def bind_listener(host: str, port: int) -> socket.socket:
    """Create the listening socket shared by every worker."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def association_config(settings: Settings) -> AssociationConfig:
    """The association loop's configuration for ``settings``: what every worker negotiates.

    The conformance statement (:mod:`dicomhub.conformance`) is generated from
    this same value, so it describes exactly what the server accepts.
    """
    return AssociationConfig(
        ae_title=settings.aet,
        # The standard's storage classes and the private ones configured; with
        # accept_unknown_sop_classes any unregistered class proposed is accepted too.
        storage_contexts={
            sop: STORAGE_TRANSFER_SYNTAXES
            for sop in (*STORAGE_SOP_CLASSES, *sorted(settings.accept_sop_classes))
        },
        accept_unknown_storage=settings.accept_unknown_sop_classes,
        verification=True,
        query_retrieve=True,
        storage_commitment=True,
        modality_performed_procedure_step=True,
        modality_worklist=True,
        print_management=True,
        maximum_pdu_size=settings.maximum_pdu_size,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        acse_timeout=settings.acse_timeout,
        dimse_timeout=settings.dimse_timeout,
        network_timeout=settings.network_timeout,
        # Large data sets are spooled beside the blobs, on the same file system.
        spool_dir=str(settings.spool_dir),
    )


class _Worker:
    """One DIMSE worker process: accept loop plus a thread per association."""

    def __init__(
        self,
        archive: Archive,
        settings: Settings,
        listener: socket.socket,
        index: int,
        load: SynchronizedArray[int],
        tls_listener: socket.socket | None = None,
    ) -> None:
        self.archive = archive
        self.settings = settings
        self.listener = listener
        self.index = index
        self.load = load
        self.stop = threading.Event()
        # SIGTERM writes to this pipe, so the accept loop's select returns at once
        # instead of at its next timeout (a signal alone only interrupts it to be retried).
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.association_config = association_config(settings)
        self.recorder = AssociationRecorder(archive.statistics.record)
        # QUERY audit events are committed in batches behind the final C-FIND-RSP.
        self.audit_writer = AuditWriter(archive.audit)
        # The DICOM TLS port's listener, and the context its connections are wrapped in.
        self.tls_listener = tls_listener
        self.tls_context = tls_server_context(settings) if tls_listener is not None else None
        # Without a plain port the TLS listener is passed as both.
        self.listeners = list(dict.fromkeys(s for s in (listener, tls_listener) if s is not None))
        self._watched: list[socket.socket | int] = [*self.listeners, self._wake_r]

    def _busier_than_a_sibling(self) -> bool:
        loads = [int(n) for n in self.load[:]]
        return loads[self.index] > min(loads)

    def request_stop(self) -> None:
        """Stop the accept loop now (safe in a signal handler)."""
        self.stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def serve_forever(self) -> None:
        while not self.stop.is_set():
            try:
                readable, _, _ = select.select(self._watched, [], [], 0.5)
            except (OSError, ValueError):
                break
            ready = [s for s in readable if isinstance(s, socket.socket)]
            if not ready:
                continue
            if self._busier_than_a_sibling():
                # Leave the connection to an idler worker for a moment.
                time.sleep(_DEFER_SECONDS)
            listener = ready[0]
            try:
                conn, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue  # a sibling took it
            except OSError:
                if self.stop.is_set():
                    break
                LOGGER.exception("accept failed")
                time.sleep(0.05)
                continue
            with self.load.get_lock():
                self.load[self.index] += 1
            threading.Thread(
                target=self._serve_connection,
                args=(conn, address, listener is self.tls_listener),
                name=f"assoc-{address[0]}:{address[1]}",
                daemon=True,
            ).start()

    def _serve_connection(self, conn: socket.socket, address: tuple[str, int], tls: bool = False) -> None:
        session: AssociationSession | None = None
        freed = False

        def free_slot() -> None:
            # Once per association: when it is released (before the A-RELEASE-RP, as
            # the peer may associate again the moment it has it), or when it ends.
            nonlocal freed
            if not freed:
                freed = True
                with self.load.get_lock():
                    self.load[self.index] -= 1

        # Every log line of this association's thread carries its id (a new thread
        # starts with an empty context, so nothing to reset afterwards).
        log_context.association_id.set(log_context.new_id())
        try:
            conn.setblocking(True)
            tls_subject: str | None = None
            if tls:
                wrapped = self._handshake(conn, address)
                if wrapped is None:
                    return
                conn, tls_subject = wrapped, _common_name(wrapped)
            session = AssociationSession(
                self.archive, self.settings, str(address[0]), tls_subject, tls, self.audit_writer
            )
            bound = session

            def on_event(name: str, details: dict[str, object]) -> None:
                if name == "releasing":
                    free_slot()
                else:
                    self.recorder.on_event(name, details)

            association.serve_association(
                conn,
                address,
                self.association_config,
                lambda req: handle_store(self.archive, req, bound),
                accept_association=lambda info: self._accept_association(info, bound, free_slot),
                on_find=lambda req: handle_find(self.archive, self.settings, req, bound),
                on_retrieve=lambda req: handle_retrieve(self.archive, self.settings, req, bound),
                on_n_action=lambda req: handle_n_action(self.archive, req, bound),
                on_worklist_find=lambda req: handle_worklist_find(self.archive, req, bound),
                on_event=on_event,
                mpps=self.archive.mpps,
                mpps_authorize=lambda: bound.require(Role.STORE),
                # Printing adds films to the archive, as sending objects does.
                printing=self.archive.printing,
                print_authorize=lambda: bound.require(Role.STORE),
            )
        except Exception:
            LOGGER.exception("association from %s:%s failed", *address[:2])
            try:
                conn.close()
            except OSError:
                pass
        finally:
            # The slot is free once the association is over: give it back before
            # the bookkeeping (an index write), or a peer that associates again
            # right after its release is refused for an association already gone.
            free_slot()
            if session is not None:
                session.end()

    def _handshake(self, conn: socket.socket, address: tuple[str, int]) -> ssl.SSLSocket | None:
        """The TLS handshake of a DICOM TLS connection; None (logged, audited) when it fails."""
        assert self.tls_context is not None
        try:
            conn.settimeout(self.settings.acse_timeout)
            return self.tls_context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            reason = f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}"
            LOGGER.warning("DICOM TLS connection from %s:%s: %s", address[0], address[1], reason)
            AssociationSession(self.archive, self.settings, str(address[0]), None).handshake_failed(reason)
            try:
                conn.close()
            except OSError:
                pass
            return None

    def _accept_association(
        self, info: AssociationInfo, session: AssociationSession, free_slot: Callable[[], None]
    ) -> str | Rejection | None:
        refusal: str | Rejection | None = None
        if self.settings.known_aes_only and not self.archive.peers.known(info.calling_ae_title):
            refusal = f"calling AE title {info.calling_ae_title!r} is not a known AE"
        elif sum(int(n) for n in self.load[:]) > self.settings.max_associations:
            refusal = Rejection.local_limit_exceeded("too many concurrent associations")
        if refusal is not None:
            # A refused association holds no slot: give it back before the
            # bookkeeping and the A-ASSOCIATE-RJ, or a peer that retries the moment
            # it is refused (once another's association is released) is refused
            # again for a connection that is only closing.
            free_slot()
            session.refused(info, refusal if isinstance(refusal, str) else refusal.reason)
            return refusal
        return session.accept(info)


def _common_name(conn: ssl.SSLSocket) -> str | None:
    """The subject Common Name of the peer's verified certificate, if it sent one."""
    cert = conn.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for attribute in rdn:
            if attribute[0] == "commonName":
                return str(attribute[1])
    return ""


def die_with_parent(parent: int) -> None:
    """End this worker when the server process ``parent`` ends, even by ``kill -9``.

    An orphaned worker would keep accepting on the shared socket with no
    supervisor, and a restarted server could not take the port back. The
    parent's pid comes from the parent itself: the parent may already be gone
    by the time this runs. Workers are forked by the fork server, not by the
    server process itself, so ``os.getppid()`` names the fork server: the
    death signal comes when the fork server ends (it ends with the server
    process), and a thread watches the server process itself.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if not process_alive(parent):
                os._exit(0)

    if not process_alive(parent):
        os._exit(0)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve_worker(
    archive: Archive,
    settings: Settings,
    listener: socket.socket,
    index: int,
    load: SynchronizedArray[int],
    tls_listener: socket.socket | None = None,
) -> None:
    """Serve associations in this worker process until SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    worker = _Worker(archive, settings, listener, index, load, tls_listener)
    signal.signal(signal.SIGTERM, lambda *_: worker.request_stop())
    LOGGER.debug("DIMSE worker %d (pid %d) ready", index, os.getpid())
    worker.recorder.start()
    try:
        worker.serve_forever()
    finally:
        worker.recorder.stop()
        worker.audit_writer.close()


class DimseWorkers:
    """Starts, watches and stops the DIMSE worker processes."""

    def __init__(
        self,
        settings: Settings,
        listener: socket.socket,
        worker_main: Callable[..., None],
        tls_listener: socket.socket | None = None,
        context: ForkServerContext | SpawnContext | None = None,
    ) -> None:
        """``worker_main(settings, listener, index, load, parent_pid, tls_listener)`` runs one
        worker (the composition root provides it: :func:`dicomhub.bootstrap.processes.run_dimse_worker`).
        ``tls_listener``: the DICOM TLS port's socket, shared the same way.
        ``context``: how worker processes start (the composition root gives a fork
        server, see :func:`dicomhub.bootstrap.processes.worker_context`); spawn without it."""
        self.settings = settings
        self.listener = listener
        self.tls_listener = tls_listener
        self._worker_main = worker_main
        self._ctx: ForkServerContext | SpawnContext = context or multiprocessing.get_context("spawn")
        self.load = self._ctx.Array("i", settings.worker_count)
        self.processes: list[Any] = [None] * settings.worker_count
        self._stopping = threading.Event()

    def _spawn(self, index: int) -> None:
        proc = self._ctx.Process(
            target=self._worker_main,
            args=(self.settings, self.listener, index, self.load, os.getpid(), self.tls_listener),
            name=f"dicomhub-dimse-{index}",
            daemon=True,
        )
        proc.start()
        self.processes[index] = proc

    def start(self) -> None:
        for i in range(len(self.processes)):
            self._spawn(i)
        threading.Thread(target=self._watch, name="dimse-supervisor", daemon=True).start()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            for i, proc in enumerate(self.processes):
                if proc is not None and not proc.is_alive() and not self._stopping.is_set():
                    LOGGER.error("DIMSE worker %d exited (code %s); restarting", i, proc.exitcode)
                    # Its live gauges go; its counters stay counted (the files remain).
                    mark_process_dead(proc.pid)
                    with self.load.get_lock():
                        self.load[i] = 0
                    self._spawn(i)

    def alive(self) -> bool:
        return all(p is not None and p.is_alive() for p in self.processes)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        procs: Sequence[Any] = [p for p in self.processes if p is not None]
        for p in procs:
            p.terminate()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1.0)
