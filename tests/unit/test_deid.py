"""The de-identification engine: keys, determinism, references, options, recipes, burned-in risk,
and a comparison with an independent de-identifier (dicognito)."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    KeyObjectSelectionDocumentStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
)

from dicomhub.deid import (
    Options,
    Profile,
    ProjectKey,
    Recipe,
    burned_in_risk,
    deidentify,
    load_secret,
)
from dicomhub.deid.table import row_action, table_rows
from dicomhub.errors import DeidentificationError
from dicomhub.model.identifiers import is_valid_uid
from tests import datagen

SECRET = b"unit-test-secret-0123456789"
KEY = ProjectKey.derive(SECRET, "trial-A")


def encoded(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# ------------------------------------------------------------------ options, secret, key


def test_options_parse_words_and_refuse_unknown_or_exclusive() -> None:
    opts = Options.parse(["retain-uids", "clean_descriptors", ""])
    assert opts.retain_uids and opts.clean_descriptors and not opts.retain_device_identity
    with pytest.raises(DeidentificationError, match="unknown de-identification option 'retain-everything'"):
        Options.parse(["retain-everything"])
    with pytest.raises(DeidentificationError, match="exclude each other"):
        Options.parse(["retain-long-full-dates", "retain-long-modified-dates"])


def test_load_secret_from_environment_or_key_file(tmp_path: Path) -> None:
    assert load_secret(None, {"DICOMHUB_DEID_SECRET": "s" * 20}) == b"s" * 20
    key_file = tmp_path / "deid.key"
    key_file.write_bytes(b"k" * 32 + b"\n")
    assert load_secret(key_file, {}) == b"k" * 32
    assert load_secret(key_file, {"DICOMHUB_DEID_SECRET": "e" * 16}) == b"e" * 16  # env first
    with pytest.raises(DeidentificationError, match="no de-identification secret: set DICOMHUB_DEID_SECRET"):
        load_secret(None, {})
    with pytest.raises(DeidentificationError, match="cannot read the de-identification key file"):
        load_secret(tmp_path / "missing.key", {})
    with pytest.raises(DeidentificationError, match="shorter than 16 bytes"):
        load_secret(None, {"DICOMHUB_DEID_SECRET": "short"})


def test_project_key_is_keyed_deterministic_and_never_shows_the_key() -> None:
    original = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
    same = ProjectKey.derive(SECRET, "trial-A")
    other_project = ProjectKey.derive(SECRET, "trial-B")
    other_secret = ProjectKey.derive(b"another-secret-of-enough-length", "trial-A")
    new = KEY.uid(original)
    assert new == same.uid(original)
    assert new.startswith("2.25.") and is_valid_uid(new) and len(new) <= 44
    assert len({new, other_project.uid(original), other_secret.uid(original)}) == 3
    assert KEY.pseudonym("patient_id", "P1") == same.pseudonym("patient_id", "P1")
    assert KEY.pseudonym("patient_id", "P1") != other_project.pseudonym("patient_id", "P1")
    assert KEY.pseudonym("patient_id", "P1") != KEY.pseudonym("accession_number", "P1")
    offsets = {KEY.date_offset_days(f"P{i}") for i in range(50)}
    assert all(-3650 <= d <= -1 for d in offsets) and len(offsets) > 40
    assert KEY.fingerprint == same.fingerprint != other_secret.fingerprint
    shown = repr(KEY) + str(KEY)
    assert SECRET.decode() not in shown and KEY._key.hex() not in shown
    with pytest.raises(DeidentificationError):
        ProjectKey.derive(b"short", "p")


def test_same_output_in_another_process(tmp_path: Path) -> None:
    src = tmp_path / "ct.dcm"
    ds = datagen.write_instance(src, rows=16, cols=16)
    here = hashlib.sha256(encoded(deidentify(ds, Profile(), KEY).dataset)).hexdigest()
    code = (
        "import hashlib, io, sys\n"
        "from pydicom import dcmread\n"
        "from dicomhub.deid import Profile, ProjectKey, deidentify\n"
        "key = ProjectKey.derive(sys.argv[2].encode(), sys.argv[3])\n"
        "out = deidentify(dcmread(sys.argv[1]), Profile(), key).dataset\n"
        "buf = io.BytesIO(); out.save_as(buf, enforce_file_format=True)\n"
        "print(hashlib.sha256(buf.getvalue()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}

    def child(secret: bytes, project: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(src), secret.decode(), project],
            capture_output=True, text=True, env=env, check=True, timeout=60,
        )  # fmt: skip
        return proc.stdout.strip()

    assert child(SECRET, "trial-A") == here
    assert child(SECRET, "trial-B") != here
    assert child(b"a-different-secret-entirely", "trial-A") != here


# ------------------------------------------------------------------ data sets


def test_input_is_not_mutated_and_part10_round_trips(tmp_path: Path) -> None:
    datagen.write_instance(tmp_path / "in.dcm", rows=32, cols=32)
    ds = dcmread(tmp_path / "in.dcm")
    before = encoded(ds)
    result = deidentify(ds, Profile(), KEY)
    assert encoded(ds) == before
    out = result.dataset
    path = tmp_path / "out.dcm"
    out.save_as(path, enforce_file_format=True)
    back = dcmread(path)
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID == KEY.uid(ds.SOPInstanceUID)
    assert back.PixelData == ds.PixelData
    assert back.PatientIdentityRemoved == "YES"
    assert back.LongitudinalTemporalInformationModified == "REMOVED"
    codes = [item.CodeValue for item in back.DeidentificationMethodCodeSequence]
    assert codes == ["113100"] and back.DeidentificationMethodCodeSequence[0].CodingSchemeDesignator == "DCM"
    kinds = {r.kind for r in result.replacements}
    assert {"uid", "patient_id", "patient_name", "accession_number"} <= kinds
    assert {r.original for r in result.replacements} >= {ds.PatientID, ds.StudyInstanceUID}
    assert ("RequestAttributesSequence", "X") in {(a.path, a.action) for a in result.actions}


def key_object_selection(images: list[Dataset]) -> Dataset:
    """A Key Object Selection document referencing ``images`` (evidence and content items)."""
    first = images[0]
    kos = Dataset()
    kos.SOPClassUID = KeyObjectSelectionDocumentStorage
    kos.SOPInstanceUID = datagen.uid()
    kos.StudyInstanceUID = first.StudyInstanceUID
    kos.SeriesInstanceUID = datagen.uid()
    kos.PatientID, kos.PatientName, kos.Modality = first.PatientID, first.PatientName, "KO"
    by_series: dict[str, list[Dataset]] = {}
    for image in images:
        by_series.setdefault(image.SeriesInstanceUID, []).append(image)
    series_items = []
    for series_uid, members in by_series.items():
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        refs = []
        for image in members:
            ref = Dataset()
            ref.ReferencedSOPClassUID = image.SOPClassUID
            ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
            refs.append(ref)
        series.ReferencedSOPSequence = Sequence(refs)
        series_items.append(series)
    study = Dataset()
    study.StudyInstanceUID = first.StudyInstanceUID
    study.ReferencedSeriesSequence = Sequence(series_items)
    kos.CurrentRequestedProcedureEvidenceSequence = Sequence([study])
    content = []
    for image in images:
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "IMAGE"
        ref = Dataset()
        ref.ReferencedSOPClassUID = image.SOPClassUID
        ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
        item.ReferencedSOPSequence = Sequence([ref])
        content.append(item)
    kos.ContentSequence = Sequence(content)
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID  # as an RT Structure Set refers to it
    kos.ReferencedFrameOfReferenceSequence = Sequence([frame])
    return kos


def test_references_stay_consistent_across_a_multi_series_study() -> None:
    study, frame = datagen.uid(), datagen.uid()
    images = [
        datagen.make_dataset(study_uid=study, series_uid=series, instance_number=i, rows=8, cols=8,
                             extra={"FrameOfReferenceUID": frame})
        for series in (datagen.uid(), datagen.uid())
        for i in (1, 2, 3)
    ]  # fmt: skip
    kos = key_object_selection(images)
    out_images = [deidentify(ds, Profile(), KEY).dataset for ds in images]
    kos_result = deidentify(kos, Profile(options=Options(clean_structured_content=True)), KEY)
    out_kos = kos_result.dataset
    nested = "CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[1].SeriesInstanceUID"
    assert (nested, "U") in {(a.path, a.action) for a in kos_result.actions}
    sop_uids = {ds.SOPInstanceUID for ds in out_images}
    series_uids = {ds.SeriesInstanceUID for ds in out_images}
    assert len(sop_uids) == 6 and len(series_uids) == 2
    assert {ds.StudyInstanceUID for ds in out_images} == {out_kos.StudyInstanceUID}
    assert {ds.FrameOfReferenceUID for ds in out_images} == {
        out_kos.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    }
    evidence = out_kos.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == out_kos.StudyInstanceUID
    assert {s.SeriesInstanceUID for s in evidence.ReferencedSeriesSequence} == series_uids
    refs = [r for s in evidence.ReferencedSeriesSequence for r in s.ReferencedSOPSequence]
    assert {r.ReferencedSOPInstanceUID for r in refs} == sop_uids
    content = out_kos.ContentSequence
    assert {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in content} == sop_uids
    # class UIDs are the standard's, not identifiers: kept
    assert {r.ReferencedSOPClassUID for r in refs} == {CTImageStorage}
    assert out_kos.SOPClassUID == KeyObjectSelectionDocumentStorage
    originals = {ds.SOPInstanceUID for ds in images} | {study, frame}
    assert not originals & set(json.dumps(out_kos.to_json_dict()).replace('"', " ").split())


def test_well_known_and_class_uids_are_kept() -> None:
    ds = datagen.make_dataset(rows=8, cols=8)
    ds.RelatedGeneralSOPClassUID = "1.2.3.999.1"  # a private SOP class: a class, not an instance
    ds.CodingSchemeIdentificationSequence = Sequence([Dataset()])
    ds.CodingSchemeIdentificationSequence[0].CodingSchemeUID = "2.16.840.1.113883.6.96"
    ds.add_new(0x00091010, "UI", "1.2.3.4")  # private: removed, not mapped
    out = deidentify(ds, Profile(), KEY).dataset
    assert out.SOPClassUID == ds.SOPClassUID
    assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert out.RelatedGeneralSOPClassUID == "1.2.3.999.1"
    assert out.CodingSchemeIdentificationSequence[0].CodingSchemeUID == "2.16.840.1.113883.6.96"
    assert 0x00091010 not in out


def test_retain_uids_keeps_every_uid() -> None:
    ds = datagen.make_dataset(rows=8, cols=8)
    out = deidentify(ds, Profile(options=Options(retain_uids=True)), KEY).dataset
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert out[keyword].value == ds[keyword].value
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100", "113110"]


def test_modified_dates_shift_every_date_of_a_patient_by_one_offset() -> None:
    a = datagen.make_dataset(patient_id="PX", study_date="20200115", rows=8, cols=8)
    a.AcquisitionDateTime = "20200115101500.250000+0100"
    b = datagen.make_dataset(patient_id="PX", study_date="20210301", rows=8, cols=8)
    other = datagen.make_dataset(patient_id="PY", study_date="20200115", rows=8, cols=8)
    profile = Profile(options=Options(retain_long_modified_dates=True))
    out_a, out_b, out_other = (deidentify(ds, profile, KEY).dataset for ds in (a, b, other))
    offset = KEY.date_offset_days("PX")
    import datetime as dt

    def day(text: str) -> dt.date:
        return dt.datetime.strptime(text, "%Y%m%d").date()

    assert (day(out_a.StudyDate) - day("20200115")).days == offset
    assert (day(out_b.StudyDate) - day("20210301")).days == offset
    assert out_other.StudyDate != out_a.StudyDate  # another patient, another offset (keyed)
    assert out_a.StudyTime == a.StudyTime  # whole days: times unchanged
    assert out_a.AcquisitionDateTime[8:] == "101500.250000+0100"
    assert out_a.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "113107" in [i.CodeValue for i in out_a.DeidentificationMethodCodeSequence]
    full = deidentify(a, Profile(options=Options(retain_long_full_dates=True)), KEY).dataset
    assert full.StudyDate == "20200115" and full.LongitudinalTemporalInformationModified == "UNMODIFIED"


# ------------------------------------------------------------------ recipes


RECIPE = """
[attributes]
PatientSex = "keep"
"(0008,1030)" = { action = "replace", value = "RESEARCH" }
BodyPartExamined = "remove"
OtherPatientIDs = "hash"
StudyDate = "shift-date"
"""


def test_recipe_overrides_the_profile_at_any_depth() -> None:
    ds = datagen.make_dataset(patient_id="PR", rows=8, cols=8)
    ds.OtherPatientIDs = "MRN-42"
    ds.ProcedureCodeSequence[0].StudyDate = "20200115"  # nested: the rule applies there too
    recipe = Recipe.parse(RECIPE)
    result = deidentify(ds, Profile(name="trial-A", recipe=recipe), KEY)
    out = result.dataset
    assert out.PatientSex == ds.PatientSex
    assert out.StudyDescription == "RESEARCH"
    assert "BodyPartExamined" not in out
    assert out.OtherPatientIDs == KEY.pseudonym("hash:OtherPatientIDs", "MRN-42")
    assert out.StudyDate != ds.StudyDate and len(out.StudyDate) == 8
    assert out.ProcedureCodeSequence[0].StudyDate == out.StudyDate
    words = {(a.path, a.action) for a in result.actions}
    assert ("StudyDescription", "replace") in words and ("BodyPartExamined", "remove") in words
    assert "project recipe (trial-A)" in out.DeidentificationMethod


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[attributes]\nPatientSex = "obliterate"', "unknown action 'obliterate'"),
        ('[attributes]\nNotAKeyword = "keep"', "neither a DICOM keyword nor a tag"),
        ('[attributes]\nPatientName = "shift-date"', "shift-date needs a DA or DT attribute"),
        ('[attributes]\nPatientName = { action = "replace" }', "replace needs a string value"),
        ('[other]\nx = 1', "unknown tables"),
        ("[attributes\n", "not valid TOML"),
    ],
)
def test_recipe_errors_are_clear(text: str, message: str) -> None:
    with pytest.raises(DeidentificationError, match=message):
        Recipe.parse(text)


def test_recipe_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE, encoding="utf-8")
    assert 0x00100040 in Recipe.load(path).rules
    with pytest.raises(DeidentificationError, match="cannot read recipe"):
        Recipe.load(tmp_path / "none.toml")


# ------------------------------------------------------------------ burned-in annotation


def test_burned_in_risk_heuristics() -> None:
    ct = datagen.make_dataset(rows=8, cols=8)
    assert burned_in_risk(ct) is None
    sc = copy.deepcopy(ct)
    sc.SOPClassUID = SecondaryCaptureImageStorage
    sc.ImageType = ["DERIVED", "SECONDARY"]
    risk = burned_in_risk(sc)
    assert risk is not None and any("Secondary Capture" in r for r in risk.reasons)
    sc.BurnedInAnnotation = "NO"
    assert burned_in_risk(sc) is None  # the creator's statement wins over the class heuristic
    us = copy.deepcopy(ct)
    us.SOPClassUID, us.Modality = UltrasoundImageStorage, "US"
    assert burned_in_risk(us) is not None
    marked = copy.deepcopy(ct)
    marked.BurnedInAnnotation = "YES"
    result = deidentify(marked, Profile(), KEY)
    assert result.burned_in is not None and "BurnedInAnnotation=YES" in result.burned_in.reasons
    del ct.PixelData
    ct.BurnedInAnnotation = "YES"
    assert burned_in_risk(ct) is None  # no pixels, nothing burned in


# ------------------------------------------------------------------ comparison with dicognito


def rich_dataset() -> Dataset:
    ds = datagen.make_dataset(rows=8, cols=8)
    extra = {
        "InstitutionName": "General Hospital", "InstitutionAddress": "2 Hospital Road",
        "StationName": "CT01", "DeviceSerialNumber": "SN123", "OperatorsName": "Op^Al",
        "PatientAge": "045Y", "PatientWeight": "70", "PatientSize": "1.8", "PatientAddress": "1 Main St",
        "AcquisitionDate": "20200115", "ContentDate": "20200115", "ContentTime": "101010",
        "InstanceCreationDate": "20200115", "ManufacturerModelName": "Scanner", "SoftwareVersions": "1.0",
        "ProtocolName": "Chest", "PerformingPhysicianName": "Doc^Who", "OtherPatientIDs": "MRN1",
        "EthnicGroup": "X", "PatientComments": "John is fine", "InstitutionalDepartmentName": "Radiology",
    }  # fmt: skip
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    "options",
    [
        Options(),
        Options(
            retain_device_identity=True, retain_institution_identity=True,
            retain_patient_characteristics=True, retain_long_full_dates=True,
        ),
    ],  # fmt: skip
    ids=["basic", "retain-device-institution-patient-dates"],
)
def test_where_dicomhub_keeps_what_dicognito_changes_the_standard_says_keep(options: Options) -> None:
    from dicognito.anonymizer import Anonymizer

    ds = rich_dataset()
    theirs = copy.deepcopy(ds)
    Anonymizer(seed="comparison").anonymize(theirs)
    ours = deidentify(ds, Profile(options=options), KEY).dataset
    actions = {row.tag_int: row_action(row, options) for row in table_rows() if row.tag_int is not None}
    kept_by_us_only = []
    for elem in ds:
        tag = int(elem.tag)
        they_changed = tag not in theirs or theirs[tag].value != elem.value
        we_kept = tag in ours and ours[tag].value == elem.value
        if they_changed and we_kept:
            kept_by_us_only.append(elem.keyword)
            # the table keeps it under these options, or does not list it (and it is no UID)
            assert actions.get(tag, "K") == "K" and elem.VR != "UI", elem.keyword
    if options.chosen:
        # the retain options really keep what dicognito always replaces
        assert {"InstitutionName", "StationName", "StudyDate"} <= set(kept_by_us_only)
    # and nothing dicognito keeps of the identifying kind survives with us under the Basic Profile
    if not options.chosen:
        for keyword in ("PatientAge", "PatientWeight", "PatientSize", "DeviceSerialNumber", "ProtocolName"):
            assert ours.get(keyword) != ds.get(keyword), keyword


def structured_report(images: list[Dataset]) -> Dataset:
    """A real Comprehensive SR (highdicom) with a free-text finding naming the patient."""
    import highdicom as hd
    from highdicom.sr import (
        ContainerContentItem,
        ImageContentItem,
        RelationshipTypeValues,
        TextContentItem,
    )
    from pydicom.sr.codedict import codes

    container = ContainerContentItem(name=codes.DCM.ImagingMeasurementReport)
    container.ContentSequence = [
        TextContentItem(
            name=codes.DCM.Finding,
            value="John Doe (MRN PIDSR) has a nodule",
            relationship_type=RelationshipTypeValues.CONTAINS,
        ),
        ImageContentItem(
            name=codes.DCM.SourceOfMeasurement,
            referenced_sop_class_uid=images[0].SOPClassUID,
            referenced_sop_instance_uid=images[0].SOPInstanceUID,
            relationship_type=RelationshipTypeValues.CONTAINS,
        ),
    ]
    return hd.sr.ComprehensiveSR(
        evidence=images, content=container, series_instance_uid=datagen.uid(), series_number=9,
        sop_instance_uid=datagen.uid(), instance_number=1, manufacturer="test",
    )  # fmt: skip


def test_sr_free_text_follows_the_content_sequence_action() -> None:
    study, series = datagen.uid(), datagen.uid()
    images = [
        datagen.make_dataset(patient_id="PIDSR", study_uid=study, series_uid=series, instance_number=n,
                             rows=8, cols=8)
        for n in (1, 2)
    ]  # fmt: skip
    sr = structured_report(images)
    basic = deidentify(sr, Profile(), KEY).dataset
    finding, image = basic.ContentSequence[0], basic.ContentSequence[1]
    assert finding.TextValue == "DEIDENTIFIED"  # Content Sequence: D
    concept = sr.ContentSequence[0].ConceptNameCodeSequence[0]
    assert finding.ConceptNameCodeSequence[0].CodeValue == concept.CodeValue
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == KEY.uid(images[0].SOPInstanceUID)
    series = basic.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert {r.ReferencedSOPInstanceUID for s in series for r in s.ReferencedSOPSequence} == {
        KEY.uid(ds.SOPInstanceUID) for ds in images
    }
    cleaned = deidentify(sr, Profile(options=Options(clean_structured_content=True)), KEY).dataset
    text = cleaned.ContentSequence[0].TextValue
    assert text.endswith("has a nodule") and "John" not in text and "PIDSR" not in text
