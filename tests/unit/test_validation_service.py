"""IOD validation: repository, service and background worker on a real SQLite index."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.repository import IndexRepository
from dicomhub.index.validation import ValidationRepository
from dicomhub.iod.validate import Severity
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.policy import ValidationPolicy
from dicomhub.services.ingest import IngestService
from dicomhub.services.validation import ValidationService, has_errors
from dicomhub.storage.filesystem import FileSystemBlobStore
from tests import datagen

FINDING_KEYS = {
    "sop_instance_uid",
    "sop_class_uid",
    "source_ae_title",
    "severity",
    "code",
    "module",
    "attribute",
    "message",
    "checked_at",
    "rejected",
}


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def good(**kwargs: object) -> Dataset:
    ds = datagen.make_dataset(rows=8, cols=8, **kwargs)  # type: ignore[arg-type]
    ds.AcquisitionNumber = 1  # Type 2 of the CT Image module, which datagen leaves out
    return ds


def broken(**kwargs: object) -> Dataset:
    ds = good(**kwargs)
    del ds.Modality  # Type 1, General Series
    return ds


class Parts:
    def __init__(self, tmp: Path, policy: ValidationPolicy = ValidationPolicy.RECORD) -> None:
        engine = connect_engine(f"sqlite:///{tmp / 'index.sqlite'}")
        migrate(engine, lock_dir=tmp)
        self.index = IndexRepository(engine)
        self.blobs = FileSystemBlobStore(tmp / "blobs", fsync=False)
        self.ingest = IngestService(self.index, self.blobs)
        self.repo = ValidationRepository(engine)
        self.validation = ValidationService(
            self.repo, self.blobs, policy, {"STRICT": ValidationPolicy.REJECT}
        )

    def store(self, ds: Dataset, ae: str | None) -> str:
        caller = Caller(Channel.DIMSE, ae) if ae else Caller.cli()
        return self.ingest.store_part10(encode(ds), caller).sop_instance_uid


def test_generated_objects_are_valid(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    assert parts.validation.validate_bytes(encode(good())) == []


def test_worker_records_findings_per_source(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    ok_uid = parts.store(good(), "MODALITY_A")
    bad_a = parts.store(broken(), "MODALITY_A")
    bad_b = parts.store(broken(), "MODALITY_B")
    from_cli = parts.store(broken(), None)

    assert parts.validation.run_pending(batch=2) == 2
    assert parts.validation.run_pending() == 2
    assert parts.validation.run_pending() == 0  # the cursor moved past all four

    findings = parts.validation.findings(None, 100)
    assert {f["sop_instance_uid"] for f in findings} == {bad_a, bad_b, from_cli}
    assert all(set(f) == FINDING_KEYS for f in findings)
    first = next(f for f in findings if f["sop_instance_uid"] == bad_a)
    assert first["source_ae_title"] == "MODALITY_A"
    assert (first["severity"], first["code"], first["module"], first["attribute"]) == (
        "error",
        "type1-missing",
        "general-series",
        "Modality",
    )
    assert first["checked_at"].endswith("+00:00")

    only_b = parts.validation.findings("MODALITY_B", 100)
    assert {f["sop_instance_uid"] for f in only_b} == {bad_b}
    assert parts.repo.findings(sop_instance_uid=ok_uid) == []
    assert parts.repo.findings(severity="warning") == []
    assert len(parts.validation.findings(None, 1)) == 1

    summary = {s["source_ae_title"]: s for s in parts.validation.summary()}
    assert set(summary) == {None, "MODALITY_A", "MODALITY_B"}
    a = summary["MODALITY_A"]
    assert (a["instances_checked"], a["instances_with_errors"], a["instances_with_warnings"]) == (2, 1, 0)
    assert a["instances_rejected"] == 0
    assert a["top_findings"] == [
        {"severity": "error", "code": "type1-missing", "attribute": "Modality", "instances": 1}
    ]
    assert summary[None]["instances_checked"] == 1


def test_inline_checks_are_recorded_and_not_repeated(tmp_path: Path) -> None:
    parts = Parts(tmp_path, ValidationPolicy.WARN)
    assert parts.validation.policy_for("ANY") is ValidationPolicy.WARN
    assert parts.validation.policy_for("STRICT") is ValidationPolicy.REJECT
    ds = broken()
    data = encode(ds)
    findings = parts.validation.validate_bytes(data)
    assert has_errors(findings)
    uid = parts.store(ds, "MODALITY_A")
    parts.validation.record(uid, ds.SOPClassUID, "MODALITY_A", findings)
    checked_at = parts.validation.findings(None, 10)[0]["checked_at"]

    # The worker sees the copy was checked inline and leaves its result alone.
    assert parts.validation.run_pending() == 1
    assert parts.validation.findings(None, 10)[0]["checked_at"] == checked_at

    # A refused object (reject policy) is reported although it was never stored.
    refused = broken()
    found = parts.validation.validate_bytes(encode(refused))
    parts.validation.record(refused.SOPInstanceUID, refused.SOPClassUID, "STRICT", found, rejected=True)
    rows = parts.validation.findings("STRICT", 10)
    assert rows and rows[0]["rejected"] is True
    strict = next(s for s in parts.validation.summary() if s["source_ae_title"] == "STRICT")
    assert (strict["instances_checked"], strict["instances_rejected"]) == (1, 1)


def test_validate_bytes_of_a_c_store_data_set(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    ds = broken()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    part10 = buf.getvalue()
    # The data set alone, as a C-STORE delivers it: skip the preamble and File Meta.
    parsed = pydicom.dcmread(io.BytesIO(part10))
    body = part10[len(part10) - _dataset_length(parsed, part10) :]
    found = parts.validation.validate_bytes(body, "1.2.840.10008.1.2.1")
    assert [(f.code, f.attribute) for f in found] == [("type1-missing", "Modality")]
    assert found[0].severity is Severity.ERROR


def _dataset_length(ds: Dataset, part10: bytes) -> int:
    meta_length = int(ds.file_meta.FileMetaInformationGroupLength)
    return len(part10) - (132 + 12 + meta_length)


def test_revalidated_when_replaced_and_stale_after_delete(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    ds = broken()
    uid = parts.store(ds, "MODALITY_A")
    parts.validation.run_pending()
    assert parts.validation.findings("MODALITY_A", 10)
    # A later copy of the same object (fixed) replaces the record when re-checked.
    parts.validation.record(uid, ds.SOPClassUID, "MODALITY_A", [])
    assert parts.validation.findings("MODALITY_A", 10) == []
    summary = parts.validation.summary()
    assert summary[0]["instances_checked"] == 1 and summary[0]["instances_with_errors"] == 0


def test_worker_thread_checks_new_objects(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    stop = threading.Event()
    worker = threading.Thread(target=parts.validation.run_worker, args=(stop, 0.02))
    worker.start()
    try:
        uid = parts.store(broken(), "MODALITY_A")
        deadline = time.monotonic() + 10
        while not parts.validation.findings("MODALITY_A", 10) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        worker.join(5)
    assert not worker.is_alive()
    assert parts.validation.findings("MODALITY_A", 10)[0]["sop_instance_uid"] == uid


def test_unreadable_blob_is_a_finding(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    uid = parts.store(good(), "MODALITY_A")
    (pending,) = parts.repo.instances_after(0, 10)
    path = parts.blobs.local_path(pending.blob_key)
    assert path is not None
    Path(path).write_bytes(b"garbage")
    parts.validation.run_pending()
    (row,) = parts.validation.findings(None, 10)
    assert (row["sop_instance_uid"], row["code"]) == (uid, "unreadable")
