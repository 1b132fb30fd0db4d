"""Table-driven: every row of PS3.15 Table E.1-1 under the Basic Profile and under each option.

The expected action is read here from the shipped JSON (independently of the
engine's compiled map); the assertions check its effect on a data set that
holds the attribute with a value of its VR, at the top level and nested in a
sequence item.
"""

from __future__ import annotations

import json
from dataclasses import fields
from importlib import resources
from typing import Any

import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomhub.deid import Options, Profile, ProjectKey, deidentify
from dicomhub.model.identifiers import is_valid_uid

ROWS: list[dict[str, str]] = json.loads(
    resources.files("dicomhub.deid")
    .joinpath("data/confidentiality_profile_attributes.json")
    .read_text(encoding="utf-8")
)
COLUMNS = {
    "retain_safe_private": "rtnSafePrivOpt",
    "retain_uids": "rtnUIDsOpt",
    "retain_device_identity": "rtnDevIdOpt",
    "retain_institution_identity": "rtnInstIdOpt",
    "retain_patient_characteristics": "rtnPatCharsOpt",
    "retain_long_full_dates": "rtnLongFullDatesOpt",
    "retain_long_modified_dates": "rtnLongModifDatesOpt",
    "clean_descriptors": "cleanDescOpt",
    "clean_structured_content": "cleanStructContOpt",
    "clean_graphics": "cleanGraphOpt",
}
# PS3.15 E.1.1: a combined action keeps the alternative the attribute's IOD Type
# needs; without IOD tables the engine keeps the one valid for any Type (last).
COMBINED = {"X/Z": "Z", "X/D": "D", "X/Z/D": "D", "Z/D": "D", "X/Z/U*": "U"}
KEY = ProjectKey.derive(b"table-driven-test-secret", "table")
OPTION_SETS = [Options()] + [Options(**{f.name: True}) for f in fields(Options)]
PATIENT_NAME = "Doe^John"
TEXT = "seen by John Doe"  # holds the patient's name: cleaning must take it out


def concrete(row: dict[str, str]) -> int | None:
    try:
        return int(row["tag"][1:5] + row["tag"][6:10], 16)
    except ValueError:
        return None


def expected(row: dict[str, str], options: Options) -> str:
    chosen = [row[col] for name, col in COLUMNS.items() if getattr(options, name) and col in row]
    if chosen:
        return "C" if "C" in chosen else chosen[0]
    return COMBINED.get(row["basicProfile"], row["basicProfile"])


SAMPLE: dict[str, Any] = {
    "AE": "STATION1",
    "AS": "045Y",
    "CS": "JOHN",
    "DA": "20200115",
    "DT": "20200115101500",
    "TM": "101500",
    "DS": "7.5",
    "IS": "7",
    "LO": TEXT,
    "LT": TEXT,
    "SH": "John",
    "ST": TEXT,
    "UT": TEXT,
    "UC": TEXT,
    "UR": "http://example.org/john",
    "PN": "Roe^Richard",
    "US": 7,
    "OB": b"\x01\x02",
    "UN": b"\x01\x02",
    "UI": "1.2.3.4.5.6.7.8.9",
}


def element(tag: int) -> DataElement:
    vr = dictionary_VR(tag).split(" or ")[0]
    if vr == "SQ":
        item = Dataset()
        item.CodeValue = "C1"
        return DataElement(tag, vr, Sequence([item]))
    return DataElement(tag, vr, SAMPLE[vr])


def host(elem: DataElement) -> Dataset:
    ds = Dataset()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "PID-7"
    ds.add(elem)
    nested = Dataset()
    nested.add(DataElement(elem.tag, elem.VR, elem.value))
    ds.add(DataElement(0x00081115, "SQ", Sequence([nested])))  # Referenced Series Sequence (K when kept)
    return ds


