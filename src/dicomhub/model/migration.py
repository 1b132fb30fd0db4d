"""Remote archives, inventories and their reconciliation (migration between archives).

An *inventory* is what one archive holds, exact to the SOP Instance: its
studies (with the attributes a migration must keep: PatientID, PatientName,
StudyDate, AccessionNumber, modalities), their series and their instances
(with the SHA-256 of the data set when the archive can give one). Two
inventories are compared study by study by :func:`reconcile`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ATTRIBUTES",
    "HEARTBEAT_SECONDS",
    "ITEM_DONE",
    "ITEM_FAILED",
    "ITEM_PENDING",
    "STALE_SECONDS",
    "Difference",
    "Inventory",
    "InventoryInstance",
    "InventorySeries",
    "InventoryStudy",
    "JobState",
    "ReconcileReport",
    "RemoteArchive",
    "RemoteKind",
    "StudyReport",
    "reconcile",
]


#: Seconds between a job runner's heartbeats, and the age of a heartbeat after which
#: the runner is taken to be gone (its job may be taken over).
HEARTBEAT_SECONDS = 2.0
STALE_SECONDS = 15.0

#: States of one item (a series) of a migration job.
ITEM_PENDING, ITEM_DONE, ITEM_FAILED = "pending", "done", "failed"


class RemoteKind(enum.Enum):
    DIMSE = "dimse"
    DICOMWEB = "dicomweb"
    FOLDER = "folder"


class JobState(enum.Enum):
    PENDING = "pending"  # waiting for a runner (the server's background worker or a CLI)
    RUNNING = "running"
    STOPPING = "stopping"  # asked to stop; the runner stops after the items in flight
    STOPPED = "stopped"  # resumable
    DONE = "done"  # every item transferred and the final reconcile is clean
    FAILED = "failed"  # items failed after their retries, or the final reconcile is not clean

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.STOPPED)


@dataclass(frozen=True, slots=True)
class RemoteArchive:
    """An archive dicomhub migrates from or reconciles with, known by ``name``.

    ``retrieve`` (DIMSE only): ``move`` (C-MOVE to dicomhub's own AE),
    ``get`` (C-GET into this process), or ``auto`` (C-MOVE, then C-GET when
    the peer refuses C-MOVE). ``find_limit``: the largest C-FIND / QIDO-RS
    answer the peer gives (0: unknown); an answer that reaches it is taken as
    truncated and its date window is split.
    """

    name: str
    kind: RemoteKind
    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str = ""
    auth: str = ""
    path: str = ""
    retrieve: str = "auto"
    find_limit: int = 0
    tls: bool = False  # DIMSE only: associate over DICOM TLS

    def describe(self) -> str:
        if self.kind is RemoteKind.DIMSE:
            tls = " over TLS" if self.tls else ""
            return f"DIMSE {self.ae_title}@{self.host}:{self.port}{tls} (retrieve: {self.retrieve})"
        if self.kind is RemoteKind.DICOMWEB:
            return f"DICOMweb {self.url}" + (" (with auth)" if self.auth else "")
        return f"folder {self.path}"

    def public(self) -> dict[str, Any]:
        """As JSON, without the credentials."""
        return {
            "name": self.name,
            "kind": self.kind.value,
            "ae_title": self.ae_title,
            "host": self.host,
            "port": self.port,
            "url": self.url,
            "auth": bool(self.auth),
            "path": self.path,
            "retrieve": self.retrieve,
            "find_limit": self.find_limit,
        }


# The study attributes a migration must keep unchanged (name in the report, field).
ATTRIBUTES: tuple[str, ...] = ("PatientID", "PatientName", "StudyDate", "AccessionNumber", "Modalities")


@dataclass(frozen=True, slots=True)
class InventoryInstance:
    sop_instance_uid: str
    sop_class_uid: str = ""
    content_sha256: str = ""  # of the data set without File Meta; "" when unknown


@dataclass(slots=True)
class InventorySeries:
    series_instance_uid: str
    modality: str = ""
    instances: dict[str, InventoryInstance] = field(default_factory=dict)


@dataclass(slots=True)
class InventoryStudy:
    study_instance_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    accession_number: str = ""
    series: dict[str, InventorySeries] = field(default_factory=dict)

    @property
    def modalities(self) -> str:
        return "\\".join(sorted({s.modality for s in self.series.values() if s.modality}))

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series.values())

    def attributes(self) -> dict[str, str]:
        return {
            "PatientID": self.patient_id,
            "PatientName": self.patient_name,
            "StudyDate": self.study_date,
            "AccessionNumber": self.accession_number,
            "Modalities": self.modalities,
        }


@dataclass(slots=True)
class Inventory:
    """Studies by Study Instance UID."""

    studies: dict[str, InventoryStudy] = field(default_factory=dict)

    def study(self, uid: str) -> InventoryStudy:
        found = self.studies.get(uid)
        if found is None:
            found = self.studies[uid] = InventoryStudy(uid)
        return found

    @property
    def instance_count(self) -> int:
        return sum(s.instance_count for s in self.studies.values())


class Difference(enum.Enum):
    MISSING_IN_TARGET = "missing-in-target"
    MISSING_IN_SOURCE = "missing-in-source"
    SERIES_COUNT = "series-count-differs"
    INSTANCE_COUNT = "instance-count-differs"
    ATTRIBUTES = "attributes-differ"
    CONTENT = "content-differs"


@dataclass(slots=True)
class StudyReport:
    """How one study compares; ``differences`` empty means present in both and the same."""

    study_instance_uid: str
    patient_id: str
    differences: list[Difference] = field(default_factory=list)
    source_series: int = 0
    target_series: int = 0
    source_instances: int = 0
    target_instances: int = 0
    series_only_in_source: list[str] = field(default_factory=list)
    series_only_in_target: list[str] = field(default_factory=list)
    instances_only_in_source: list[str] = field(default_factory=list)
    instances_only_in_target: list[str] = field(default_factory=list)
    attributes: dict[str, tuple[str, str]] = field(default_factory=dict)  # name: (source, target)
    content_differs: list[str] = field(default_factory=list)  # SOP Instance UIDs

    @property
    def clean(self) -> bool:
        return not self.differences

    @property
    def status(self) -> str:
        return ", ".join(d.value for d in self.differences) or "both"

    def as_json(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "patient_id": self.patient_id,
            "status": self.status,
            "differences": [d.value for d in self.differences],
            "source_series": self.source_series,
            "target_series": self.target_series,
            "source_instances": self.source_instances,
            "target_instances": self.target_instances,
            "series_only_in_source": self.series_only_in_source,
            "series_only_in_target": self.series_only_in_target,
            "instances_only_in_source": self.instances_only_in_source,
            "instances_only_in_target": self.instances_only_in_target,
            "attributes": {k: {"source": a, "target": b} for k, (a, b) in self.attributes.items()},
            "content_differs": self.content_differs,
        }


@dataclass(slots=True)
class ReconcileReport:
    source: str
    target: str
    studies: list[StudyReport]

    @property
    def clean(self) -> bool:
        return all(s.clean for s in self.studies)

    def counts(self) -> dict[str, int]:
        out = {"studies": len(self.studies), "both": sum(1 for s in self.studies if s.clean)}
        for d in Difference:
            out[d.value] = sum(1 for s in self.studies if d in s.differences)
        return out

    def problems(self) -> list[StudyReport]:
        return [s for s in self.studies if not s.clean]

    def as_json(self, all_studies: bool = False) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "clean": self.clean,
            "counts": self.counts(),
            "studies": [s.as_json() for s in (self.studies if all_studies else self.problems())],
        }


def _norm(name: str, value: str) -> str:
    # PN: trailing empty components ("DOE^JOHN^^^") are the same name.
    value = value.strip()
    if name == "PatientName":
        value = "=".join(group.rstrip("^") for group in value.split("=")).rstrip("=")
    return value


def reconcile(
    source: Inventory,
    target: Inventory,
    *,
    source_name: str = "source",
    target_name: str = "target",
    only: Iterable[str] | None = None,
    attributes: Mapping[str, bool] | None = None,
) -> ReconcileReport:
    """Compare two inventories study by study, exact to the SOP Instance.

    ``only``: the Study Instance UIDs to compare (a migration's selection);
    default every study of either side. ``attributes``: which of
    :data:`ATTRIBUTES` to compare (default all).
    """
    compare = {name: True for name in ATTRIBUTES}
    compare.update(attributes or {})
    uids = set(only) if only is not None else set(source.studies) | set(target.studies)
    reports = []
    for uid in sorted(uids):
        src, tgt = source.studies.get(uid), target.studies.get(uid)
        if src is None and tgt is None:
            continue
        any_side = src if src is not None else tgt
        assert any_side is not None
        report = StudyReport(uid, any_side.patient_id)
        if src is None or tgt is None:
            present = src if src is not None else tgt
            assert present is not None
            report.differences.append(
                Difference.MISSING_IN_TARGET if tgt is None else Difference.MISSING_IN_SOURCE
            )
            if src is not None:
                report.source_series, report.source_instances = len(src.series), src.instance_count
            if tgt is not None:
                report.target_series, report.target_instances = len(tgt.series), tgt.instance_count
            reports.append(report)
            continue
        report.source_series, report.target_series = len(src.series), len(tgt.series)
        report.source_instances, report.target_instances = src.instance_count, tgt.instance_count
        report.series_only_in_source = sorted(set(src.series) - set(tgt.series))
        report.series_only_in_target = sorted(set(tgt.series) - set(src.series))
        src_instances = {i.sop_instance_uid: i for s in src.series.values() for i in s.instances.values()}
        tgt_instances = {i.sop_instance_uid: i for s in tgt.series.values() for i in s.instances.values()}
        report.instances_only_in_source = sorted(set(src_instances) - set(tgt_instances))
        report.instances_only_in_target = sorted(set(tgt_instances) - set(src_instances))
        if report.series_only_in_source or report.series_only_in_target:
            report.differences.append(Difference.SERIES_COUNT)
        if report.instances_only_in_source or report.instances_only_in_target:
            report.differences.append(Difference.INSTANCE_COUNT)
        a, b = src.attributes(), tgt.attributes()
        for name in ATTRIBUTES:
            if compare.get(name) and _norm(name, a[name]) != _norm(name, b[name]):
                report.attributes[name] = (a[name], b[name])
        if report.attributes:
            report.differences.append(Difference.ATTRIBUTES)
        for sop, mine in src_instances.items():
            theirs = tgt_instances.get(sop)
            if theirs and mine.content_sha256 and theirs.content_sha256:
                if mine.content_sha256 != theirs.content_sha256:
                    report.content_differs.append(sop)
        if report.content_differs:
            report.content_differs.sort()
            report.differences.append(Difference.CONTENT)
        reports.append(report)
    return ReconcileReport(source_name, target_name, reports)
