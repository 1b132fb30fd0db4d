"""``GET /metrics``: Prometheus text exposition of every server process.

Counters and histograms are counted where things happen (the DIMSE workers,
the HTTP process, the background process) through prometheus_client's
multiprocess mode (:mod:`dicomhub.telemetry.metrics`) and summed here at
scrape time; they start at zero when the server starts and never go down
while it runs (the association log, which the counters used to be summed
from, is pruned after 30 days). The archive's gauges (objects held, decode
failures, Storage Commitment states, background queues) are read from the
index at scrape time, and the processes' CPU, memory and file descriptors
from ``/proc``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from starlette.requests import Request
from starlette.responses import Response

from dicomhub import __version__
from dicomhub.services.archive import Archive
from dicomhub.telemetry.metrics import ProcessTable, scrape_registry

__all__ = ["MetricsEndpoint", "metrics_endpoint"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _ArchiveGauges:
    """Gauges read from the index at scrape time (the same in every process, so read once)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import GaugeMetricFamily

        info = GaugeMetricFamily("dicomhub_info", "Version of this dicomhub.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        objects = GaugeMetricFamily("dicomhub_objects", "Entities held, by level.", labels=["level"])
        for level, n in self.archive.statistics.archive_counts().items():
            objects.add_metric([level], n)
        yield objects
        yield GaugeMetricFamily(
            "dicomhub_decode_failures",
            "Stored objects whose pixel data did not decode.",
            value=self.archive.decode_check.failure_count(),
        )
        commitments = GaugeMetricFamily(
            "dicomhub_storage_commitments", "Storage Commitment transactions by state.", labels=["state"]
        )
        states = self.archive.commitment.count_by_state()
        for state in ("pending", "delivered", "gave-up"):
            commitments.add_metric([state], states.get(state, 0))
        yield commitments
        background = GaugeMetricFamily(
            "dicomhub_background_queue_depth",
            "Work waiting for the background process: instances without header metadata or "
            "data set digest, Storage Commitment reports not delivered yet.",
            labels=["queue"],
        )
        for queue, n in self.archive.statistics.pending_counts().items():
            background.add_metric([queue], n)
        background.add_metric(["commitment-reports"], states.get("pending", 0))
        yield background


class MetricsEndpoint:
    """``GET /metrics`` on ``archive``: call :meth:`render` for the exposition.

    Parameters
    ----------
    archive : Archive
        The archive whose gauges are read at scrape time.
    processes : callable, optional
        ``{role: pid}`` of the server's processes, for ``dicomhub_process_*``.
    """

    def __init__(self, archive: Archive, processes: Callable[[], Mapping[str, int]] | None = None) -> None:
        collectors: list[object] = [_ArchiveGauges(archive)]
        if processes is not None:
            collectors.append(ProcessTable(processes))
        # Built once: the multiprocess collector reads the counters' files at each collect.
        self._registry = scrape_registry(*collectors)

    def render(self) -> bytes:
        """Every process's metrics and the archive's gauges, Prometheus text format 0.0.4."""
        from prometheus_client import generate_latest

        return generate_latest(self._registry)

    def __call__(self, _request: Request) -> Response:
        return Response(self.render(), media_type=CONTENT_TYPE)


def metrics_endpoint(
    archive: Archive, processes: Callable[[], Mapping[str, int]] | None = None
) -> Callable[[Request], Response]:
    """The ``/metrics`` endpoint (see :class:`MetricsEndpoint`)."""
    # A bound method, so that Starlette runs it as a request handler in its thread pool.
    return MetricsEndpoint(archive, processes).__call__
