"""A real Orthanc for the tests: the benchmarks' launcher (benchmarks/_common.py), reused.

Orthanc and its DICOMweb plugin are the Debian packages ``orthanc`` and
``orthanc-dicomweb`` (scripts/install-test-deps.sh installs them).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

_BENCHMARKS = str(Path(__file__).resolve().parents[2] / "benchmarks")
if _BENCHMARKS not in sys.path:
    sys.path.insert(0, _BENCHMARKS)

from _common import OrthancServer  # noqa: E402

from .helpers import HOST, run_dcmtk  # noqa: E402

__all__ = ["OrthancServer", "orthanc", "orthanc_store"]


@contextmanager
def orthanc(
    workdir: Path,
    *,
    aet: str = "ORTHANC",
    modalities: Mapping[str, tuple[str, int]] | None = None,
    config: Mapping[str, Any] | None = None,
) -> Iterator[OrthancServer]:
    """Orthanc with the DICOMweb plugin on free localhost ports, stopped at the end.

    ``modalities``: AE title -> (host, port) of the C-MOVE destinations it knows.
    """
    known = {name: [name, host, port] for name, (host, port) in (modalities or {}).items()}
    server = OrthancServer(
        key="test",
        label="Orthanc",
        aet=aet,
        managed=True,
        workdir=workdir,
        dicomweb=True,
        extra_config={"DicomModalities": known, "Name": "dicomhub-test", **(config or {})},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def orthanc_store(server: OrthancServer, folder: Path) -> None:
    """storescu every file of ``folder`` into Orthanc (one association)."""
    rc, out = run_dcmtk(
        "storescu", "+sd", "+r", "-aec", server.aet, HOST, str(server.port), folder, timeout=300
    )
    assert rc == 0, f"storescu into Orthanc failed:\n{out}"


def orthanc_rest(server: OrthancServer, method: str, path: str, **kwargs: Any) -> Any:
    r = httpx.request(method, f"http://{HOST}:{server.http_port}{path}", timeout=60, **kwargs)
    r.raise_for_status()
    return r.json() if r.content else None
