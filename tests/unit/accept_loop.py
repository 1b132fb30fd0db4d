"""An in-process listener for the fast-path tests: accept on 127.0.0.1, one thread per
connection, each calling the subclass's :meth:`AcceptLoop.serve`; errors are kept to
assert on."""

from __future__ import annotations

import socket
import threading
import time


class AcceptLoop:
    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.05)
        self.port: int = self.server.getsockname()[1]
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept_thread.start()

    def serve(self, sock: socket.socket, address: tuple[str, int]) -> None:
        raise NotImplementedError

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, address = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock, address), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, address: tuple[str, int]) -> None:
        try:
            self.serve(sock, address)
        except BaseException as exc:  # noqa: BLE001 - recorded and asserted on
            self.errors.append(exc)

    def wait_idle(self, timeout: float = 15.0) -> None:
        """Wait until every association served so far has ended."""
        deadline = time.monotonic() + timeout
        for thread in list(self.threads):
            thread.join(max(0.0, deadline - time.monotonic()))
            assert not thread.is_alive(), "serve_association did not return"

    def close(self) -> None:
        self._stop.set()
        self._accept_thread.join(5)
        self.server.close()
        self.wait_idle()
