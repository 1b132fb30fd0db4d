"""The one ingest path: every source gets the same decisions, and a row commits with its
labels and findings or not at all.

The same object sent as a C-STORE data set (no File Meta), as a STOW-RS part
(streamed in chunks) and as an imported file must get the same duplicate
decision and the same IOD validation findings. Then a failure injected
between the instance row and its labels or findings must leave none of them
(on a real index: SQLite, then PostgreSQL).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import func, select

import dicomhub.index.repository
from dicomhub.errors import DoesNotMatchIOD, DuplicateInstance
from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.repository import IndexRepository
from dicomhub.index.schema import study_label, validation_finding, validation_instance
from dicomhub.index.validation import ValidationRepository
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.extract import extract_part10
from dicomhub.model.ingest import (
    InstanceOrigin,
    OriginKind,
    Part10Object,
    ReceivedDataSet,
    StoreOutcome,
    StoreResult,
)
from dicomhub.model.policy import DuplicatePolicy, ValidationPolicy
from dicomhub.model.structure import dataset_offset
from dicomhub.services.ingest import IngestService
from dicomhub.services.validation import ValidationService
from dicomhub.storage.memory import MemoryBlobStore
from tests import datagen

SOURCES = ("c-store", "stow-rs", "import")


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def valid(**kwargs: object) -> Dataset:
    ds = datagen.make_dataset(rows=8, cols=8, **kwargs)  # type: ignore[arg-type]
    ds.AcquisitionNumber = 1  # Type 2 of the CT Image module, which datagen leaves out
    return ds


def broken(**kwargs: object) -> Dataset:
    ds = valid(**kwargs)
    del ds.Modality  # Type 1, General Series
    return ds


class Hub:
    """A real index (``url``), the memory blob store and the services as bootstrap wires them."""

    def __init__(
        self,
        url: str,
        tmp: Path,
        *,
        policy: DuplicatePolicy = DuplicatePolicy.KEEP,
        validation: ValidationPolicy = ValidationPolicy.RECORD,
        labeller: Callable[[Caller, object], frozenset[str]] | None = None,
    ) -> None:
        self.engine = connect_engine(url)
        migrate(self.engine, lock_dir=tmp)
        self.index = IndexRepository(self.engine)
        self.blobs = MemoryBlobStore()
        self.validation = ValidationService(ValidationRepository(self.engine), self.blobs, validation)
        self.ingest = IngestService(
            self.index,
            self.blobs,
            policy,
            validation=self.validation,
            labeller=labeller,  # type: ignore[arg-type]
        )
        self.tmp = tmp

    def send(self, source: str, data: bytes) -> StoreResult:
        """Store ``data`` (a Part 10 file) the way ``source`` hands it to the service."""
        if source == "c-store":
            header = extract_part10(data)
            received = ReceivedDataSet(
                header.transfer_syntax_uid,
                header.sop_class_uid,
                header.sop_instance_uid,
                data[dataset_offset(data) :],
            )
            caller = Caller(Channel.DIMSE, "MODALITY", "127.0.0.1")
            origin = InstanceOrigin(OriginKind.C_STORE, calling_ae_title="MODALITY")
            return self.ingest.store(received, origin, caller)
        if source == "stow-rs":
            caller = Caller(Channel.HTTP, "", "127.0.0.1")
            chunks = iter([data[:700], data[700:]])
            (result,) = self.ingest.store_many(
                [chunks], caller, origin=InstanceOrigin.stow_rs(None, "127.0.0.1")
            )
            if isinstance(result, Exception):
                raise result
            return result
        path = self.tmp / f"import-{len(list(self.tmp.iterdir()))}.dcm"
        path.write_bytes(data)
        return self.ingest.store(
            Part10Object(path=str(path)), InstanceOrigin.imported(str(path)), Caller.cli()
        )

    def count(self, table: object, **where: str) -> int:
        stmt = select(func.count()).select_from(table)  # type: ignore[arg-type]
        for column, value in where.items():
            stmt = stmt.where(table.c[column] == value)  # type: ignore[attr-defined]
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def findings(self, sop_instance_uid: str) -> list[tuple[object, ...]]:
        """The findings recorded for an object, without who sent it or when."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    validation_finding.c.severity,
                    validation_finding.c.code,
                    validation_finding.c.module,
                    validation_finding.c.attribute,
                    validation_finding.c.message,
                )
                .where(validation_finding.c.sop_instance_uid == sop_instance_uid)
                .order_by(validation_finding.c.attribute, validation_finding.c.code)
            ).all()
        return [tuple(r) for r in rows]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'index.sqlite'}"


# ---------------------------------------------------------------- the duplicate decision


