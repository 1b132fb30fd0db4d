"""IOD validation on pydicom's sample files and on deliberately broken data sets."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import pydicom
import pydicom.config
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

from dicomhub.iod import tables
from dicomhub.iod.validate import Finding, Severity, validate_dataset, validate_encoded, validate_part10

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(autouse=True)
def _lenient_writing() -> Iterator[None]:
    # The broken values below are broken on purpose: pydicom must not refuse to write them.
    saved = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    yield
    pydicom.config.settings.writing_validation_mode = saved


def sample(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, name
    return str(path)


def ct() -> Dataset:
    return pydicom.dcmread(sample("CT_small.dcm"))


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def check(ds: Dataset) -> list[Finding]:
    """Validate in memory and after a write-then-read round trip; both must agree."""
    direct = validate_dataset(ds)
    encoded = validate_part10(encode(ds))
    assert [(f.code, f.attribute) for f in direct] == [(f.code, f.attribute) for f in encoded]
    return encoded


def codes(findings: list[Finding]) -> set[tuple[str, str]]:
    return {(f.code, f.attribute) for f in findings}


# ------------------------------------------------------------------ real sample files

# What each of pydicom's sample files produces (recorded; each finding checked by hand
# against PS3.3: these files really lack these attributes or carry these values).
SAMPLES: dict[str, set[tuple[str, str]]] = {
    "CT_small.dcm": set(),
    "MR_small.dcm": set(),
    "rtplan.dcm": set(),
    "US1_J2KR.dcm": set(),
    "SC_rgb.dcm": set(),
    "JPEG2000.dcm": set(),
    "MR-SIEMENS-DICOM-WithOverlays.dcm": set(),
    "waveform_ecg.dcm": set(),
    "reportsi.dcm": set(),
    "rtdose.dcm": {
        ("type2-missing", "OperatorsName"),  # RT Series module
        ("uid", "ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID"),  # component "0123"
    },
    "emri_small.dcm": {
        ("type2-missing", "Manufacturer"),
        ("type1-missing", "ManufacturerModelName"),  # Enhanced General Equipment
        ("type1-empty", "DeviceSerialNumber"),
        ("type1-missing", "SharedFunctionalGroupsSequence"),
        ("type1-missing", "DimensionOrganizationSequence"),
        ("type2-missing", "AcquisitionContextSequence"),
    },
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_files(name: str) -> None:
    found = validate_part10(sample(name))
    got = codes(found)
    expected = SAMPLES[name]
    # Manufacturer is Type 2 in General Equipment and Type 1 in Enhanced General Equipment.
    if name == "emri_small.dcm":
        got = {("type2-missing", "Manufacturer") if a == "Manufacturer" else (c, a) for c, a in got}
    assert got == expected, found


def test_sample_read_from_path_bytes_and_stream_agree() -> None:
    path = sample("rtdose.dcm")
    with open(path, "rb") as fp:
        data = fp.read()
    by_path = validate_part10(path)
    assert validate_part10(data) == by_path
    assert validate_part10(io.BytesIO(data)) == by_path


def test_pixel_data_presence_is_seen_without_reading_it() -> None:
    ds = ct()
    assert not any(f.attribute == "PixelData" for f in check(ds))
    del ds.PixelData
    found = check(ds)
    assert ("conditional-missing", "PixelData") in codes(found)


def test_data_set_without_file_meta_in_a_transfer_syntax() -> None:
    ds = ct()
    del ds.PatientID
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False  # explicit VR little endian, as read
    pydicom.filewriter.write_dataset(buf, ds)
    found = validate_encoded(buf.getvalue(), "1.2.840.10008.1.2.1")
    assert codes(found) == {("type2-missing", "PatientID")}


# ------------------------------------------------------------------ broken data sets


def test_removed_type1() -> None:
    ds = ct()
    del ds.SeriesInstanceUID
    found = check(ds)
    assert codes(found) == {("type1-missing", "SeriesInstanceUID")}
    (finding,) = found
    assert finding.severity is Severity.ERROR and finding.module == "general-series"
    assert "General Series" in finding.message


def test_empty_type1() -> None:
    ds = ct()
    ds.Modality = ""
    assert codes(check(ds)) == {("type1-empty", "Modality")}


def test_missing_type2_and_empty_type2_is_fine() -> None:
    ds = ct()
    del ds.PatientBirthDate
    ds.PatientSex = ""
    assert codes(check(ds)) == {("type2-missing", "PatientBirthDate")}


def test_bad_uid() -> None:
    ds = ct()
    ds.FrameOfReferenceUID = "1.2.03.4"
    found = check(ds)
    assert codes(found) == {("uid", "FrameOfReferenceUID")}
    ds.FrameOfReferenceUID = "1." + "2" * 70
    assert codes(check(ds)) == {("uid", "FrameOfReferenceUID")}


def test_wrong_vm() -> None:
    ds = ct()
    ds.ImagePositionPatient = [1.0, 2.0]  # VM 3
    ds.PixelSpacing = [0.5, 0.5, 0.5]  # VM 2
    assert codes(check(ds)) == {("vm", "ImagePositionPatient"), ("vm", "PixelSpacing")}


def test_wrong_vr_in_explicit_vr() -> None:
    ds = ct()
    ds.add(DataElement(0x00080060, "LO", "CT"))  # Modality is CS
    assert ("vr", "Modality") in codes(check(ds))


def test_bad_enumerated_values() -> None:
    ds = ct()
    ds.PatientSex = "X"
    ds.PhotometricInterpretation = "MONOCHROME3"
    ds.ImageType = ["ORIGINAL", "TERTIARY", "AXIAL"]
    found = codes(check(ds))
    assert found >= {
        ("enumerated", "PatientSex"),
        ("enumerated", "PhotometricInterpretation"),
        ("enumerated", "ImageType"),
    }


def test_defined_terms_are_not_enumerations() -> None:
    ds = ct()
    ds.Modality = "NEWTHING"  # Modality has defined terms: extending them is allowed
    ds.ImageType = ["DERIVED", "SECONDARY", "ANYTHING"]  # value 3 on: defined terms
    assert check(ds) == []


def test_bits_consistency() -> None:
    ds = ct()
    ds.HighBit = 11
    ds.BitsStored = 16
    assert codes(check(ds)) == {("consistency", "HighBit")}
    ds.BitsStored = 20
    ds.HighBit = 19
    assert ("consistency", "BitsStored") in codes(check(ds))


def test_text_value_form_is_a_warning() -> None:
    ds = ct()
    ds.StudyDate = "2024-01-01"
    ds.AccessionNumber = "A" * 20  # SH: 16 characters at most
    found = check(ds)
    assert codes(found) == {("value", "StudyDate"), ("value", "AccessionNumber")}
    assert all(f.severity is Severity.WARNING for f in found)


def test_value_that_does_not_decode() -> None:
    data = encode(ct())
    rows = b"\x28\x00\x10\x00US\x02\x00\x80\x00"
    assert data.count(rows) == 1
    found = validate_part10(data.replace(rows, b"\x28\x00\x10\x00US\x03\x00\x80\x00\x00"))  # odd length
    assert ("decode", "Rows") in codes(found)


def test_simple_conditions() -> None:
    ds = ct()
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    assert ("conditional-missing", "PlanarConfiguration") in codes(check(ds))
    ds = ct()
    ds.WindowCenter = 40
    # VOI LUT (a U module) is present through Window Center, which asks for Window Width.
    assert codes(check(ds)) == {("conditional-missing", "WindowWidth")}
    ds.WindowWidth = 400
    assert check(ds) == []


def test_nested_sequence_items() -> None:
    ds = ct()
    item = Dataset()
    item.ReferencedSOPClassUID = CT
    ds.ReferencedImageSequence = [item]  # General Reference (U) module; the item lacks a Type 1
    found = check(ds)
    assert codes(found) == {("type1-missing", "ReferencedImageSequence[0].ReferencedSOPInstanceUID")}


def test_optional_module_checked_only_when_present() -> None:
    ds = ct()
    assert check(ds) == []
    ds.ContrastBolusAgent = "IODINE"  # Contrast/Bolus (C): now present, its Type 1/2 apply
    ds.ContrastBolusRoute = "IV"
    assert check(ds) == []
    del ds.ContrastBolusAgent
    ds.ContrastBolusIngredient = "IODINE"  # still present (Type 3 of its own): Agent is Type 2
    found = check(ds)
    assert codes(found) == {("type2-missing", "ContrastBolusAgent")}
    assert found[0].module == "contrast-bolus"


def test_unknown_sop_class_is_one_warning() -> None:
    ds = ct()
    ds.SOPClassUID = "1.2.3.4.5.6"
    ds.file_meta.MediaStorageSOPClassUID = "1.2.3.4.5.6"
    found = check(ds)
    assert [(f.severity, f.code) for f in found] == [(Severity.WARNING, "unknown-sop-class")]


def test_sop_class_disagrees_with_file_meta() -> None:
    ds = ct()
    data = encode(ds)
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    assert codes(validate_dataset(ds)) == {("consistency", "SOPClassUID")}
    assert validate_part10(data) == []


def test_unreadable_bytes() -> None:
    found = validate_part10(b"not a DICOM file")
    assert [f.code for f in found] == ["unreadable"]


def test_finding_as_dict() -> None:
    finding = Finding(Severity.ERROR, "type1-missing", "general-series", "Modality", "m")
    assert finding.as_dict() == {
        "severity": "error",
        "code": "type1-missing",
        "module": "general-series",
        "attribute": "Modality",
        "message": "m",
    }


# ------------------------------------------------------------------ tables and cost


def test_tables_are_compact_and_cached() -> None:
    table = tables.iod_for_sop_class(CT)
    assert table is not None and table is tables.iod_for_sop_class(CT)
    assert table.name == "CT Image" and table.sop_class_name == "CT Image Storage"
    keys = {m.key: m.usage for m in table.modules}
    assert keys["patient"] == "M" and keys["contrast-bolus"] == "C"
    assert tables.iod_for_sop_class("1.2.3.4") is None
    assert tables.module_name("general-series") == "General Series"


def test_time_per_ct_header() -> None:
    data = encode(ct())
    validate_part10(data)  # tables loaded
    runs = 50
    started = time.perf_counter()
    for _ in range(runs):
        validate_part10(data)
    per_object = (time.perf_counter() - started) / runs
    assert per_object < 0.02, per_object
