"""Regression tests for the crashes the fuzz targets in ``fuzz/`` found.

Each test feeds the input (or a minimal equivalent, built here rather than
committed as binary) to the real parser and checks the documented outcome.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from dicomhub.config import load_settings
from dicomhub.errors import ConfigurationError, InvalidRequest
from dicomhub.model.extract import extract_part10, read_header
from dicomhub.services.headers import header_to_json
from dicomhub.web.dicomweb import stow
from dicomhub.web.dicomweb.upload import MultipartReader, parse_media_type
from dicomhub.web.errors import UnsupportedMediaType


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
