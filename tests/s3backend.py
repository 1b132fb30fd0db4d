"""A local S3-compatible server for the tests: moto's standalone server.

:func:`start_s3_server` starts one ``moto.server`` process on a free
127.0.0.1 port (once per test process; later calls return the same);
:func:`fresh_storage` gives a new bucket as an ``s3://bucket/prefix`` URL with
the environment a dicomhub process needs to reach it; :func:`stop_s3_server`
stops the server (also at exit). moto keeps the objects in its memory, so
nothing is left on disk afterwards.
"""

from __future__ import annotations

import atexit
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass

__all__ = [
    "S3Server",
    "fresh_storage",
    "launch_s3_server",
    "s3_env",
    "start_s3_server",
    "stop_s3_server",
]

HOST = "127.0.0.1"
# moto accepts any credentials; these only have to be present and consistent.
ACCESS_KEY = "dicomhub-test"
SECRET_KEY = "dicomhub-test-secret"
REGION = "us-east-1"


@dataclass
class S3Server:
    """One running moto server."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: str

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        try:
            os.unlink(self.log_path)
        except OSError:
            pass


_lock = threading.Lock()
_server: S3Server | None = None
_names = itertools.count(1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_s3_server(timeout: float = 30.0) -> S3Server:
    """The S3 server of this test process, started on first call."""
    global _server
    with _lock:
        if _server is not None and _server.process.poll() is None:
            return _server
        server = launch_s3_server(timeout)
        if _server is None:
            atexit.register(stop_s3_server)
        _server = server
        return server


def launch_s3_server(timeout: float = 30.0) -> S3Server:
    """A new moto server of the caller's own (which stops it), e.g. to take it away mid-test."""
    port = _free_port()
    fd, log_path = tempfile.mkstemp(prefix="dicomhub-moto-", suffix=".log")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        stdout=fd,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **s3_env_for(port)},
    )
    os.close(fd)
    server = S3Server(process, port, log_path)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            with open(log_path, encoding="utf-8", errors="replace") as fh:
                raise RuntimeError(f"moto server exited at start:\n{fh.read()[-2000:]}")
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return server
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError("moto server did not start listening in time") from None
            time.sleep(0.1)


def stop_s3_server() -> None:
    """Stop the server if this process started it."""
    global _server
    with _lock:
        server, _server = _server, None
    if server is not None:
        server.stop()


def s3_env_for(port: int) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": f"http://{HOST}:{port}",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        # No ~/.aws of the machine running the tests may leak in.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def s3_env() -> dict[str, str]:
    """The AWS variables that point a process at the test server (started if needed)."""
    return s3_env_for(start_s3_server().port)


def fresh_storage(name: str = "blobs", server: S3Server | None = None) -> tuple[str, dict[str, str]]:
    """A new empty bucket: its ``s3://bucket/prefix`` URL and the env a server process needs.

    ``name`` becomes part of the prefix (for reading logs); the bucket name
    is unique in the server (the shared one unless ``server`` is given).
    """
    import boto3

    env = s3_env_for(server.port) if server is not None else s3_env()
    bucket = f"dicomhub-{next(_names)}-{uuid.uuid4().hex[:12]}"
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    client.create_bucket(Bucket=bucket)
    prefix = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40] or "blobs"
    return f"s3://{bucket}/{prefix}", env