def check(action: str, tag: int, before: DataElement, out: Dataset, where: str) -> None:
    vr = before.VR
    if action == "X":
        assert tag not in out, f"{where}: X must remove it"
        return
    assert tag in out, f"{where}: {action} must keep the attribute present"
    after = out[tag]
    if vr == "SQ":
        if action == "Z":
            assert len(after.value) == 0, f"{where}: Z on a sequence empties it"
        else:
            assert len(after.value) == 1, f"{where}: {action} keeps the (cleaned) items"
        return
    if action == "K":
        assert after.value == before.value, f"{where}: K must keep the value"
    elif action == "Z":
        if tag in (0x00100010, 0x00100020, 0x00080050):
            assert after.value and after.value != before.value, f"{where}: pseudonym expected"
        else:
            assert after.is_empty, f"{where}: Z must empty the value"
    elif action == "D":
        assert not after.is_empty, f"{where}: D needs a non-zero length value"
        if vr not in ("DS", "IS", "US"):
            assert after.value != before.value, f"{where}: D must replace the value"
    elif action == "U":
        assert is_valid_uid(str(after.value)) and str(after.value).startswith("2.25."), where
        assert after.value != before.value, f"{where}: U must replace the UID"
    elif action == "C":
        if vr in ("DA", "DT"):
            assert after.value != before.value and len(str(after.value)) == len(str(before.value)), where
        elif vr in ("LO", "LT", "ST", "UT", "UC", "SH", "PN", "CS"):
            assert "john" not in str(after.value).lower(), f"{where}: C must clean the patient's name out"
        elif vr == "AE":
            assert after.value != before.value, f"{where}: C replaces an AE title"
    else:  # pragma: no cover
        raise AssertionError(action)


CONCRETE = [r for r in ROWS if concrete(r) is not None]


def test_the_shipped_table_is_the_standards() -> None:
    assert len(ROWS) > 600
    assert {r["basicProfile"] for r in ROWS} <= {"D", "Z", "X", "K", "C", "U", *COMBINED}
    assert len(ROWS) - len(CONCRETE) == 4  # curves, overlay data, overlay comments, private


@pytest.mark.parametrize("row", CONCRETE, ids=[f"{r['tag']}-{r['name'][:30]}" for r in CONCRETE])
def test_every_row_under_every_option(row: dict[str, str]) -> None:
    tag = concrete(row)
    assert tag is not None
    before = element(tag)
    ds = host(before)
    for options in OPTION_SETS:
        action = expected(row, options)
        out = deidentify(ds, Profile(options=options), KEY).dataset
        where = f"{row['tag']} {row['name']} options={options.chosen or 'basic'} action {action}"
        if tag in (0x00100010, 0x00100020):
            continue  # the host's own identity: covered by test_patient_identity below
        check(action, tag, before, out, where + " (top level)")
        items = out.get(0x00081115)
        if items is not None and tag != 0x00081115:
            check(action, tag, before, items.value[0], where + " (in a sequence item)")


def test_patient_identity_is_pseudonymised_per_project() -> None:
    ds = host(DataElement(0x00080050, "SH", "ACC1"))
    out = deidentify(ds, Profile(), KEY).dataset
    assert out.PatientName != PATIENT_NAME and str(out.PatientName).startswith("ANON^")
    assert out.PatientID == KEY.pseudonym("patient_id", "PID-7")
    assert out.AccessionNumber == KEY.pseudonym("accession_number", "ACC1")


