"""Regression tests for the crashes the fuzz targets in ``fuzz/`` found.

Each test feeds the input (or a minimal equivalent, built here rather than
committed as binary) to the real parser and checks the documented outcome.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from dicomhub.config import load_settings
from dicomhub.errors import ConfigurationError, InvalidRequest
from dicomhub.model.caller import Caller
from dicomhub.model.extract import extract_part10, read_header
from dicomhub.services.headers import header_to_json
from dicomhub.web.dicomweb import stow
from dicomhub.web.dicomweb.upload import MultipartReader, parse_media_type
from dicomhub.web.errors import UnsupportedMediaType, decode_json_object


def _part10(ds: Dataset) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_config_file_not_utf8_is_a_configuration_error(tmp_path: Path) -> None:
    # fuzz_config: tomllib decodes before parsing, so a latin-1 byte raised
    # UnicodeDecodeError out of load_settings instead of ConfigurationError.
    path = tmp_path / "dicomhub.toml"
    path.write_bytes(b'public_base_url = "https://pacs.example.org/dicomweb\xff"\n')
    with pytest.raises(ConfigurationError, match="cannot read the configuration file"):
        load_settings(config_file=path, environ={})


def test_header_json_leaves_out_a_ds_value_that_is_no_number() -> None:
    # fuzz_part10: an object with a DS value like "1.6\xd41598" is stored
    # (ingest does not parse DS), but header_to_json raised ValueError, which
    # broke WADO-RS metadata of its study and stalled the header worker.
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.PatientID = "P1"
    ds.ScanVelocity = "1.601598"
    ds.SliceThickness = "2.5"
    data = _part10(ds).replace(b"1.601598", b"1.6\xd41598")

    extract_part10(data)  # accepted for storage, as before
    body = json.loads(header_to_json(read_header(data)))
    assert "00181300" not in body  # Scan Velocity: not representable
    assert body["00180050"] == {"vr": "DS", "Value": [2.5]}  # the rest is kept
    assert body["00080018"]["Value"] == ["1.2.3.4.5"]
    assert dcmread(io.BytesIO(data)).ScanVelocity is not None  # the object itself is untouched


@pytest.mark.parametrize(
    "value",
    [
        "e\ufffdt/hml,\ufffdp*;q*=0.t/hml,\ufffdp*;q*8",  # the input fuzz_accept found
        'multipart/related; type*="application/dicom"; type*0=x; boundary=abc',
    ],
)
def test_content_type_with_broken_rfc2231_continuations_is_unparsable(value: str) -> None:
    # fuzz_accept: a parameter both plain-extended ("x*") and continued ("x*0")
    # made email.utils.decode_params sort None against int: TypeError out of
    # parse_media_type (documented never to raise), i.e. a 500 for a STOW-RS
    # Content-Type, and a failed worker thread for a part's header.
    assert parse_media_type(value) == ("", {})
    with pytest.raises(UnsupportedMediaType):
        stow._boundary(value)


def test_part_header_with_broken_rfc2231_continuations() -> None:
    body = b"--b\r\nContent-Type: application/dicom; x*=1; x*0=2\r\n\r\nDATA\r\n--b--\r\n"
    parts = [(part.content_type, b"".join(part.chunks())) for part in MultipartReader([body], "b")]
    assert parts == [("", b"DATA")]


def test_file_meta_element_without_an_explicit_vr_is_refused_at_ingest() -> None:
    # fuzz_part10 (10-minute run): a File Meta group whose group length element had
    # two non-VR bytes in its VR field passed ingest's own scan, but pydicom then read
    # the group as implicit VR and failed, so the stored object's header (WADO-RS
    # metadata, the header worker) could never be read. Ingest now refuses it.
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    data = bytearray(_part10(ds))
    assert extract_part10(bytes(data)).sop_instance_uid == "1.2.3.4.5.6"
    assert data[128:132] == b"DICM" and data[136:138] == b"UL"
    data[136:138] = b"\xadL"
    with pytest.raises(InvalidRequest):
        read_header(bytes(data))
    with pytest.raises(InvalidRequest):
        extract_part10(bytes(data))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('public_base_url = "https://pac].example.org/dicomweb"', "public_base_url"),
        ('audit_syslog = "tcp://[syslog.example.org:514"', "audit_syslog"),
    ],
)
def test_url_setting_with_an_unbalanced_bracket(tmp_path: Path, line: str, message: str) -> None:
    # fuzz_config (10-minute run): urlsplit reads "[" / "]" in the host as an IPv6
    # literal and raises ValueError, which escaped load_settings instead of
    # ConfigurationError naming the setting.
    path = tmp_path / "dicomhub.toml"
    path.write_text(line + "\n")
    with pytest.raises(ConfigurationError, match=message):
        load_settings(config_file=path, environ={})


def test_storage_url_with_an_unbalanced_bracket() -> None:
    from dicomhub.storage.urls import open_blob_store

    with pytest.raises(ConfigurationError, match="storage URL"):
        open_blob_store("s3://[bucket/prefix")


def _with_sequence() -> bytes:
    from pydicom.sequence import Sequence

    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    item = Dataset()
    item.CodeValue = "T-D0050"
    item.CodingSchemeDesignator = "SRT"
    item.CodeMeaning = "Tissue of a long enough meaning"
    ds.AnatomicRegionSequence = Sequence([item])
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "ID-1"
    return _part10(ds)


@pytest.mark.parametrize("vr", [b"&O", b"\x00\x00", b"ZZ", b"\xff\xfe"])
@pytest.mark.parametrize(
    "keyword_tag", [b"\x08\x00\x00\x01", b"\x08\x00\x02\x01", b"\x08\x00\x04\x01", b"\x10\x00\x10\x00"]
)
def test_an_element_without_a_valid_vr_is_stored_only_if_its_header_is_readable(
    vr: bytes, keyword_tag: bytes
) -> None:
    # fuzz_part10 (second 10-minute run): an element inside a sequence item with
    # "&O" in its VR field passed ingest's walk (read as a short VR), while pydicom
    # read on as implicit VR and failed at the end of the object: stored, but its
    # header unreadable. Now an element without a valid VR leaves the decision to
    # pydicom: accepted exactly when the header can be read.
    data = bytes(_replace_vr(_with_sequence(), keyword_tag, vr))
    try:
        header = extract_part10(data)
    except InvalidRequest:
        return  # refused: nothing stored, whatever pydicom makes of it
    assert header.sop_instance_uid == "1.2.3.4.5.6"
    read_header(data)  # accepted: the stored header can be read (raised InvalidRequest before)


def _replace_vr(data: bytes, tag: bytes, vr: bytes) -> bytearray:
    out = bytearray(data)
    at = out.index(tag, 132)
    out[at + 4 : at + 6] = vr
    return out


def test_implicit_vr_data_under_an_explicit_vr_syntax_is_still_accepted() -> None:
    # pydicom reads such objects (it detects the implicit VR at the data set's start);
    # the stricter walk must not refuse them (a sample file pydicom ships).
    from pydicom.data import get_testdata_file

    path = get_testdata_file("SC_rgb_jpeg.dcm")
    assert path is not None
    data = Path(str(path)).read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom: "Expected explicit VR, but found implicit VR"
        read_header(data)
        assert extract_part10(data).sop_instance_uid


def test_a_setting_written_below_the_oidc_roles_table(tmp_path: Path) -> None:
    # fuzz_config (second 10-minute run): TOML puts `http_port = 42` written after
    # [oidc_roles] into that table, and its integer value raised TypeError out of
    # load_settings instead of ConfigurationError naming it.
    path = tmp_path / "dicomhub.toml"
    path.write_text('[oidc_roles]\nradiologists = "reader"\nhttp_port = 42\n')
    with pytest.raises(ConfigurationError, match=r"oidc_roles\.http_port"):
        load_settings(config_file=path, environ={})


def test_deeply_nested_json_body_is_invalid_request() -> None:
    # fhir: "[[[[..." nested past the interpreter's recursion limit made
    # json.loads raise RecursionError, a 500 instead of a 400 OperationOutcome
    # (and the same for every JSON body of the REST API).
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        decode_json_object(b"[" * 100_000)
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        decode_json_object(b'{"resourceType": "Patient", "extension": ' + b"[" * 100_000)
    assert decode_json_object(b'{"a": [[1]]}') == {"a": [[1]]}


def test_hl7_message_with_repeated_encoding_characters_is_rejected() -> None:
    # hl7: MSH-2 "^" followed by NULs (a separator used twice) made the hl7
    # package fail an assertion: handle's last resort answered AE "internal
    # error". It is an AR naming MSH-2 now, before the parser sees it.
    from dicomhub.hl7.messages import handle

    raw = b"MSH|^\x00\x00\x00\x00~\\&|RIS|HOSP|DICOMHUB|ARCH|20260101||ADT^A08|l1|P|2.5\rPID|||P2^^^HOSP"

    def caller_of(name: str) -> Caller:
        raise AssertionError("a rejected message acts as nobody")

    ack = handle(raw, None, caller_of)  # type: ignore[arg-type]  # never reached
    assert b"MSA|AR|l1|" in ack and b"ERR||MSH^2|102^" in ack


def test_fhir_name_with_dicom_delimiters_is_refused_and_names_read_back_valid() -> None:
    # fhir: a HumanName prefix "^^r" became the DICOM name "^^^^^r", whose five
    # components are empty: the Patient read back had name.text "" and failed
    # the R4B models (a 500 on every read of that patient). A name part with a
    # DICOM delimiter is a 400 now, and an empty name is left out of the answer.
    from dicomhub.model.orders import Patient, PatientRef
    from dicomhub.web.fhir.resources import parse_patient, patient_from_fhir, patient_to_fhir

    body = {"resourceType": "Patient", "identifier": [{"value": "P7"}],
            "name": [{"use": "official", "prefix": ["^^r"]}]}  # fmt: skip
    with pytest.raises(InvalidRequest, match="may not contain"):
        patient_from_fhir(parse_patient(body))
    body["name"] = [{"family": "Doe", "given": ["Jo=hn"]}]
    with pytest.raises(InvalidRequest, match="may not contain"):
        patient_from_fhir(parse_patient(body))
    answer = patient_to_fhir(Patient(PatientRef("P7"), patient_name="^^^^^r", resource_id="p7"))
    assert "name" not in answer
    answer = patient_to_fhir(Patient(PatientRef("P7"), patient_name="Doe^John", resource_id="p7"))
    assert answer["name"] == [{"use": "official", "text": "John Doe", "family": "Doe", "given": ["John"]}]