@pytest.mark.parametrize("first", SOURCES)
def test_every_source_gets_the_same_duplicate_decision(first: str, sqlite_url: str, tmp_path: Path) -> None:
    hub = Hub(sqlite_url, tmp_path)
    ds = valid()
    data = encode(ds)
    assert hub.send(first, data).outcome is StoreOutcome.STORED
    changed = valid(sop_uid=ds.SOPInstanceUID, study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID)
    changed.PatientName = "Other^Content"
    decisions: dict[str, object] = {}
    for source in SOURCES:
        decisions[f"{source} same"] = hub.send(source, data).outcome
        with pytest.raises(DuplicateInstance) as refused:
            hub.send(source, encode(changed))
        decisions[f"{source} other"] = type(refused.value)
    assert decisions == {
        **{f"{s} same": StoreOutcome.ALREADY_PRESENT for s in SOURCES},
        **{f"{s} other": DuplicateInstance for s in SOURCES},
    }
    assert hub.index.counts()["instances"] == 1
    # Each refused copy is in quarantine, with the one held copy beside them.
    assert len(hub.index.conflicts()) == len(SOURCES)
    assert len(list(hub.blobs.iter_keys())) == 1 + len(SOURCES)


@pytest.mark.parametrize("source", SOURCES)
def test_the_reject_policy_refuses_a_resend_from_every_source(
    source: str, sqlite_url: str, tmp_path: Path
) -> None:
    hub = Hub(sqlite_url, tmp_path, policy=DuplicatePolicy.REJECT)
    data = encode(valid())
    hub.send("import", data)
    with pytest.raises(DuplicateInstance, match="policy: reject"):
        hub.send(source, data)
    assert len(list(hub.blobs.iter_keys())) == 1  # the refused copy left nothing behind
    assert hub.index.conflicts() == []


# ---------------------------------------------------------------- the validation step


def test_every_source_gets_the_same_validation_findings(tmp_path: Path) -> None:
    ds = broken()
    data = encode(ds)
    uid = str(ds.SOPInstanceUID)
    seen = {}
    for source in SOURCES:
        folder = tmp_path / source
        folder.mkdir()
        hub = Hub(f"sqlite:///{folder / 'index.sqlite'}", folder, validation=ValidationPolicy.WARN)
        result = hub.send(source, data)
        assert result.outcome is StoreOutcome.STORED
        seen[source] = (result.warning, hub.findings(uid))
        # Checked inline: the background worker does not check this copy again.
        (pending,) = hub.validation.repo.instances_after(0, 10)
        assert pending.checked
    assert seen["c-store"][1], "the broken object has findings"
    assert any(f[3] == "Modality" for f in seen["c-store"][1])
    assert seen["c-store"][0] is not None and "Modality" in seen["c-store"][0]
    assert seen["stow-rs"] == seen["c-store"] == seen["import"]


@pytest.mark.parametrize("source", SOURCES)
def test_reject_refuses_from_every_source_and_records_why(
    source: str, sqlite_url: str, tmp_path: Path
) -> None:
    hub = Hub(sqlite_url, tmp_path, validation=ValidationPolicy.REJECT)
    ds = broken()
    with pytest.raises(DoesNotMatchIOD, match="Modality"):
        hub.send(source, encode(ds))
    assert hub.index.counts()["instances"] == 0
    assert list(hub.blobs.iter_keys()) == []
    (summary,) = hub.validation.summary()
    assert summary["instances_rejected"] == 1
    assert hub.findings(str(ds.SOPInstanceUID))
    # A valid object from the same source is stored.
    assert hub.send(source, encode(valid())).outcome is StoreOutcome.STORED


# ---------------------------------------------------------------- one transaction


def _labels(_caller: Caller, _header: object) -> frozenset[str]:
    return frozenset({"research"})


def test_row_labels_and_findings_commit_together(index_url: str, tmp_path: Path) -> None:
    hub = Hub(index_url, tmp_path, validation=ValidationPolicy.WARN, labeller=_labels)
    ds = broken()
    result = hub.send("c-store", encode(ds))
    assert result.outcome is StoreOutcome.STORED and result.warning
    assert hub.count(study_label, study_instance_uid=str(ds.StudyInstanceUID)) == 1
    assert hub.count(validation_instance, sop_instance_uid=str(ds.SOPInstanceUID)) == 1


@pytest.mark.parametrize("failing", ["insert_labels", "insert_validation_records"])
@pytest.mark.parametrize("source", SOURCES)
def test_a_failure_between_row_labels_and_findings_leaves_none_of_them(
    failing: str, source: str, index_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = Hub(index_url, tmp_path, validation=ValidationPolicy.WARN, labeller=_labels)
    before = hub.index.last_change()

    def fail(*_args: object) -> None:
        raise RuntimeError(f"injected failure in {failing}")

    # The name the index's transaction calls, after the instance row is inserted.
    monkeypatch.setattr(dicomhub.index.repository, failing, fail)
    ds = broken()
    with pytest.raises(RuntimeError, match="injected failure"):
        hub.send(source, encode(ds))
    assert hub.index.get_instance(str(ds.SOPInstanceUID)) is None
    assert hub.index.counts()["instances"] == 0
    assert hub.count(study_label) == 0
    assert hub.count(validation_instance) == 0 and hub.count(validation_finding) == 0
    assert hub.index.last_change() == before  # no change row either
    assert list(hub.blobs.iter_keys()) == []  # and no orphan blob
    # Nothing half-done stands in the way: the same object is stored once the fault is gone.
    monkeypatch.undo()
    assert hub.send(source, encode(ds)).outcome is StoreOutcome.STORED
    assert hub.count(study_label) == 1 and hub.count(validation_instance) == 1
