"""Shared plumbing of the fuzz targets in this folder.

Each ``fuzz_<name>.py`` defines ``test_one_input(data: bytes)`` and calls
:func:`main` when run as a script, so that atheris (libFuzzer underneath)
drives it: ``python fuzz/fuzz_pdu.py -max_total_time=60 corpus/pdu``.
The properties are checked inside ``test_one_input``: an exception that is
not one of the target's documented errors, a broken invariant
(``PropertyViolation``) or a memory peak past :class:`MemoryBound` is a
crash; a hang is caught by libFuzzer's ``-timeout=``.
"""

from __future__ import annotations

import sys
import tracemalloc
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Final

__all__ = ["SLACK", "MemoryBound", "PropertyViolation", "main"]

# The least constant part of a memory bound (see MemoryBound).
SLACK: Final = 16 << 20

# Default libFuzzer options unless the command line gives its own: a slow
# input is a hang past 10 s, and the whole process must stay under 2 GB.
_DEFAULTS: Final = ("-timeout=10", "-rss_limit_mb=2048")


class PropertyViolation(AssertionError):
    """A target's property does not hold for the input (a crash for libFuzzer)."""


class MemoryBound:
    """Check that Python allocations while the block runs stay within a bound.

    The bound is ``fixed + per_byte * input_size``: a parser may keep a few
    copies of its input plus a constant, never what a length field in the
    input announces (up to 4 GB). ``fixed`` is at least :data:`SLACK`: the
    first input to reach some code pays for lazy imports, caches and
    atheris's own bookkeeping (a 30-byte QIDO query once measured 1.9 MB that
    did not recur), so the constant is kept well above that and far below
    what a trusted length field allocates. Measured with :mod:`tracemalloc` (started by
    :func:`main`; without it the check is skipped, e.g. under pytest), which
    sees every ``bytes``/``bytearray`` buffer, unlike the process RSS that a
    lazily zeroed ``bytearray(n)`` hardly moves.
    """

    def __init__(self, input_size: int, *, per_byte: int, fixed: int) -> None:
        self.limit = max(fixed, SLACK) + per_byte * input_size
        self._base = 0

    def __enter__(self) -> MemoryBound:
        if tracemalloc.is_tracing():
            tracemalloc.reset_peak()
            self._base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not tracemalloc.is_tracing():
            return
        grown = tracemalloc.get_traced_memory()[1] - self._base
        if grown > self.limit:
            raise PropertyViolation(f"allocated {grown} bytes, bound {self.limit}")


def main(test_one_input: Callable[[bytes], None]) -> None:
    """Run ``test_one_input`` under atheris with this folder's default options."""
    import atheris  # only the fuzzing run needs it, not an import by a test

    argv = list(sys.argv)
    for option in _DEFAULTS:
        if not any(arg.startswith(option.split("=")[0] + "=") for arg in argv):
            argv.insert(1, option)
    # pydicom and pynetdicom warn about every oddity of a fuzzed input; the
    # properties are what matters, and the noise would hide libFuzzer's output.
    warnings.simplefilter("ignore")
    tracemalloc.start()
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
