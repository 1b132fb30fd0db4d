"""The ingest and search services on a real index (SQLite, then PostgreSQL) and an in-memory blob store."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomhub.errors import DuplicateInstance, InvalidIdentifier, InvalidRequest, PatientMismatch
from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.migration_jobs import MigrationRepository
from dicomhub.index.repository import IndexRepository
from dicomhub.model.caller import Caller
from dicomhub.model.identifiers import Level
from dicomhub.model.policy import DuplicatePolicy
from dicomhub.model.query import Query, query_from_identifier
from dicomhub.services.contentdigest import PENDING, ContentDigestService, content_digest
from dicomhub.services.headers import HeaderService
from dicomhub.services.ingest import IngestService, StoreOutcome
from dicomhub.services.migration import MigrationService
from dicomhub.services.search import SearchService
from dicomhub.storage.memory import MemoryBlobStore
from tests import datagen

CLI = Caller.cli()


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    implicit = ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    ds.save_as(buf, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


class Archive:
    def __init__(self, tmp: Path, url: str, policy: DuplicatePolicy = DuplicatePolicy.KEEP) -> None:
        engine = connect_engine(url)
        migrate(engine, lock_dir=tmp)
        self.index = IndexRepository(engine)
        self.blobs = MemoryBlobStore()
        self.headers = HeaderService(self.index, self.blobs)
        self.ingest = IngestService(self.index, self.blobs, policy)
        self.search = SearchService(self.index, self.headers)

    def find(self, level: str, **keys: object) -> list[Dataset]:
        ident = Dataset()
        for k, v in keys.items():
            setattr(ident, k, v)
        return [m.to_dataset() for m in self.search.search(query_from_identifier(ident, level), CLI)]


@pytest.fixture
def archive(tmp_path: Path, index_url: str) -> Archive:
    return Archive(tmp_path, index_url)


def test_store_then_find_at_every_level(archive: Archive) -> None:
    study = datagen.uid()
    series = datagen.uid()
    for n in range(3):
        ds = datagen.make_dataset(study_uid=study, series_uid=series, instance_number=n + 1)
        result = archive.ingest.store_part10(encode(ds), CLI)
        assert result.outcome is StoreOutcome.STORED
    other = datagen.make_dataset(modality="MR", study_uid=study, patient_id="PID0001")
    archive.ingest.store_part10(encode(other), CLI)

    (patient,) = archive.find("PATIENT", PatientID="PID0001", NumberOfPatientRelatedInstances="")
    assert patient.NumberOfPatientRelatedInstances == 4
    (st,) = archive.find(
        "STUDY",
        StudyInstanceUID=study,
        ModalitiesInStudy="",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
    )
    assert list(st.ModalitiesInStudy) == ["CT", "MR"]
    assert st.NumberOfStudyRelatedSeries == 2
    assert st.NumberOfStudyRelatedInstances == 4
    series_rows = archive.find("SERIES", StudyInstanceUID=study, Modality="CT", SeriesInstanceUID="")
    assert [s.SeriesInstanceUID for s in series_rows] == [series]
    images = archive.find("IMAGE", SeriesInstanceUID=series, SOPInstanceUID="", InstanceNumber="")
    assert sorted(int(i.InstanceNumber) for i in images) == [1, 2, 3]


def test_matching_rules_in_sql(archive: Archive) -> None:
    rows = [
        ("P1", "Doe^John", "20200110", "101500", "ACC1", "CT"),
        ("P2", "Dow^Jane", "20210310", "143000", "ACC2", "MR"),
        ("P3", "Smith^Anna", "20221231", "235959", "acc3", "CT"),
    ]
    studies = {}
    for pid, name, date, time, acc, mod in rows:
        ds = datagen.make_dataset(
            patient_id=pid,
            patient_name=name,
            study_date=date,
            study_time=time,
            accession=acc,
            modality=mod,
        )
        archive.ingest.store_part10(encode(ds), CLI)
        studies[pid] = ds.StudyInstanceUID

    def pids(**keys: object) -> set[str]:
        return {str(d.PatientID) for d in archive.find("STUDY", PatientID="", **keys)}

    assert pids(PatientName="Do*") == {"P1", "P2"}
    assert pids(PatientName="do?^j*") == {"P1", "P2"}
    assert pids(PatientName="DOE^JOHN") == {"P1"}
    assert pids(StudyDate="20200101-20211231") == {"P1", "P2"}
    assert pids(StudyDate="-20200110") == {"P1"}
    assert pids(StudyDate="20210101-") == {"P2", "P3"}
    assert pids(StudyTime="1000-1500") == {"P1", "P2"}
    assert pids(AccessionNumber="ACC*") == {"P1", "P2"}  # case-sensitive outside PN
    assert pids(StudyInstanceUID=f"{studies['P1']}\\{studies['P3']}") == {"P1", "P3"}
    assert pids(ModalitiesInStudy="MR") == {"P2"}
    assert pids(ModalitiesInStudy="CT\\MR") == {"P1", "P2", "P3"}
    assert pids(PatientName="*") == {"P1", "P2", "P3"}
    assert pids(PatientName="50%_!x") == set()  # LIKE metacharacters are literal


def test_duplicate_same_bytes_is_success_and_changes_nothing(archive: Archive) -> None:
    data = encode(datagen.make_dataset())
    assert archive.ingest.store_part10(data, CLI).outcome is StoreOutcome.STORED
    assert archive.ingest.store_part10(data, CLI).outcome is StoreOutcome.ALREADY_PRESENT
    assert archive.index.counts()["instances"] == 1
    assert len(list(archive.blobs.iter_keys())) == 1


def test_duplicate_different_bytes_is_refused_and_kept(archive: Archive) -> None:
    ds = datagen.make_dataset()
    first = encode(ds)
    ds.StudyDescription = "changed"
    second = encode(ds)
    archive.ingest.store_part10(first, CLI)
    with pytest.raises(DuplicateInstance):
        archive.ingest.store_part10(second, CLI)
    (row,) = archive.index.conflicts()
    assert row["kind"] == "duplicate-different-content"
    assert archive.blobs.read(row["blob_key"]) == second  # quarantined, not lost
    kept = archive.index.get_instance(ds.SOPInstanceUID)
    assert kept is not None and archive.blobs.read(kept.blob_key) == first


def test_overwrite_policy_replaces(tmp_path: Path, index_url: str) -> None:
    archive = Archive(tmp_path, index_url, DuplicatePolicy.OVERWRITE)
    ds = datagen.make_dataset()
    archive.ingest.store_part10(encode(ds), CLI)
    ds.StudyDescription = "second"
    second = encode(ds)
    assert archive.ingest.store_part10(second, CLI).outcome is StoreOutcome.REPLACED
    row = archive.index.get_instance(ds.SOPInstanceUID)
    assert row is not None and archive.blobs.read(row.blob_key) == second
    assert len(list(archive.blobs.iter_keys())) == 1
    assert archive.index.counts()["instances"] == 1


def test_reject_policy_refuses_any_duplicate(tmp_path: Path, index_url: str) -> None:
    archive = Archive(tmp_path, index_url, DuplicatePolicy.REJECT)
    data = encode(datagen.make_dataset())
    archive.ingest.store_part10(data, CLI)
    with pytest.raises(DuplicateInstance):
        archive.ingest.store_part10(data, CLI)


def test_study_under_another_patient_is_refused(archive: Archive) -> None:
    study = datagen.uid()
    archive.ingest.store_part10(encode(datagen.make_dataset(study_uid=study, patient_id="A")), CLI)
    stray = datagen.make_dataset(study_uid=study, patient_id="B")
    with pytest.raises(PatientMismatch):
        archive.ingest.store_part10(encode(stray), CLI)
    (st,) = archive.find("STUDY", StudyInstanceUID=study, PatientID="", NumberOfStudyRelatedInstances="")
    assert st.PatientID == "A" and st.NumberOfStudyRelatedInstances == 1
    assert archive.find("PATIENT", PatientID="B") == []  # the new patient row rolled back
    assert archive.index.conflicts()[0]["kind"] == "patient-mismatch"


@pytest.mark.parametrize(
    "bad",
    [
        lambda ds: delattr(ds, "SOPInstanceUID"),
        lambda ds: delattr(ds, "StudyInstanceUID"),
        lambda ds: delattr(ds, "SeriesInstanceUID"),
        lambda ds: setattr(ds, "SOPInstanceUID", "1.2.3/../../etc"),
        lambda ds: setattr(ds, "SOPInstanceUID", "1.2." + "3" * 70),
    ],
)
def test_invalid_identifiers_are_refused(archive: Archive, bad: object) -> None:
    ds = datagen.make_dataset()
    with datagen.no_validation():
        bad(ds)  # type: ignore[operator]
        data = encode(ds)
    with pytest.raises(InvalidIdentifier):
        archive.ingest.store_part10(data, CLI)
    assert archive.index.counts()["instances"] == 0
    assert list(archive.blobs.iter_keys()) == []


def test_garbage_is_refused(archive: Archive) -> None:
    with pytest.raises(InvalidRequest):
        archive.ingest.store_part10(b"\0" * 128 + b"DICM" + b"\xff" * 300, CLI)


def test_concurrent_same_instance_gives_one_row(archive: Archive) -> None:
    data = encode(datagen.make_dataset())
    outcomes: list[StoreOutcome] = []
    barrier = threading.Barrier(6)

    def send() -> None:
        barrier.wait()
        outcomes.append(archive.ingest.store_part10(data, CLI).outcome)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.value for o in outcomes) == ["already-present"] * 5 + ["stored"]
    assert archive.index.counts()["instances"] == 1
    assert len(list(archive.blobs.iter_keys())) == 1


def test_non_indexed_keys_come_from_the_header(archive: Archive) -> None:
    ds = datagen.make_dataset(extra={"InstitutionName": "General Hospital"})
    archive.ingest.store_part10(encode(ds), CLI)
    (st,) = archive.find("STUDY", InstitutionName="General*")
    assert st.InstitutionName == "General Hospital"
    assert archive.find("STUDY", InstitutionName="Other*") == []
    # The worker prepares the JSON the search computed on demand anyway.
    assert archive.headers.prepare_pending() == 0


def test_limit_and_offset(archive: Archive) -> None:
    for i in range(5):
        archive.ingest.store_part10(encode(datagen.make_dataset(patient_id=f"P{i}")), CLI)
    q = Query(level=Level.PATIENT, return_keys=("PatientID",), limit=2, offset=1)
    assert [m.get("PatientID") for m in archive.search.search(q, CLI)] == ["P1", "P2"]


def test_same_data_set_from_two_senders_is_one_instance(archive: Archive) -> None:
    ds = datagen.make_dataset()
    data = encode(ds)
    from dicomhub.model.caller import Channel
    from dicomhub.model.structure import dataset_offset

    body = data[dataset_offset(data) :]
    ts = str(ds.file_meta.TransferSyntaxUID)
    first = archive.ingest.store_received(
        body, ts, ds.SOPClassUID, ds.SOPInstanceUID, Caller(Channel.DIMSE, "AE_ONE")
    )
    again = archive.ingest.store_received(
        body, ts, ds.SOPClassUID, ds.SOPInstanceUID, Caller(Channel.DIMSE, "AE_TWO")
    )
    imported = archive.ingest.store_part10(data, CLI)
    assert first.outcome is StoreOutcome.STORED
    assert again.outcome is StoreOutcome.ALREADY_PRESENT
    assert imported.outcome is StoreOutcome.ALREADY_PRESENT
    assert archive.index.conflicts() == []


def test_store_many_shares_durability_and_keeps_per_item_outcomes(archive: Archive) -> None:
    study = datagen.uid()
    good = [encode(datagen.make_dataset(study_uid=study, instance_number=i)) for i in range(3)]
    other_study = encode(datagen.make_dataset())
    same_twice = encode(datagen.make_dataset(study_uid=study))
    results = archive.ingest.store_many(
        [*good, b"not dicom", other_study, same_twice, same_twice],
        CLI,
        study_instance_uid=study,
    )
    outcomes = [r.outcome if not isinstance(r, Exception) else type(r).__name__ for r in results]
    assert outcomes[:3] == [StoreOutcome.STORED] * 3
    assert outcomes[3] == "InvalidRequest"
    assert outcomes[4] == "InvalidIdentifier"  # another study than the target
    # The same object twice in one batch: stored once, then already present.
    assert outcomes[5:] == [StoreOutcome.STORED, StoreOutcome.ALREADY_PRESENT]
    assert archive.index.counts()["instances"] == 4
    assert len(list(archive.blobs.iter_keys())) == 4


# ------------------------------------------------------------------ STOW-RS batches: the
# multi-row insert of new instances, and data set digests computed after the answer


def test_store_many_indexes_new_instances_as_one_by_one_would(
    tmp_path: Path, index_url: str, request: pytest.FixtureRequest
) -> None:
    """The multi-row path writes the same rows, counts and change log as the per-item path."""
    other_url = (
        f"sqlite:///{tmp_path / 'single.sqlite'}"
        if index_url.startswith("sqlite")
        else request.getfixturevalue("pg_cluster").create_database()
    )
    batch, single = Archive(tmp_path, index_url), Archive(tmp_path, other_url)
    study_a, study_b = datagen.uid(), datagen.uid()
    ct, mr = datagen.uid(), datagen.uid()
    objects = [
        encode(datagen.make_dataset(study_uid=study_a, series_uid=ct, modality="CT", instance_number=1)),
        encode(datagen.make_dataset(study_uid=study_a, series_uid=mr, modality="MR", instance_number=1)),
        encode(datagen.make_dataset(study_uid=study_a, series_uid=ct, modality="CT", instance_number=2)),
        encode(datagen.make_dataset(study_uid=study_b, instance_number=1)),
    ]
    assert all(r.outcome is StoreOutcome.STORED for r in batch.ingest.store_many(objects, CLI))  # type: ignore[union-attr]
    for data in objects:
        assert single.ingest.store_part10(data, CLI).outcome is StoreOutcome.STORED

    def shape(archive: Archive) -> tuple[object, ...]:
        studies = {
            d.StudyInstanceUID: (
                d.ModalitiesInStudy, d.NumberOfStudyRelatedSeries, d.NumberOfStudyRelatedInstances
            )
            for d in archive.find("STUDY", StudyInstanceUID="", ModalitiesInStudy="",
                                  NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="")
        }  # fmt: skip
        series = {
            d.SeriesInstanceUID: d.NumberOfSeriesRelatedInstances
            for d in archive.find("SERIES", StudyInstanceUID=study_a, SeriesInstanceUID="",
                                  NumberOfSeriesRelatedInstances="")
        }  # fmt: skip
        log = [(c["change_type"], c["level"], c["uid"]) for c in archive.index.changes()]
        return studies, series, log, archive.index.counts()

    assert shape(batch) == shape(single)
    assert shape(batch)[1] == {ct: 2, mr: 1}


def test_store_many_falls_back_to_per_item_answers(archive: Archive) -> None:
    """A batch that is not all new (an instance held already, a series claimed by two
    studies) writes nothing in the multi-row path and gets per-item answers."""
    study, series = datagen.uid(), datagen.uid()
    held = encode(datagen.make_dataset(study_uid=study, series_uid=series))
    assert archive.ingest.store_part10(held, CLI).outcome is StoreOutcome.STORED
    new = encode(datagen.make_dataset(study_uid=study, series_uid=series))
    results = archive.ingest.store_many([new, held], CLI)
    assert [r.outcome for r in results] == [StoreOutcome.STORED, StoreOutcome.ALREADY_PRESENT]  # type: ignore[union-attr]
    # Same series UID under another study inside one batch: only that item is refused.
    first = encode(datagen.make_dataset(series_uid=(shared := datagen.uid())))
    clash = encode(datagen.make_dataset(series_uid=shared))
    results = archive.ingest.store_many([first, clash], CLI)
    assert isinstance(results[0], object) and not isinstance(results[0], Exception)
    assert results[0].outcome is StoreOutcome.STORED
    assert type(results[1]).__name__ == "Conflict"
    assert archive.index.counts()["instances"] == 3


def test_pending_data_set_digest_still_tells_copies_from_other_content(archive: Archive) -> None:
    ds = datagen.make_dataset()
    first = encode(ds)
    (stored,) = archive.ingest.store_many([first], CLI)
    assert not isinstance(stored, Exception) and stored.outcome is StoreOutcome.STORED
    row = archive.index.get_instance(ds.SOPInstanceUID)
    assert row is not None and row.content_sha256 == PENDING
    # C-STORE / import of the same object, and STOW-RS again: already present.
    assert archive.ingest.store_part10(first, CLI).outcome is StoreOutcome.ALREADY_PRESENT
    (again,) = archive.ingest.store_many([first], CLI)
    assert not isinstance(again, Exception) and again.outcome is StoreOutcome.ALREADY_PRESENT
    # Other content under the same UID: refused and quarantined, by either path.
    ds.StudyDescription = "changed"
    second = encode(ds)
    with pytest.raises(DuplicateInstance):
        archive.ingest.store_part10(second, CLI)
    (refused,) = archive.ingest.store_many([second], CLI)
    assert isinstance(refused, DuplicateInstance)
    assert [c["kind"] for c in archive.index.conflicts()] == ["duplicate-different-content"] * 2
    kept = archive.index.get_instance(ds.SOPInstanceUID)
    assert kept is not None and archive.blobs.read(kept.blob_key) == first


def test_overwrite_policy_with_pending_digest(tmp_path: Path, index_url: str) -> None:
    """Under overwrite, the same object sent again is not taken for new content."""
    archive = Archive(tmp_path, index_url, DuplicatePolicy.OVERWRITE)
    ds = datagen.make_dataset()
    first = encode(ds)
    archive.ingest.store_many([first], CLI)
    (again,) = archive.ingest.store_many([first], CLI)
    assert not isinstance(again, Exception) and again.outcome is StoreOutcome.ALREADY_PRESENT
    ds.StudyDescription = "second"
    second = encode(ds)
    (replaced,) = archive.ingest.store_many([second], CLI)
    assert not isinstance(replaced, Exception) and replaced.outcome is StoreOutcome.REPLACED
    row = archive.index.get_instance(ds.SOPInstanceUID)
    assert row is not None and archive.blobs.read(row.blob_key) == second
    assert archive.index.counts()["instances"] == 1


def test_background_fills_pending_digests(archive: Archive) -> None:
    objects = [encode(datagen.make_dataset()) for _ in range(5)]
    archive.ingest.store_many(objects, CLI)
    digests = ContentDigestService(archive.index, archive.blobs)
    assert len(archive.index.pending_content_digests(100)) == 5
    assert digests.fill_pending(batch=3) == 3
    digests.fill_all()
    assert archive.index.pending_content_digests(100) == []
    for data in objects:
        row = archive.index.get_instance(str(dcmread(io.BytesIO(data)).SOPInstanceUID))
        assert row is not None and row.content_sha256 == content_digest(data)
    # A blob that cannot be read is marked, not retried for ever.
    broken = encode(datagen.make_dataset())
    archive.ingest.store_many([broken], CLI)
    (pk, key, _blob_digest), = archive.index.pending_content_digests(10)
    archive.blobs.delete(key)
    assert digests.fill_pending() == 1
    assert archive.index.pending_content_digests(10) == []


def test_inventory_for_reconcile_has_every_data_set_digest(archive: Archive) -> None:
    """A reconcile compares data set digests: the local inventory computes pending ones first."""
    data = encode(datagen.make_dataset())
    archive.ingest.store_many([data], CLI)
    migration = MigrationService(
        MigrationRepository(archive.index.engine), ContentDigestService(archive.index, archive.blobs)
    )
    (study,) = migration.local_inventory().studies.values()
    ((instance,),) = [list(s.instances.values()) for s in study.series.values()]
    assert instance.content_sha256 == content_digest(data)
