"""Hand a print job's PDF to an operating-system printer (CUPS ``lp`` or any command).

The command is an argument vector run without a shell, so nothing a modality
sends (a film session label, an AE title) can become part of a command line;
the PDF goes to its standard input, as ``lp`` reads it when given no file.  A
command that exits non-zero, cannot be started or takes longer than
:data:`TIMEOUT` seconds fails the job, with its standard error (or why it did
not run) as the reason kept with the job.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from typing import Final

__all__ = ["TIMEOUT", "OsPrinter"]

LOGGER = logging.getLogger("dicomhub.printing")

#: Seconds a print command may take: spooling a PDF is quick, a hung command must not
#: hold the printing association for ever.
TIMEOUT: Final = 60.0

# What is kept of a failing command's standard error (the end says most).
_MAXIMUM_REASON: Final = 1000


class OsPrinter:
    """Runs `command` with a PDF on its standard input.

    Parameters
    ----------
    command : sequence of str
        The program and its arguments, e.g. ``("lp", "-d", "film")``.
    """

    def __init__(self, command: Sequence[str], timeout: float = TIMEOUT) -> None:
        if not command:
            raise ValueError("an operating-system printer needs a command")
        self.command = tuple(command)
        self.timeout = timeout

    def print_pdf(self, pdf: bytes) -> str | None:
        """Print `pdf`; None when the command took it, else why it failed."""
        try:
            done = subprocess.run(  # noqa: S603 - an argument vector from the settings, no shell
                self.command,
                input=pdf,
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"{self.command[0]} did not finish within {self.timeout:g} s"
        except OSError as exc:
            return f"{self.command[0]} could not be run: {exc.strerror or exc}"
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", "replace").strip()[-_MAXIMUM_REASON:]
            return f"{self.command[0]} exited with {done.returncode}: {message or '(no message)'}"
        LOGGER.debug("%s took the job: %s", self.command[0], done.stdout.decode("utf-8", "replace").strip())
        return None