def test_curves_overlays_and_private_patterns() -> None:
    ds = Dataset()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "PID-7"
    ds.add_new(0x50000010, "US", 3)  # Curve Data group: Number of Points
    ds.add_new(0x50023000, "OB", b"\x00\x01")  # Curve Data
    ds.add_new(0x60000010, "US", 4)  # Overlay Rows
    ds.add_new(0x60003000, "OW", b"\x00\x01")  # Overlay Data
    ds.add_new(0x60024000, "LT", "John's overlay")  # Overlay Comments
    ds.add_new(0x00090010, "LO", "ACME 1.0")  # a private creator
    ds.add_new(0x00091001, "LO", "John")  # its private attribute
    ds.add_new(0x00190010, "LO", "SIEMENS MR HEADER")
    ds.add_new(0x0019100C, "IS", "1000")  # B_value: safe-listed
    basic = deidentify(ds, Profile(), KEY).dataset
    assert not [t for t in basic.keys() if t.group >= 0x5000 and t.group <= 0x60FF], "curves/overlays go"
    assert not [t for t in basic.keys() if t.group & 1], "private attributes go under the Basic Profile"
    graphics = deidentify(ds, Profile(options=Options(clean_graphics=True)), KEY).dataset
    assert 0x50023000 in graphics and 0x60003000 in graphics and 0x60000010 in graphics
    assert "John" not in str(graphics[0x60024000].value)
    safe = deidentify(ds, Profile(options=Options(retain_safe_private=True)), KEY).dataset
    assert safe[0x0019100C].value == "1000" and safe[0x00190010].value == "SIEMENS MR HEADER"
    assert 0x00091001 not in safe, "a private attribute not safe-listed goes even under Retain Safe Private"


def test_two_options_on_one_row_the_cleaning_one_wins() -> None:
    ds = host(DataElement(0x00181200, "DA", "20200115"))  # Date of Last Calibration
    device = Options(retain_device_identity=True)
    assert deidentify(ds, Profile(options=device), KEY).dataset[0x00181200].value == "20200115"
    both = Options(retain_device_identity=True, retain_long_modified_dates=True)
    shifted = deidentify(ds, Profile(options=both), KEY).dataset[0x00181200].value
    assert shifted != "20200115" and len(shifted) == 8
    full = Options(retain_device_identity=True, retain_long_full_dates=True)
    assert deidentify(ds, Profile(options=full), KEY).dataset[0x00181200].value == "20200115"
    assert 0x00181200 not in deidentify(ds, Profile(), KEY).dataset  # Basic Profile: X


def test_combined_actions_follow_the_attribute_type_in_the_iod() -> None:
    """PS3.15 E.1.1 on a CT image (Types from PS3.3 A.3: CT Image IOD)."""
    from tests import datagen

    ds = datagen.make_dataset(rows=8, cols=8)
    ds.DeviceSerialNumber = "SN1"  # X/Z/D, General Equipment, Type 3 -> X
    ds.OperatorsName = "Op^Al"  # X/Z/D, General Series, Type 3 -> X
    ds.ProtocolName = "Chest"  # X/D, General Series, Type 3 -> X
    ds.ContentDate = "20200115"  # Z/D, General Image, Type 2C -> Z
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    ds.ReferencedImageSequence = Sequence([item])  # X/Z/U*, General Image, Type 3 -> X
    ds.ReferencedStudySequence = Sequence([Dataset()])  # X/Z, General Study, Type 3 -> X
    out = deidentify(ds, Profile(), KEY).dataset
    for keyword in ("DeviceSerialNumber", "OperatorsName", "ProtocolName", "ReferencedImageSequence",
                    "ReferencedStudySequence"):  # fmt: skip
        assert keyword not in out, f"{keyword} is Type 3 in the CT Image IOD: X"
    assert "ContentDate" in out and out["ContentDate"].is_empty, "Type 2: Z"
    assert out.PatientID == KEY.pseudonym("patient_id", ds.PatientID), "Z/D, Type 2: Z (a pseudonym)"
    # the same attributes in an object of no known IOD: the alternative valid for any Type
    del ds.SOPClassUID
    unknown = deidentify(ds, Profile(), KEY).dataset
    assert unknown.DeviceSerialNumber == "DEIDENTIFIED" and unknown.ContentDate == "19000101"
    assert unknown.ReferencedImageSequence[0].ReferencedSOPInstanceUID == KEY.uid("1.2.3.4")
