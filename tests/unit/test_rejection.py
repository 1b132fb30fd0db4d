"""Rejection notes (IHE IOCM): reading a KOS's title and references, and the index and
ingest behaviour on a real index (SQLite, then PostgreSQL) with an in-memory blob store."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomhub.errors import InvalidRequest, RejectedObject, RejectionFailed
from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.rejection import RejectionRepository
from dicomhub.index.repository import IndexRepository
from dicomhub.model.caller import Caller
from dicomhub.model.identifiers import Level
from dicomhub.model.ingest import StoreOutcome
from dicomhub.model.query import Query, query_from_identifier
from dicomhub.model.rejection import (
    KEY_OBJECT_SELECTION_DOCUMENT,
    RejectionReason,
    SOPReference,
    build_rejection_note,
    part10_bytes,
    read_rejection_note,
    rejection_note_of,
    rejection_reason,
)
from dicomhub.model.webhooks import event_of
from dicomhub.services.delete import DeleteService
from dicomhub.services.headers import HeaderService
from dicomhub.services.ingest import IngestService
from dicomhub.services.rejection_notes import RejectionNotes
from dicomhub.services.search import SearchService
from dicomhub.storage.memory import MemoryBlobStore
from tests import datagen

CLI = Caller.cli()
CT = "1.2.840.10008.5.1.4.1.1.2"


def _refs(study: str, series: str, *sops: str) -> list[SOPReference]:
    return [SOPReference(study, series, CT, sop) for sop in sops]


def _note(reason: RejectionReason, refs: list[SOPReference], study: Dataset | None = None) -> Dataset:
    header = study or Dataset()
    return build_rejection_note(reason, refs, header, content_date="20261207", content_time="010203")


def _reread(ds: Dataset) -> Dataset:
    return dcmread(io.BytesIO(part10_bytes(ds)))


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("reason", list(RejectionReason))
def test_a_built_note_reads_back_with_its_title_and_references(reason: RejectionReason) -> None:
    refs = _refs("1.2.3", "1.2.3.1", "1.2.3.1.1", "1.2.3.1.2") + _refs("1.2.3", "1.2.3.2", "1.2.3.2.1")
    ds = _reread(_note(reason, refs))
    assert ds.SOPClassUID == KEY_OBJECT_SELECTION_DOCUMENT
    assert ds.ConceptNameCodeSequence[0].CodeValue == reason.code_value
    note = read_rejection_note(ds)
    assert note is not None
    assert note.reason is reason
    assert note.sop_instance_uid == ds.SOPInstanceUID
    assert note.study_instance_uid == "1.2.3"
    assert list(note.references) == refs
    # Two series in the evidence, each with its instances.
    assert [
        len(s.ReferencedSOPSequence)
        for s in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    ] == [2, 1]


def test_the_title_decides_what_is_a_rejection_note() -> None:
    ds = _reread(_note(RejectionReason.QUALITY, _refs("1.2.3", "1.2.3.1", "1.2.3.1.1")))
    ds.ConceptNameCodeSequence[0].CodeValue = "113000"  # "Of Interest": a KOS, no rejection
    assert read_rejection_note(ds) is None
    ds.ConceptNameCodeSequence[0].CodeValue = "113001"
    ds.ConceptNameCodeSequence[0].CodingSchemeDesignator = "99LOCAL"
    assert read_rejection_note(ds) is None
    ds.ConceptNameCodeSequence[0].CodingSchemeDesignator = "DCM"
    assert read_rejection_note(ds) is not None
    ds.SOPClassUID = CT
    assert read_rejection_note(ds) is None
    assert rejection_reason("113039", "DCM") is RejectionReason.RETENTION
    assert rejection_reason("113039", "SRT") is None


def test_a_note_without_references_or_with_an_incomplete_one_is_refused() -> None:
    ds = _reread(_note(RejectionReason.SAFETY, _refs("1.2.3", "1.2.3.1", "1.2.3.1.1")))
    series = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    del series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    with pytest.raises(InvalidRequest, match="without its"):
        read_rejection_note(ds)
    del ds.CurrentRequestedProcedureEvidenceSequence
    with pytest.raises(InvalidRequest, match="references no instance"):
        read_rejection_note(ds)
    # Bytes that hold no data set are no rejection note (ingest refused them earlier).
    assert rejection_note_of(b"\x00" * 10) is None


def test_reasons_parse_from_names_and_codes_and_nothing_else() -> None:
    assert RejectionReason.parse("Quality") is RejectionReason.QUALITY
    assert RejectionReason.parse("113038") is RejectionReason.WORKLIST
    with pytest.raises(InvalidRequest, match="one of quality, safety"):
        RejectionReason.parse("boredom")
    assert event_of("rejected", "IMAGE") == "rejected"


def test_a_note_copies_its_study_and_patient_and_rejects_one_study_only() -> None:
    study = datagen.make_dataset(patient_id="PID-R", study_uid="1.2.3")
    ds = _reread(_note(RejectionReason.QUALITY, _refs("1.2.3", "1.2.3.1", "1.2.3.1.1"), study))
    assert (ds.PatientID, ds.StudyInstanceUID, ds.AccessionNumber) == ("PID-R", "1.2.3", "ACC0001")
    assert ds.SeriesInstanceUID != study.SeriesInstanceUID
    with pytest.raises(InvalidRequest, match="one study"):
        _note(RejectionReason.QUALITY, _refs("1.2.3", "1.2.3.1", "1.1") + _refs("1.2.4", "1.2.4.1", "1.2"))
    with pytest.raises(InvalidRequest, match="nothing to reject"):
        _note(RejectionReason.QUALITY, [])


# ---------------------------------------------------------------- ingest and the index


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class _Archive:
    def __init__(self, tmp: Path, url: str) -> None:
        engine = connect_engine(url)
        migrate(engine, lock_dir=tmp)
        self.index = IndexRepository(engine)
        self.blobs = MemoryBlobStore()
        self.rejections = RejectionRepository(engine)
        self.ingest = IngestService(self.index, self.blobs, rejections=RejectionNotes(self.rejections))
        self.search = SearchService(self.index, HeaderService(self.index, self.blobs))

    def find(self, level: str, include_rejected: bool = False, **keys: object) -> list[Dataset]:
        ident = Dataset()
        for k, v in keys.items():
            setattr(ident, k, v)
        query = query_from_identifier(ident, level)
        query = Query(
            level=query.level,
            conditions=query.conditions,
            return_keys=query.return_keys,
            include_rejected=include_rejected,
        )
        return [m.to_dataset() for m in self.search.search(query, CLI)]


@pytest.fixture
def archive(tmp_path: Path, index_url: str) -> _Archive:
    return _Archive(tmp_path, index_url)


def _study(archive: _Archive) -> tuple[str, list[Dataset], list[Dataset]]:
    study = datagen.uid()
    series_a = datagen.uid()
    a = [datagen.make_dataset(study_uid=study, series_uid=series_a, instance_number=i) for i in (1, 2)]
    b = [datagen.make_dataset(study_uid=study, series_number=2, instance_number=1)]
    for ds in (*a, *b):
        assert archive.ingest.store_part10(_encode(ds), CLI).outcome is StoreOutcome.STORED
    return study, a, b


def _ref(ds: Dataset) -> SOPReference:
    return SOPReference(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID, ds.SOPInstanceUID)


def test_a_rejection_note_hides_what_it_rejects_from_queries_and_counts(archive: _Archive) -> None:
    study, a, b = _study(archive)
    note = _note(RejectionReason.QUALITY, [_ref(ds) for ds in a], a[0])
    before = archive.index.last_change()
    stored = archive.ingest.store_part10(part10_bytes(note), CLI)
    assert stored.outcome is StoreOutcome.STORED
    # The note's series and series b stay; series a (all rejected) is gone.
    series = {
        ds.SeriesInstanceUID for ds in archive.find("SERIES", StudyInstanceUID=study, SeriesInstanceUID="")
    }
    assert series == {b[0].SeriesInstanceUID, note.SeriesInstanceUID}
    found = archive.find("STUDY", StudyInstanceUID=study, NumberOfStudyRelatedInstances="",
                         NumberOfStudyRelatedSeries="")  # fmt: skip
    assert [(int(d.NumberOfStudyRelatedInstances), int(d.NumberOfStudyRelatedSeries)) for d in found] == [
        (2, 2)
    ]
    images = {ds.SOPInstanceUID for ds in archive.find("IMAGE", StudyInstanceUID=study, SOPInstanceUID="")}
    assert images == {b[0].SOPInstanceUID, note.SOPInstanceUID}
    # Asked for, they are all there, with the stored counts.
    everything = archive.find("STUDY", True, StudyInstanceUID=study, NumberOfStudyRelatedInstances="")
    assert int(everything[0].NumberOfStudyRelatedInstances) == 4
    assert len(archive.find("IMAGE", True, StudyInstanceUID=study, SOPInstanceUID="")) == 4
    # C-GET/C-MOVE and WADO-RS find their instances through the same compiler.
    retrieve = Query(level=Level.SERIES, conditions=query_from_identifier(_ident(a[0]), "SERIES").conditions)
    assert archive.search.instances(retrieve, CLI) == []
    rows = archive.rejections.rejections(study)
    assert {r["sop_instance_uid"] for r in rows} == {ds.SOPInstanceUID for ds in a}
    assert {(r["code_value"], r["rejection_note_uid"], r["rejected_by"]) for r in rows} == {
        ("113001", note.SOPInstanceUID, CLI.who)
    }
    rejected = [c for c in archive.index.changes(before) if c["change_type"] == "rejected"]
    assert sorted(c["uid"] for c in rejected) == sorted(ds.SOPInstanceUID for ds in a)
    # Sending a rejected instance again is refused, and nothing of it is written.
    blobs = len(list(archive.blobs.iter_keys()))
    with pytest.raises(RejectedObject, match="subsequent occurrence"):
        archive.ingest.store_part10(_encode(a[1]), CLI)
    assert len(list(archive.blobs.iter_keys())) == blobs
    # The same note again is already present: nothing changes.
    assert archive.ingest.store_part10(part10_bytes(note), CLI).outcome is StoreOutcome.ALREADY_PRESENT


def _ident(ds: Dataset) -> Dataset:
    ident = Dataset()
    ident.StudyInstanceUID = ds.StudyInstanceUID
    ident.SeriesInstanceUID = ds.SeriesInstanceUID
    return ident


def test_a_note_for_instances_not_held_is_refused_whole(archive: _Archive) -> None:
    study, a, _b = _study(archive)
    absent = SOPReference(study, a[0].SeriesInstanceUID, CT, datagen.uid())
    note = _note(RejectionReason.SAFETY, [_ref(a[0]), absent], a[0])
    with pytest.raises(RejectionFailed, match="not held"):
        archive.ingest.store_part10(part10_bytes(note), CLI)
    wrong_series = SOPReference(study, datagen.uid(), CT, a[1].SOPInstanceUID)
    with pytest.raises(RejectionFailed):
        archive.ingest.store_part10(part10_bytes(_note(RejectionReason.SAFETY, [wrong_series], a[0])), CLI)
    # A note rejects in its own study only (access control grants storing per study).
    elsewhere = _note(RejectionReason.SAFETY, [_ref(a[1])], a[0])
    elsewhere.StudyInstanceUID = datagen.uid()
    with pytest.raises(InvalidRequest, match="another study"):
        archive.ingest.store_part10(part10_bytes(elsewhere), CLI)
    assert archive.rejections.rejections(study) == []
    assert archive.index.get_instance(note.SOPInstanceUID) is None
    assert len(archive.find("IMAGE", StudyInstanceUID=study, SOPInstanceUID="")) == 3


def test_the_batch_path_applies_a_note_and_refuses_rejected_objects(archive: _Archive) -> None:
    study, a, b = _study(archive)
    note = _note(RejectionReason.WORKLIST, [_ref(b[0])], a[0])
    results = archive.ingest.store_many([part10_bytes(note), _encode(b[0])], CLI)
    assert not isinstance(results[0], Exception) and results[0].outcome is StoreOutcome.STORED
    # The same request's resend of the instance it rejects was checked before the note
    # was indexed: it is already present (nothing written), and stays rejected.
    assert not isinstance(results[1], Exception) and results[1].outcome is StoreOutcome.ALREADY_PRESENT
    results = archive.ingest.store_many([_encode(b[0])], CLI)
    assert isinstance(results[0], RejectedObject)
    assert {ds.SOPInstanceUID for ds in archive.find("IMAGE", StudyInstanceUID=study, SOPInstanceUID="")} == {
        a[0].SOPInstanceUID,
        a[1].SOPInstanceUID,
        note.SOPInstanceUID,
    }


def test_a_retention_expiry_deletes_what_it_rejects_and_still_refuses_it(archive: _Archive) -> None:
    study, a, b = _study(archive)
    notes = archive.ingest.rejections
    assert notes is not None
    notes.delete = DeleteService(archive.index, archive.blobs)
    keys = [row.blob_key for ds in a if (row := archive.index.get_instance(ds.SOPInstanceUID)) is not None]
    assert len(keys) == 2
    note = _note(RejectionReason.RETENTION, [_ref(ds) for ds in a], a[0])
    assert archive.ingest.store_part10(part10_bytes(note), CLI).outcome is StoreOutcome.STORED
    assert all(archive.index.get_instance(ds.SOPInstanceUID) is None for ds in a)
    assert not any(archive.blobs.exists(key) for key in keys)
    assert {
        ds.SOPInstanceUID for ds in archive.find("IMAGE", True, StudyInstanceUID=study, SOPInstanceUID="")
    } == {
        b[0].SOPInstanceUID,
        note.SOPInstanceUID,
    }
    assert {r["code_value"] for r in archive.rejections.rejections(study)} == {"113039"}
    with pytest.raises(RejectedObject):
        archive.ingest.store_part10(_encode(a[0]), CLI)
