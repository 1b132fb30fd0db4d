"""``GET /metrics``: Prometheus text exposition (format 0.0.4) of the DIMSE statistics
and the archive's gauges. Counters come from the association log, so they add
up across the DIMSE worker processes and survive restarts (30 days kept)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from dicomhub import __version__
from dicomhub.services.archive import Archive

__all__ = ["metrics_endpoint"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: object) -> str:
    # AE titles come from the wire: escape what the text format gives meaning to.
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def _labels(**labels: object) -> str:
    return "{" + ",".join(f"{k}={_label(v)}" for k, v in labels.items()) + "}"


def render_metrics(archive: Archive) -> str:
    totals = archive.statistics.totals()
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    family("dicomhub_info", "gauge", "Version of this dicomhub.")
    lines.append(f"dicomhub_info{_labels(version=__version__)} 1")
    family("dicomhub_associations_total", "counter", "DIMSE associations by calling AE title and outcome.")
    for row in totals["associations"]:
        labels = _labels(calling_ae=row["calling_ae_title"], outcome=row["outcome"])
        lines.append(f"dicomhub_associations_total{labels} {row['associations']}")
    family(
        "dicomhub_presentation_contexts_rejected_total",
        "counter",
        "Proposed presentation contexts refused, by calling AE title.",
    )
    rejected: Counter[str] = Counter()
    received: Counter[str] = Counter()
    for row in totals["associations"]:
        rejected[row["calling_ae_title"]] += row["rejected_contexts"]
        received[row["calling_ae_title"]] += row["bytes_received"]
    for ae, n in sorted(rejected.items()):
        lines.append(f"dicomhub_presentation_contexts_rejected_total{_labels(calling_ae=ae)} {n}")
    family("dicomhub_dimse_received_bytes_total", "counter", "Bytes received on DIMSE associations.")
    for ae, n in sorted(received.items()):
        lines.append(f"dicomhub_dimse_received_bytes_total{_labels(calling_ae=ae)} {n}")
    family(
        "dicomhub_dimse_operations_total",
        "counter",
        "DIMSE operations served, by calling AE title, operation and status class.",
    )
    for row in totals["operations"]:
        labels = _labels(calling_ae=row["calling_ae_title"], operation=row["operation"], status=row["status"])
        lines.append(f"dicomhub_dimse_operations_total{labels} {row['count']}")
    family("dicomhub_objects", "gauge", "Entities held, by level.")
    for level, n in archive.statistics.archive_counts().items():
        lines.append(f"dicomhub_objects{_labels(level=level)} {n}")
    family("dicomhub_decode_failures", "gauge", "Stored objects whose pixel data did not decode.")
    lines.append(f"dicomhub_decode_failures {archive.decode_check.failure_count()}")
    family("dicomhub_storage_commitments", "gauge", "Storage Commitment transactions by state.")
    states = archive.commitment.count_by_state()
    for state in ("pending", "delivered", "gave-up"):
        lines.append(f"dicomhub_storage_commitments{_labels(state=state)} {states.get(state, 0)}")
    return "\n".join(lines) + "\n"


def metrics_endpoint(archive: Archive) -> Callable[[Request], Response]:
    def metrics(_request: Request) -> Response:
        return Response(render_metrics(archive), media_type=CONTENT_TYPE)

    return metrics
