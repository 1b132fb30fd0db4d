"""Patient updates, merges and operator corrections in the archive, and the
patient coercion of objects on the way out (PS3.3 C.12.1), on a real index."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomhub.bootstrap import open_archive
from dicomhub.config import load_settings
from dicomhub.errors import NotFound, PatientMismatch
from dicomhub.model.caller import Caller
from dicomhub.model.coercion import PatientCoercion, coerce_json, coerce_patient
from dicomhub.model.orders import Patient, PatientRef
from dicomhub.model.query import query_from_identifier
from dicomhub.services.archive import Archive
from dicomhub.services.coercion import coerce_part10
from tests import datagen

CLI = Caller.cli()


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


def _coercion(**values: str) -> PatientCoercion:
    base = {"patient_id": "PID0001", "issuer_of_patient_id": "", "patient_name": "Roe^Jane",
            "patient_birth_date": "19810203", "patient_sex": "F"}  # fmt: skip
    base.update(values)
    return PatientCoercion(
        study_instance_uid="1.2.3", reason="update", modifying_system="dicomhub hl7 RIS",
        modified_at=dt.datetime(2026, 12, 6, 18, 0, 5, tzinfo=dt.UTC), **base,
    )  # fmt: skip


def test_coercion_records_the_replaced_values_in_original_attributes_sequence() -> None:
    data = _encode(datagen.make_dataset(patient_name="Doe^John", birth_date="19700101", sex="M"))
    before = hashlib.sha256(data).hexdigest()
    out = dcmread(io.BytesIO(coerce_part10(data, _coercion())))
    assert hashlib.sha256(data).hexdigest() == before
    assert (str(out.PatientName), out.PatientBirthDate, out.PatientSex, out.PatientID) == (
        "Roe^Jane", "19810203", "F", "PID0001",
    )  # fmt: skip
    (item,) = out.OriginalAttributesSequence
    assert item.ReasonForTheAttributeModification == "CORRECT"
    assert item.ModifyingSystem == "dicomhub hl7 RIS"
    assert item.AttributeModificationDateTime == "20261206180005+0000"
    (old,) = item.ModifiedAttributesSequence
    # Only what changed is recorded, with its old value.
    assert str(old.PatientName) == "Doe^John"
    assert old.PatientBirthDate == "19700101"
    assert old.PatientSex == "M"
    assert "PatientID" not in old
    # Everything else is as stored, pixel data included.
    stored = dcmread(io.BytesIO(data))
    assert out.PixelData == stored.PixelData
    assert out.SOPInstanceUID == stored.SOPInstanceUID
    assert out.file_meta.TransferSyntaxUID == stored.file_meta.TransferSyntaxUID


def test_an_object_already_correct_is_left_as_stored_and_history_is_kept() -> None:
    data = _encode(datagen.make_dataset(patient_name="Roe^Jane", birth_date="19810203", sex="F"))
    assert coerce_part10(data, _coercion()) is data
    ds = datagen.make_dataset(patient_name="A^B")
    assert coerce_patient(ds, _coercion(patient_name="C^D"))
    assert coerce_patient(ds, _coercion(patient_name="E^F", patient_id="OTHER", issuer_of_patient_id="HOSP"))
    first, second = ds.OriginalAttributesSequence
    assert str(first.ModifiedAttributesSequence[0].PatientName) == "A^B"
    old = second.ModifiedAttributesSequence[0]
    assert (str(old.PatientName), old.PatientID) == ("C^D", "PID0001")
    assert (ds.PatientID, ds.IssuerOfPatientID) == ("OTHER", "HOSP")


def test_coerce_json_matches_the_object_coercion() -> None:
    ds = datagen.make_dataset(patient_name="Doe^John")
    doc = ds.to_json_dict()
    text = coerce_json(json.dumps(doc), _coercion())
    got = json.loads(text)
    assert got["00100010"]["Value"] == [{"Alphabetic": "Roe^Jane"}]
    item = got["04000561"]["Value"][0]
    assert item["04000565"]["Value"] == ["CORRECT"]
    assert item["04000550"]["Value"][0]["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]
    assert got["0020000D"] == doc["0020000D"]


@pytest.fixture
def archive(tmp_path: Path, index_url: str) -> Iterator[Archive]:
    settings = load_settings(
        {"data_dir": tmp_path / "data", "database_url": index_url, "patient_id_issuer": "HOSP"}, environ={}
    )
    arch = open_archive(settings)
    yield arch
    arch.close()


def _studies(archive: Archive, **keys: str) -> list[Dataset]:
    ident = Dataset()
    ident.PatientName = ""
    ident.PatientBirthDate = ""
    ident.PatientID = ""
    ident.StudyInstanceUID = ""
    for k, v in keys.items():
        setattr(ident, k, v)
    return [m.to_dataset() for m in archive.search.search(query_from_identifier(ident, "STUDY"), CLI)]


def _store(archive: Archive, study: str, pid: str, n: int = 1) -> None:
    for i in range(n):
        ds = datagen.make_dataset(
            study_uid=study, patient_id=pid, patient_name="Doe^John", instance_number=i + 1
        )
        archive.ingest.store_part10(_encode(ds), CLI)


def test_update_merge_and_set_patient_reach_the_index_and_the_objects(archive: Archive) -> None:
    a, b, c = datagen.uid(), datagen.uid(), datagen.uid()
    _store(archive, a, "P1", 2)
    _store(archive, b, "P2")
    _store(archive, c, "P3")
    # Another issuer's P1 is someone else: only the patient of record changes.
    archive.orders.put_patient(Patient(PatientRef("P1", "ELSEWHERE"), "Other^Person"), CLI)
    assert str(_studies(archive, StudyInstanceUID=a)[0].PatientName) == "Doe^John"
    archive.orders.put_patient(Patient(PatientRef("P1", "HOSP"), "Roe^Jane", "19810203", "F"), CLI)
    (found,) = _studies(archive, StudyInstanceUID=a)
    assert (str(found.PatientName), found.PatientBirthDate) == ("Roe^Jane", "19810203")
    assert _studies(archive, PatientName="ROE*")  # the matching key follows the name

    rows = archive.retrieve.instances(archive.wado.query(a), CLI)
    coerced = archive.retrieve.coercions(rows)
    assert set(coerced) == {a}
    stored = archive.retrieve.read(rows[0])
    sent = dcmread(io.BytesIO(archive.retrieve.read(rows[0], coerced[a])))
    assert str(sent.PatientName) == "Roe^Jane"
    assert str(sent.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientName) == "Doe^John"
    assert hashlib.sha256(archive.retrieve.read(rows[0])).hexdigest() == rows[0].sha256
    assert archive.retrieve.read(rows[0]) == stored
    # The other ways out: a spooled copy (large objects, stores without files) and
    # a re-encoded or transcoded WADO answer are corrected too.
    assert archive.retrieve.local_path(rows[0], coerced[a]) is None
    spooled = Path(archive.retrieve.spooled_copy(rows[0], coerced[a]))
    try:
        assert str(dcmread(spooled).PatientName) == "Roe^Jane"
    finally:
        spooled.unlink()
    for syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.5"):
        body = b"".join(archive.wado.encoded(rows[0], syntax, coerced[a]))
        out = dcmread(io.BytesIO(body))
        assert (out.file_meta.TransferSyntaxUID, str(out.PatientName)) == (syntax, "Roe^Jane")
        assert str(out.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientName) == "Doe^John"
    (_row, meta) = archive.wado.metadata(CLI, a, instance=None)[0]
    assert json.loads(meta)["00100010"]["Value"] == [{"Alphabetic": "Roe^Jane"}]

    # A40: P2's study moves under P1; P2 is gone from the archive.
    archive.orders.merge_patients(Patient(PatientRef("P1", "HOSP"), "Roe^Jane"), PatientRef("P2"), CLI, "t")
    assert [str(s.PatientID) for s in _studies(archive, StudyInstanceUID=b)] == ["P1"]
    assert not _studies(archive, PatientID="P2")
    assert {s.StudyInstanceUID for s in _studies(archive, PatientID="P1")} == {a, b}

    # The operator's correction, demographics from the archive's patient P1.
    moved = archive.patients.set_patient(c, PatientRef("P1"), CLI)
    assert (moved.patient_name, moved.patient_birth_date) == ("Roe^Jane", "")
    assert [str(s.PatientID) for s in _studies(archive, StudyInstanceUID=c)] == ["P1"]
    with pytest.raises(NotFound):
        archive.patients.set_patient(datagen.uid(), PatientRef("P1"), CLI)
    # One audit record per change, naming the studies it reached.
    events = [e for e in archive.audit.events(limit=100) if e.detail.get("archive")]
    assert [(e.detail["archive"], {s.study_instance_uid for s in e.studies}) for e in events] == [
        ("set-patient", {a, b, c}), ("merge", {a, b}), ("update", {a}),
    ]  # fmt: skip


def test_a_study_that_arrives_after_its_patient_was_corrected_leaves_corrected(archive: Archive) -> None:
    a, later, other = datagen.uid(), datagen.uid(), datagen.uid()
    _store(archive, a, "P1")
    _store(archive, other, "P9")
    archive.orders.put_patient(Patient(PatientRef("P1", "HOSP"), "Roe^Jane", "19810203", "F"), CLI)
    _store(archive, later, "P1")  # the modality still sends the old name
    (found,) = _studies(archive, StudyInstanceUID=later)
    assert str(found.PatientName) == "Roe^Jane"  # the index keeps the corrected patient
    rows = archive.retrieve.instances(archive.wado.query(later), CLI)
    coerced = archive.retrieve.coercions([*rows, *archive.retrieve.instances(archive.wado.query(other), CLI)])
    assert set(coerced) == {later}  # P9 was never corrected
    sent = dcmread(io.BytesIO(archive.retrieve.read(rows[0], coerced[later])))
    assert (str(sent.PatientName), sent.PatientBirthDate) == ("Roe^Jane", "19810203")
    assert str(sent.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientName) == "Doe^John"


def test_late_objects_of_a_corrected_study_join_it_and_others_are_still_refused(archive: Archive) -> None:
    moved, plain = datagen.uid(), datagen.uid()
    _store(archive, moved, "P1")
    _store(archive, plain, "P2")
    before = archive.index.last_change()
    archive.patients.set_patient(moved, PatientRef("P7"), CLI)
    logged = {(c["change_type"], c["level"], c["uid"]) for c in archive.index.changes(since=before)}
    assert logged == {("created", "PATIENT", "P7"), ("updated", "STUDY", moved), ("deleted", "PATIENT", "P1")}
    # The modality sends the rest of the study with the Patient ID it had: a new
    # series, so that nothing the ingest path remembers decides for the index.
    late = datagen.make_dataset(study_uid=moved, patient_id="P1", series_uid=datagen.uid(), instance_number=9)
    archive.ingest.store_part10(_encode(late), CLI)
    (found,) = _studies(archive, StudyInstanceUID=moved)
    assert str(found.PatientID) == "P7"
    assert not _studies(archive, PatientID="P1")  # no patient made for the old id
    rows = archive.retrieve.instances(archive.wado.query(moved), CLI)
    coerced = archive.retrieve.coercions(rows)
    sent = [dcmread(io.BytesIO(archive.retrieve.read(r, coerced[moved]))) for r in rows]
    assert sorted((int(ds.InstanceNumber), str(ds.PatientID)) for ds in sent) == [(1, "P7"), (9, "P7")]
    # A study that was never corrected still refuses another patient's object.
    intruder = datagen.make_dataset(study_uid=plain, patient_id="P3", series_uid=datagen.uid())
    with pytest.raises(PatientMismatch):
        archive.ingest.store_part10(_encode(intruder), CLI)
