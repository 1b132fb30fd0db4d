"""The DIMSE listener: worker processes, routing, and the pynetdicom AE.

One Python process uses one core, so ``dicomhub serve`` runs the DIMSE side
in several worker processes that share one listening socket. Each worker
accepts connections (deferring to a less busy sibling, so that parallel
associations spread over the cores), runs one thread per association, and
routes each association by what it proposes:

* only Storage and/or Verification -> :mod:`dicomhub.dimse.fastpath`, a
  blocking, low-latency receive path;
* anything else (Query/Retrieve, mixed) -> pynetdicom, whose service classes
  implement C-FIND/C-GET/C-MOVE with pending responses and C-CANCEL.

The request is peeked, not read, so either stack reads it itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Sequence
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.transport import AssociationServer, AssociationSocket, RequestHandler

from dicomhub.bootstrap import Archive, configure_logging, open_archive
from dicomhub.config import Settings
from dicomhub.dimse import fastpath
from dicomhub.dimse.contexts import (
    QUERY_RETRIEVE_FIND,
    QUERY_RETRIEVE_GET,
    QUERY_RETRIEVE_MOVE,
    STORAGE_SOP_CLASSES,
    STORAGE_TRANSFER_SYNTAXES,
    UNCOMPRESSED_TRANSFER_SYNTAXES,
    VERIFICATION,
)
from dicomhub.dimse.handlers import event_handlers, store_received
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

__all__ = ["DimseWorkers", "bind_listener", "configure_pynetdicom"]

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


def configure_pynetdicom() -> None:
    """Set pynetdicom's globals once per process.

    pynetdicom never sets TCP_NODELAY, so every small PDU it sends (a C-STORE
    sub-operation's command, a C-FIND response) waits for Nagle's timer on
    the outbound associations it opens for C-MOVE. Patch its socket factory.
    """
    original = AssociationSocket._create_socket
    if getattr(original, "_dicomhub", False):
        return

    def _create_socket(self: AssociationSocket, address: Any) -> socket.socket:
        sock = original(self, address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    _create_socket._dicomhub = True  # type: ignore[attr-defined]
    AssociationSocket._create_socket = _create_socket  # type: ignore[method-assign]


class _RoutedServer(AssociationServer):
    """An AssociationServer that never listens: connections are handed to it."""

    def server_bind(self) -> None:  # the workers own the real listening socket
        pass

    def server_activate(self) -> None:
        pass


class _JoiningRequestHandler(RequestHandler):
    """Runs a pynetdicom association on the routing thread until it ends."""

    def handle(self) -> None:
        assoc = self._create_association()
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        assoc.join()


def _build_ae(archive: Archive) -> tuple[AE, _RoutedServer]:
    s = archive.settings
    ae = AE(ae_title=s.aet)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.maximum_associations = s.max_associations
    ae.maximum_pdu_size = s.maximum_pdu_size
    ae.acse_timeout = s.acse_timeout
    ae.dimse_timeout = s.dimse_timeout
    ae.network_timeout = s.network_timeout
    ae.connection_timeout = s.acse_timeout
    ae.require_called_aet = False
    if s.known_aes_only:
        ae.require_calling_aet = [r.ae_title for r in s.remote_aes]
    ae.add_supported_context(VERIFICATION, list(UNCOMPRESSED_TRANSFER_SYNTAXES[:2]))
    for sop_class in (*QUERY_RETRIEVE_FIND, *QUERY_RETRIEVE_MOVE, *QUERY_RETRIEVE_GET):
        ae.add_supported_context(sop_class, list(UNCOMPRESSED_TRANSFER_SYNTAXES))
    for sop_class in STORAGE_SOP_CLASSES:
        # SCP role for C-STORE, and SCU role accepted for C-GET's sub-operations.
        ae.add_supported_context(
            sop_class, list(STORAGE_TRANSFER_SYNTAXES), scu_role=True, scp_role=True
        )
    server = _RoutedServer(
        ae,
        (s.host, s.dimse_port),
        s.aet,
        ae.supported_contexts,
        evt_handlers=event_handlers(archive),
        request_handler=_JoiningRequestHandler,
    )
    if server.socket is not None:
        server.socket.close()
    return ae, server


class _Worker:
    """One DIMSE worker process: accept loop plus a thread per association."""

    def __init__(
        self, archive: Archive, listener: socket.socket, index: int, load: SynchronizedArray[int]
    ) -> None:
        self.archive = archive
        self.settings = archive.settings
        self.listener = listener
        self.index = index
        self.load = load
        self.stop = threading.Event()
        self.ae, self.pyn_server = _build_ae(archive)
        self.fast_config = fastpath.FastPathConfig(
            ae_title=self.settings.aet,
            storage_contexts={sop: STORAGE_TRANSFER_SYNTAXES for sop in STORAGE_SOP_CLASSES},
            verification=True,
            maximum_pdu_size=self.settings.maximum_pdu_size,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            acse_timeout=self.settings.acse_timeout,
            dimse_timeout=self.settings.dimse_timeout,
            network_timeout=self.settings.network_timeout,
        )
        self._known = {r.ae_title for r in self.settings.remote_aes}

    def _busier_than_a_sibling(self) -> bool:
        loads = list(self.load)
        return loads[self.index] > min(loads)

    def serve_forever(self) -> None:
        while not self.stop.is_set():
            try:
                ready, _, _ = select.select([self.listener], [], [], 0.5)
            except (OSError, ValueError):
                break
            if not ready:
                continue
            if self._busier_than_a_sibling():
                # Leave the connection to an idler worker for a moment.
                time.sleep(_DEFER_SECONDS)
            try:
                conn, address = self.listener.accept()
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
                args=(conn, address),
                name=f"assoc-{address[0]}:{address[1]}",
                daemon=True,
            ).start()

    def _serve_connection(self, conn: socket.socket, address: tuple[str, int]) -> None:
        try:
            conn.setblocking(True)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rq = fastpath.peek_associate_request(conn, self.settings.acse_timeout)
            if rq is None:
                LOGGER.warning("connection from %s:%s sent no association request", *address[:2])
                conn.close()
                return
            if fastpath.is_fast_path_request(rq, self.fast_config):
                fastpath.serve_association(
                    conn,
                    address,
                    self.fast_config,
                    self._on_store,
                    accept_association=self._accept_association,
                )
            else:
                conn.settimeout(None)
                self.pyn_server.process_request(conn, address)
        except Exception:
            LOGGER.exception("association from %s:%s failed", *address[:2])
            try:
                conn.close()
            except OSError:
                pass
        finally:
            with self.load.get_lock():
                self.load[self.index] -= 1

    def _accept_association(self, info: fastpath.AssociationInfo) -> str | None:
        if self.settings.known_aes_only and info.calling_ae_title not in self._known:
            return f"calling AE title {info.calling_ae_title!r} is not a known AE"
        if sum(self.load) > self.settings.max_associations:
            return "too many concurrent associations"
        return None

    def _on_store(self, req: fastpath.StoreRequest) -> fastpath.StoreOutcome:
        caller = Caller(Channel.DIMSE, req.calling_ae_title, req.peer_host)
        code, comment = store_received(
            self.archive,
            req.dataset,
            req.transfer_syntax_uid,
            req.sop_class_uid,
            req.sop_instance_uid,
            caller,
        )
        return fastpath.StoreOutcome(code, comment)


def _die_with_parent() -> None:
    """End this worker when the server process ends, even by ``kill -9``.

    An orphaned worker would keep accepting on the shared socket with no
    supervisor, and a restarted server could not take the port back.
    """
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    if os.getppid() != parent:
        os._exit(0)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker_main(
    settings: Settings, listener: socket.socket, index: int, load: SynchronizedArray[int]
) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    configure_logging(settings.log_level)
    configure_pynetdicom()
    archive = open_archive(settings, upgrade=False)
    worker = _Worker(archive, listener, index, load)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    LOGGER.debug("DIMSE worker %d (pid %d) ready", index, os.getpid())
    try:
        worker.serve_forever()
    finally:
        archive.close()


class DimseWorkers:
    """Starts, watches and stops the DIMSE worker processes."""

    def __init__(self, settings: Settings, listener: socket.socket) -> None:
        self.settings = settings
        self.listener = listener
        self._ctx = multiprocessing.get_context("spawn")
        self.load = self._ctx.Array("i", settings.worker_count)
        self.processes: list[Any] = [None] * settings.worker_count
        self._stopping = threading.Event()

    def _spawn(self, index: int) -> None:
        proc = self._ctx.Process(
            target=_worker_main,
            args=(self.settings, self.listener, index, self.load),
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
