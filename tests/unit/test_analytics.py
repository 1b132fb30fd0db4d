"""The metadata export on a real SQLite index: one Parquet file per run with what
changed since the last, rows that carry the indexed attributes and the header, deleted
entities as rows of their own, a run with nothing new writing nothing, and the
documented schema matching the written one."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydicom.dataset import Dataset

from dicomhub.index.analytics import MetadataRows
from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.repository import IndexRepository
from dicomhub.model.caller import Caller
from dicomhub.model.identifiers import Level
from dicomhub.model.policy import DuplicatePolicy
from dicomhub.services.analytics import MetadataExport, schema
from dicomhub.services.headers import HeaderService
from dicomhub.services.ingest import IngestService
from dicomhub.storage.memory import MemoryBlobStore
from tests import datagen

CLI = Caller.cli()
DOCS = Path(__file__).resolve().parents[2] / "docs" / "analytics.md"


class Setup:
    def __init__(self, tmp: Path) -> None:
        engine = connect_engine(f"sqlite:///{tmp / 'index.sqlite'}")
        migrate(engine, lock_dir=tmp)
        self.index = IndexRepository(engine)
        blobs = MemoryBlobStore()
        self.ingest = IngestService(self.index, blobs, DuplicatePolicy.KEEP)
        self.export = MetadataExport(
            self.index, MetadataRows(engine), HeaderService(self.index, blobs).header_json
        )

    def store(self, **kwargs: object) -> Dataset:
        ds = datagen.make_dataset(rows=8, cols=8, **kwargs)  # type: ignore[arg-type]
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        self.ingest.store_part10(buf.getvalue(), CLI)
        return ds


def test_each_run_writes_what_changed_since_the_last(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    out = tmp_path / "export"
    a = s.store(patient_id="AN1", modality="MR")
    b = s.store(patient_id="AN1", study_uid=str(a.StudyInstanceUID))
    first = s.export.export(out)
    assert first.file is not None and first.first == 1 and first.last == s.index.last_change()
    rows = pq.read_table(first.file).to_pylist()
    created = {r["sop_instance_uid"]: r for r in rows if r["change_type"] == "created"}
    assert set(created) == {str(a.SOPInstanceUID), str(b.SOPInstanceUID)}
    row = created[str(a.SOPInstanceUID)]
    assert (row["patient_id"], row["study_instance_uid"], row["modality"]) == (
        "AN1",
        str(a.StudyInstanceUID),
        "MR",
    )
    assert row["size"] > 0 and row["received_at"] is not None and len(row["sha256"]) == 64
    header = json.loads(row["header_json"])
    assert header["00080018"]["Value"] == [str(a.SOPInstanceUID)]
    assert "7FE00010" not in header  # the header without its pixel data

    assert s.export.export(out).file is None  # nothing new

    s.index.delete_entity(
        Level.IMAGE, str(a.StudyInstanceUID), str(a.SeriesInstanceUID), str(a.SOPInstanceUID)
    )
    c = s.store(patient_id="AN2")
    second = s.export.export(out)
    assert second.file is not None and second.first == first.last + 1
    rows = pq.read_table(second.file).to_pylist()
    assert [r["sop_instance_uid"] for r in rows if r["change_type"] == "created"] == [str(c.SOPInstanceUID)]
    deleted = {(r["level"], r["uid"]) for r in rows if r["change_type"] == "deleted"}
    assert ("IMAGE", str(a.SOPInstanceUID)) in deleted
    assert all(r["patient_id"] is None for r in rows if r["change_type"] == "deleted")
    # Both files read as one data set with one schema.
    assert pq.read_table(out).num_rows == first.rows + second.rows


def test_a_damaged_state_file_is_an_error_not_a_restart(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "_export-state.json").write_text("{broken")
    with pytest.raises(ValueError, match="damaged"):
        s.export.export(tmp_path / "export")


def test_the_documented_schema_is_the_written_one() -> None:
    documented = re.findall(r"^\| `([a-z_0-9]+)` \| ([a-z0-9]+) ", DOCS.read_text(), flags=re.M)
    written = [(f.name, str(f.type).split("[")[0]) for f in schema()]
    assert documented == written
