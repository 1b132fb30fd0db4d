"""Type 1C/2C conditions: parsed from the standard's sentences, evaluated on real module tables."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from dicomhub.iod import tables
from dicomhub.iod.conditions import Atom, parse_condition
from dicomhub.iod.validate import Finding, validate_dataset, validate_part10


def ct() -> Dataset:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    return pydicom.dcmread(path)


def check(ds: Dataset) -> list[Finding]:
    """Validate in memory and after a write-then-read round trip; both must agree."""
    direct = validate_dataset(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    encoded = validate_part10(buf.getvalue())
    assert [(f.code, f.attribute, f.message) for f in direct] == [
        (f.code, f.attribute, f.message) for f in encoded
    ]
    return encoded


def conditional(found: list[Finding]) -> dict[str, Finding]:
    return {f.attribute: f for f in found if f.code == "conditional-missing"}


# ------------------------------------------------------------------ parsing


def test_presence_forms() -> None:
    cond = parse_condition("Required if Context Identifier (0008,010F) is present.")
    assert cond is not None and cond.atoms == (Atom(0x0008010F, "present"),)
    cond = parse_condition("Required if Patient Position (0018,5100) is not present.")
    assert cond is not None and cond.atoms == (Atom(0x00185100, "absent"),)
    cond = parse_condition(
        "Required if Universal Entity ID (0040,0032) is not present; may be present otherwise."
    )
    assert cond is not None and cond.atoms == (Atom(0x00400032, "absent"),)


def test_value_forms() -> None:
    cond = parse_condition('Required if the value of Context Group Extension Flag (0008,010B) is "Y".')
    assert cond is not None and cond.atoms == (Atom(0x0008010B, "in", frozenset({"Y"})),)
    cond = parse_condition("Required if Image Type (0008,0008) Value 1 is ORIGINAL or MIXED.")
    assert cond is not None and cond.atoms == (
        Atom(0x00080008, "in", frozenset({"ORIGINAL", "MIXED"}), index=0),
    )
    cond = parse_condition("Required if Samples per Pixel (0028,0002) has a value greater than 1.")
    assert cond is not None and cond.atoms == (Atom(0x00280002, "gt", number=1.0),)
    cond = parse_condition("Required if Consent for Distribution Flag (0012,0085) equals YES or WITHDRAWN.")
    assert cond is not None and cond.atoms[0].values == frozenset({"YES", "WITHDRAWN"})


def test_combinations() -> None:
    cond = parse_condition(
        "Shall be present if Code Value (0008,0100) or Long Code Value (0008,0119) is present."
    )
    assert cond is not None and cond.any_of
    assert cond.atoms == (Atom(0x00080100, "present"), Atom(0x00080119, "present"))
    cond = parse_condition(
        "Required if Patient Identity Removed (0012,0062) is present and has a value of YES and "
        "De-identification Method Code Sequence (0012,0064) is not present."
    )
    assert cond is not None and not cond.any_of
    assert cond.atoms == (Atom(0x00120062, "in", frozenset({"YES"})), Atom(0x00120064, "absent"))


@pytest.mark.parametrize(
    "text",
    [
        "Required if the image has been calibrated.",  # prose, no attribute
        "Required if procedure was scheduled.",
        # "and" with "or": the precedence is not written down
        "Required if Float Pixel Data (7FE0,0008) is present and Pixel Data (7FE0,0010) is absent "
        "or Real World Value LUT Data (0040,9212) is not present.",
        # a phrase between the attribute and its predicate
        "Required if Photometric Interpretation (0028,0004) has a value of PALETTE COLOR or "
        "Pixel Presentation (0008,9205) at the image level equals COLOR or MIXED.",
        # a tag whose dictionary name is not the name written before it
        "Required if Patient Age (0018,5100) is present.",
        "Required if Numeric Value (0040,A30A) has insufficient precision to represent the value.",
        "Not a condition (0008,0100) is present.",
    ],
)
def test_forms_not_understood_are_not_guessed(text: str) -> None:
    assert parse_condition(text) is None


def test_evaluation_on_values() -> None:
    cond = parse_condition("Required if Image Type (0008,0008) Value 1 is ORIGINAL or MIXED.")
    assert cond is not None
    ds = Dataset()
    assert not cond.holds(ds)  # absent: no value satisfies it
    ds.ImageType = ["DERIVED", "ORIGINAL"]
    assert not cond.holds(ds)  # ORIGINAL is value 2, not value 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    assert cond.holds(ds)
    gt = parse_condition("Required if Samples per Pixel (0028,0002) has a value greater than 1.")
    assert gt is not None
    ds.SamplesPerPixel = 1
    assert not gt.holds(ds)
    ds.SamplesPerPixel = 3
    assert gt.holds(ds)


# ------------------------------------------------------------------ on real module tables


def test_ct_missing_conditional_attribute_is_reported_with_module_and_condition() -> None:
    ds = ct()
    ds.PatientIdentityRemoved = "YES"  # Patient module: asks for a de-identification method
    found = conditional(check(ds))
    assert set(found) == {"DeidentificationMethod", "DeidentificationMethodCodeSequence"}
    finding = found["DeidentificationMethod"]
    assert finding.module == "patient" and finding.is_error
    assert finding.message == (
        "Type 1C DeidentificationMethod is missing (Patient module): "
        '"Required if Patient Identity Removed (0012,0062) is present and has a value of YES and '
        'De-identification Method Code Sequence (0012,0064) is not present."'
    )
    ds.DeidentificationMethod = "dicomhub basic profile"
    assert check(ds) == []


def test_ct_conditional_attribute_present_when_not_required_is_fine() -> None:
    ds = ct()
    ds.PatientIdentityRemoved = "NO"
    ds.DeidentificationMethod = "none"  # a 1C attribute whose condition does not hold: allowed
    assert check(ds) == []


def test_condition_inside_a_sequence_item() -> None:
    ds = ct()
    item = Dataset()
    item.CodeValue = "1234"
    item.CodeMeaning = "a procedure"
    ds.ProcedureCodeSequence = [item]  # General Study module, Code Sequence Macro items
    found = conditional(check(ds))
    assert set(found) == {"ProcedureCodeSequence[0].CodingSchemeDesignator"}
    assert found["ProcedureCodeSequence[0].CodingSchemeDesignator"].module == "general-study"
    assert "Code Value (0008,0100) or Long Code Value (0008,0119) is present" in (
        found["ProcedureCodeSequence[0].CodingSchemeDesignator"].message
    )
    item.CodingSchemeDesignator = "99LOCAL"
    assert check(ds) == []


def test_condition_counts_over_all_modules() -> None:
    counts = tables.condition_counts()
    # Numbers of the shipped tables (scripts/make_iod_tables.py): what the validator evaluates,
    # what it leaves because the sentence is not a known form, and entries with no sentence.
    assert counts.evaluated > 12000
    assert counts.not_parsed > 0 and counts.no_text > 0
    assert counts.evaluated + counts.not_parsed + counts.no_text == 52691


def test_condition_on_pixel_data_read_header_only() -> None:
    # RT Dose: "Required if Pixel Data (7FE0,0010) is present." The file is validated without
    # reading its pixel data (validate_part10), and must give what the full data set gives.
    path = get_testdata_file("rtdose.dcm")
    assert path is not None
    ds = pydicom.dcmread(path)
    before = {f.attribute for f in check(ds)}
    del ds.DoseGridScaling
    found = conditional(check(ds))
    assert set(found) == {"DoseGridScaling"} and "DoseGridScaling" not in before
    assert found["DoseGridScaling"].module == "rt-dose"
    assert '"Required if Pixel Data (7FE0,0010) is present."' in found["DoseGridScaling"].message
    del ds.PixelData  # no pixel data: nothing asks for it (Pixel Data itself is 1C here)
    assert "DoseGridScaling" not in conditional(check(ds))
