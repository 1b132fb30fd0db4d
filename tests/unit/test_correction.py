"""The attribute rules of corrections and writing an object again under new UIDs
(dicomhub.model.correction)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from pydicom.dataset import Dataset, FileMetaDataset

from dicomhub.errors import InvalidRequest
from dicomhub.model.coercion import PatientCoercion, coerce_json, coerce_patient
from dicomhub.model.correction import Reissue, SourceDisposition, parse_assignments, reissue


def test_assignments_of_study_and_patient_attributes() -> None:
    got = parse_assignments(
        ["AccessionNumber=A2", "PatientName=Roe^Jane", "StudyDescription=a=b", "StudyID="]
    )
    assert got == {
        "AccessionNumber": "A2",
        "PatientName": "Roe^Jane",
        "StudyDescription": "a=b",
        "StudyID": "",
    }
    assert parse_assignments({"StudyDate": "20240131"}) == {"StudyDate": "20240131"}


@pytest.mark.parametrize(
    ("items", "says"),
    [
        (["Frobnicate=1"], "not a DICOM keyword"),
        (["StudyInstanceUID=1.2.3"], "is a UID"),
        (["SeriesInstanceUID=1.2.3"], "is a UID"),
        (["ReferencedSOPInstanceUID=1.2"], "is a UID"),
        (["Modality=MR"], "cannot be corrected"),
        (["SeriesDescription=x"], "cannot be corrected"),
        (["StudyDate=yesterday"], "StudyDate (DA)"),
        (["AccessionNumber=" + "9" * 17], "AccessionNumber (SH)"),
        (["PatientSex=" + "X" * 17], "PatientSex (CS)"),
        (["AccessionNumber"], "Keyword=Value"),
        (["=x"], "Keyword=Value"),
        (["StudyID=1", "StudyID=2"], "twice"),
    ],
)
def test_refused_assignments(items: list[str], says: str) -> None:
    with pytest.raises(InvalidRequest, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_assignments(items)


def test_source_disposition() -> None:
    assert SourceDisposition.parse("keep") is SourceDisposition.KEEP
    with pytest.raises(InvalidRequest, match="reject or keep"):
        SourceDisposition.parse("drop")


def _instance(series: str, sop: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.1", series, sop
    ds.AccessionNumber, ds.PatientName = "A1", "Doe^Jane"
    return ds


def test_reissue_shares_series_uids_and_keeps_what_it_replaced() -> None:
    at = dt.datetime(2026, 12, 7, 3, 0, tzinfo=dt.UTC)
    how = Reissue("9.9.9", {"AccessionNumber": "A2"}, "dicomhub cli op", at)
    uid_map: dict[str, str] = {}
    one, two, other = (
        _instance("1.2.1.1", "1.2.1.1.1"),
        _instance("1.2.1.1", "1.2.1.1.2"),
        _instance("1.2.1.2", "1.2.1.2.1"),
    )
    replaced = reissue(one, how, uid_map)
    reissue(two, how, uid_map)
    reissue(other, how, uid_map)

    assert replaced == {"StudyInstanceUID": "1.2.1", "SeriesInstanceUID": "1.2.1.1",
                        "SOPInstanceUID": "1.2.1.1.1", "AccessionNumber": "A1"}  # fmt: skip
    assert one.SeriesInstanceUID == two.SeriesInstanceUID != other.SeriesInstanceUID
    assert len({one.SOPInstanceUID, two.SOPInstanceUID, other.SOPInstanceUID}) == 3
    assert uid_map["1.2.1"] == "9.9.9" and uid_map["1.2.1.1.2"] == two.SOPInstanceUID
    assert one.file_meta.MediaStorageSOPInstanceUID == one.SOPInstanceUID
    assert (one.StudyInstanceUID, one.AccessionNumber, str(one.PatientName)) == ("9.9.9", "A2", "Doe^Jane")
    (item,) = one.OriginalAttributesSequence
    assert item.ReasonForTheAttributeModification == "CORRECT"
    assert item.AttributeModificationDateTime == "20261207030000+0000"
    old = item.ModifiedAttributesSequence[0]
    assert (old.StudyInstanceUID, old.SOPInstanceUID, old.AccessionNumber) == ("1.2.1", "1.2.1.1.1", "A1")
    assert "PatientName" not in old  # unchanged values are not recorded as modified


def _study_coercion(**values: str) -> PatientCoercion:
    return PatientCoercion(
        study_instance_uid="1.2.1", patient_id="", issuer_of_patient_id="", patient_name="",
        patient_birth_date="", patient_sex="", reason="modify", modifying_system="dicomhub cli op",
        modified_at=dt.datetime(2026, 12, 7, tzinfo=dt.UTC), study_values=tuple(values.items()),
        patient=False,
    )  # fmt: skip


def test_study_coercion_alone_leaves_the_patient_module_as_stored() -> None:
    ds = _instance("1.2.1.1", "1.2.1.1.1")
    ds.PatientID = "P1"
    assert coerce_patient(ds, _study_coercion(AccessionNumber="A9", StudyDescription="Fixed"))
    assert (ds.AccessionNumber, ds.StudyDescription, ds.PatientID, str(ds.PatientName)) == (
        "A9", "Fixed", "P1", "Doe^Jane",
    )  # fmt: skip
    old = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    assert old.AccessionNumber == "A1" and "StudyDescription" not in old and "PatientID" not in old
    # Once it carries them, nothing more is recorded.
    assert not coerce_patient(ds, _study_coercion(AccessionNumber="A9", StudyDescription="Fixed"))


def test_study_coercion_of_dicom_json() -> None:
    ds = _instance("1.2.1.1", "1.2.1.1.1")
    ds.ReferringPhysicianName = "Old^Doc"
    text = json.dumps(ds.to_json_dict())
    out = Dataset.from_json(coerce_json(text, _study_coercion(ReferringPhysicianName="New^Doc")))
    assert str(out.ReferringPhysicianName) == "New^Doc"
    assert (
        str(out.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].ReferringPhysicianName)
        == "Old^Doc"
    )
    assert out.SOPInstanceUID == "1.2.1.1.1"
