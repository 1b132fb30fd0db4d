"""Fuzz target: the TOML configuration file (``dicomhub.config.load_settings``).

The input is written to a file that ``load_settings`` reads as
``--config``, with no ``DICOMHUB_*`` variables.

Property: the only error is :class:`dicomhub.errors.ConfigurationError`
("for an unreadable file, an unknown key or an invalid value"), never a
``TypeError`` or ``ValueError`` from a value of the wrong TOML type; the
settings it returns are a :class:`~dicomhub.config.Settings`.
"""

from __future__ import annotations

import os
import tempfile

import atheris

with atheris.instrument_imports(include=["dicomhub"]):
    from dicomhub.config import Settings, load_settings
    from dicomhub.errors import ConfigurationError

from fuzzing import MemoryBound, PropertyViolation, main

# The input file has no name (O_TMPFILE) and is read through /proc/self/fd: libFuzzer
# ends the process with exit(), which runs no Python clean-up, so a named file would
# be left in the temporary folder after every run.
_INPUT = tempfile.TemporaryFile(prefix="dicomhub-fuzz-", suffix=".toml")
_PATH = f"/proc/self/fd/{_INPUT.fileno()}"


def test_one_input(data: bytes) -> None:
    """Load ``data`` as the configuration file."""
    os.ftruncate(_INPUT.fileno(), 0)
    os.pwrite(_INPUT.fileno(), data, 0)
    with MemoryBound(len(data), per_byte=256, fixed=4 << 20):
        try:
            settings = load_settings(config_file=_PATH, environ={})
        except ConfigurationError:
            return
    if not isinstance(settings, Settings):
        raise PropertyViolation("load_settings returned something else than Settings")


if __name__ == "__main__":
    main(test_one_input)
