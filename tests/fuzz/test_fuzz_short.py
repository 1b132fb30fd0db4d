"""A short run of every fuzz target in ``fuzz/`` (about a minute in all).

Each target runs in its own process under atheris for a few seconds,
starting from the seeds ``fuzz/make_seeds.py`` writes (captured PDUs, real
files and multipart bodies); a crash (an undocumented exception, a broken
property, a hang past ``-timeout`` or memory past ``-rss_limit_mb``) fails
the test with libFuzzer's report. Long runs and their results are in
``fuzz/README.md``; every crash they found is a test in
``tests/unit/test_fuzz_regressions.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ_DIR = Path(__file__).resolve().parents[2] / "fuzz"
TARGETS = ("association", "pdu", "part10", "multipart", "accept", "qido", "config", "hl7", "fhir")
# Seconds of fuzzing per target: 9 targets x 6 s, about a minute.
SECONDS = 6

pytestmark = pytest.mark.backend_neutral


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed corpora, made once for the module."""
    out = tmp_path_factory.mktemp("seeds")
    subprocess.run(
        [sys.executable, str(FUZZ_DIR / "make_seeds.py"), str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_short_run(target: str, seeds: Path, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    # libFuzzer adds what it finds to the first corpus folder: a copy, so
    # that every run starts from the same seeds.
    shutil.copytree(seeds / target, corpus)
    command = [
        sys.executable,
        str(FUZZ_DIR / f"fuzz_{target}.py"),
        f"-max_total_time={SECONDS}",
        "-timeout=10",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
    ]
    # libFuzzer's -rss_limit_mb reads the peak RSS of getrusage(), which Linux carries
    # over an exec from the process that forked: a fuzzer forked straight from this
    # pytest process (a few GB after the unit tests) would start "out of memory". A
    # small launcher forks it instead, so the limit measures the fuzzer alone.
    launcher = [sys.executable, "-c", "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"]
    with subprocess.Popen(
        [*launcher, *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=SECONDS + 120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    result = subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
    if result.returncode != 0:
        crashes = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
        pytest.fail(f"fuzz_{target} failed ({crashes}):\n{result.stderr[-6000:]}")
    assert "Done" in result.stderr
