"""The operating-system printer command: what it is given and how its failures read.

The commands are small Python programs standing in for ``lp`` (no CUPS here).
"""

from __future__ import annotations

import sys
from pathlib import Path

from dicomhub.services.osprinter import OsPrinter


def test_the_pdf_goes_to_standard_input_and_arguments_are_not_a_shell(tmp_path: Path) -> None:
    out = tmp_path / "got.pdf"
    program = (
        "import sys, pathlib; p = pathlib.Path(sys.argv[1]); p.write_bytes(sys.stdin.buffer.read()); "
        "p.with_suffix('.arg').write_text(sys.argv[2])"
    )
    # A shell would expand $HOME and split at `;`: the argument arrives as it is.
    printer = OsPrinter([sys.executable, "-c", program, str(out), "$HOME; touch pwned"])
    assert printer.print_pdf(b"%PDF-1.4 film") is None
    assert out.read_bytes() == b"%PDF-1.4 film"
    assert out.with_suffix(".arg").read_text() == "$HOME; touch pwned"


def test_failures_keep_the_reason() -> None:
    failing = OsPrinter([sys.executable, "-c", "import sys; sys.stderr.write('no such queue'); sys.exit(3)"])
    assert failing.print_pdf(b"x") == f"{sys.executable} exited with 3: no such queue"
    missing = OsPrinter(["/nonexistent/lp"]).print_pdf(b"x")
    assert missing is not None and missing.startswith("/nonexistent/lp could not be run")
    slow = OsPrinter([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.2).print_pdf(b"x")
    assert slow == f"{sys.executable} did not finish within 0.2 s"
