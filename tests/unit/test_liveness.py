"""process_alive: running, gone and zombie processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from dicomhub.services.liveness import process_alive


def test_a_running_process_is_alive() -> None:
    assert process_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert process_alive(child.pid)
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="zombies are told apart through /proc (Linux)")
def test_an_unreaped_dead_process_is_not_alive_and_a_reaped_one_neither() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    # Not waited for: once it has exited it stays a zombie, which kill(pid, 0) still finds.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{child.pid}/stat", "rb") as fh:
            if fh.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                break
        time.sleep(0.02)
    else:
        raise AssertionError("the child did not exit")
    os.kill(child.pid, 0)  # the premise: the zombie is still found by kill()
    assert not process_alive(child.pid)
    child.wait()
    assert not process_alive(child.pid)
