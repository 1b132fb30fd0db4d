"""C-FIND identifiers encoded without pydicom Datasets decode like pydicom's own."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataelem import DataElement
from pydicom.filereader import read_dataset

from dicomhub.dimse.identifiers import encode_match
from dicomhub.model.match import Match


@pytest.mark.parametrize(
    ("ts", "implicit"), [("1.2.840.10008.1.2.1", False), ("1.2.840.10008.1.2", True)]
)
def test_round_trip(ts: str, implicit: bool) -> None:
    m = Match()
    m.set("QueryRetrieveLevel", "STUDY")
    m.set("PatientName", "Müller^Jürgen")
    m.set("SpecificCharacterSet", "ISO_IR 192")
    m.set("StudyInstanceUID", "1.2.3")  # odd length: padded with NUL
    m.set("ModalitiesInStudy", ["CT", "MR"])
    m.set("NumberOfStudyRelatedInstances", "12")
    m.set("AccessionNumber", None)
    m.set("ReferencedStudySequence", None)
    m.set("InstitutionName", DataElement(0x00080080, "LO", "General Hospital"))
    ds = read_dataset(BytesIO(encode_match(m, ts)), implicit, True)
    assert ds.QueryRetrieveLevel == "STUDY"
    assert str(ds.PatientName) == "Müller^Jürgen"
    assert ds.StudyInstanceUID == "1.2.3"
    assert list(ds.ModalitiesInStudy) == ["CT", "MR"]
    assert ds.NumberOfStudyRelatedInstances == 12
    assert ds.AccessionNumber == ""
    assert len(ds.ReferencedStudySequence) == 0
    assert ds.InstitutionName == "General Hospital"
    assert [e.tag for e in ds] == sorted(e.tag for e in ds)


def test_big_endian_goes_through_pydicom() -> None:
    m = Match()
    m.set("PatientID", "P1")
    ds = read_dataset(BytesIO(encode_match(m, "1.2.840.10008.1.2.2")), False, False)
    assert ds.PatientID == "P1"
