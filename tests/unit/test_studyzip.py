"""The study ZIP: entries are the given bytes under their names, the DICOMDIR names every
instance (filling the record values a header leaves empty), and a header pydicom cannot
file is a Conflict before any byte is streamed."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet

from dicomhub.errors import Conflict
from dicomhub.model.records import InstanceRow
from dicomhub.services.studyzip import StudyZip, zip_name
from tests import datagen


def _zip(datasets: list[Dataset]) -> tuple[StudyZip, dict[str, bytes]]:
    data: dict[str, bytes] = {}
    rows = []
    for i, ds in enumerate(datasets):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data[str(ds.SOPInstanceUID)] = buf.getvalue()
        ts = str(ds.file_meta.TransferSyntaxUID)
        size = len(buf.getvalue())
        rows.append(InstanceRow(i, str(ds.SOPInstanceUID), str(ds.SOPClassUID), ts, f"k{i}", size,
                                "", "", str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)))  # fmt: skip

    def chunks(row: InstanceRow) -> Iterator[bytes]:
        whole = data[row.sop_instance_uid]
        return iter([whole[:1000], whole[1000:]])

    def header(row: InstanceRow) -> Dataset:
        return dcmread(io.BytesIO(data[row.sop_instance_uid]), stop_before_pixels=True)

    return StudyZip(rows, chunks, header), data


def test_entries_are_the_stored_bytes_named_by_series_and_instance() -> None:
    study = datagen.uid()
    z, data = _zip([datagen.make_dataset(study_uid=study, rows=8, cols=8) for _ in range(3)])
    with zipfile.ZipFile(io.BytesIO(b"".join(z.stream()))) as zf:
        assert zf.testzip() is None
        assert {n: zf.read(n) for n in zf.namelist()} == {
            zip_name(r): data[r.sop_instance_uid] for r in z.rows
        }
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


def test_the_dicomdir_names_every_instance_even_with_empty_type_2_values(tmp_path: object) -> None:
    study = datagen.uid()
    datasets = [datagen.make_dataset(study_uid=study, study_id="", rows=8, cols=8) for _ in range(2)]
    datasets[1].StudyDate = ""
    z, data = _zip(datasets)
    with zipfile.ZipFile(io.BytesIO(b"".join(z.stream(dicomdir=True)))) as zf:
        zf.extractall(str(tmp_path))
        names = zf.namelist()
    assert names[0] == "DICOMDIR" and len(names) == 3
    fs = FileSet(dcmread(f"{tmp_path}/DICOMDIR"))
    assert {str(i.SOPInstanceUID): open(i.path, "rb").read() for i in fs} == data  # noqa: PTH123, SIM115


def test_a_header_that_cannot_be_filed_is_a_conflict_before_streaming() -> None:
    ds = datagen.make_dataset(rows=8, cols=8)
    # A Basic Text SR header without the Completion Flag its SR DOCUMENT record needs.
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    z, _data = _zip([ds])
    with pytest.raises(Conflict, match="PS3.10 file-set"):
        z.prepare(dicomdir=True)
