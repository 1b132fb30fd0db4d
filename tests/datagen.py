"""Small, valid (and deliberately broken) DICOM Part 10 files for the tests.

Everything here is built with pydicom + numpy; no external data is needed.

Good files:
    make_dataset(...)      -> pydicom Dataset (CT or MR image) with file meta
    write_instance(path, ...) -> writes one Part 10 file, returns its Dataset
    write_ct_series(dir, n, ...) -> writes an N-slice CT series, returns the Datasets

Bad files (written with validation switched off):
    write_truncated(path, ...), write_missing_sop_instance_uid(path, ...),
    write_missing_study_uid(path, ...), write_dotdot_uid(path, ...),
    write_long_uid(path, ...), write_garbage(path)
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}

__all__ = [
    "uid",
    "make_dataset",
    "write_dataset",
    "write_instance",
    "write_ct_series",
    "write_truncated",
    "write_missing_sop_instance_uid",
    "write_missing_study_uid",
    "write_dotdot_uid",
    "write_long_uid",
    "write_garbage",
    "no_validation",
    "pixel_bytes",
]


def uid() -> str:
    """A fresh, valid UID (2.25 form, <= 64 chars)."""
    return str(generate_uid(prefix=None))


@contextlib.contextmanager
def no_validation() -> Iterator[None]:
    """Switch pydicom's reading and writing validation off (for bad files)."""
    settings = pydicom_config.settings
    old_w, old_r = settings.writing_validation_mode, settings.reading_validation_mode
    settings.writing_validation_mode = pydicom_config.IGNORE
    settings.reading_validation_mode = pydicom_config.IGNORE
    try:
        yield
    finally:
        settings.writing_validation_mode = old_w
        settings.reading_validation_mode = old_r


def _pixels(rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4096, size=(rows, cols), dtype=np.uint16)


def make_dataset(
    *,
    modality: str = "CT",
    patient_id: str = "PID0001",
    patient_name: str = "Doe^John",
    birth_date: str = "19700101",
    sex: str = "M",
    study_uid: str | None = None,
    study_date: str = "20200115",
    study_time: str = "101500",
    accession: str = "ACC0001",
    study_description: str = "Test study",
    referring_physician: str = "Welby^Marcus",
    study_id: str = "1",
    series_uid: str | None = None,
    series_number: int = 1,
    series_description: str = "Test series",
    body_part: str = "CHEST",
    sop_uid: str | None = None,
    instance_number: int = 1,
    rows: int = 16,
    cols: int = 16,
    requested_procedure_id: str | None = "RP0001",
    procedure_code: str | None = "PC0001",
    implicit: bool = False,
    seed: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Dataset:
    """Build a small valid CT or MR image with file meta set.

    ``RequestAttributesSequence`` (one item with RequestedProcedureID and
    ScheduledProcedureStepID) and ``ProcedureCodeSequence`` (one code item) are
    included for sequence matching unless their value argument is None.
    """
    if modality not in SOP_CLASSES:
        raise ValueError(f"unsupported modality {modality!r}")
    study_uid = study_uid or uid()
    series_uid = series_uid or uid()
    sop_uid = sop_uid or uid()
    sop_class = SOP_CLASSES[modality]

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.StudyTime = study_time
    ds.SeriesTime = study_time
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.Manufacturer = "dicomhub-tests"
    ds.ReferringPhysicianName = referring_physician
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.BodyPartExamined = body_part
    if modality == "CT":
        ds.KVP = "120"
    else:
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = "10"
        ds.RepetitionTime = "500"
        ds.MagneticFieldStrength = "1.5"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study_id
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [0.0, 0.0, float(instance_number)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.FrameOfReferenceUID = uid()
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = float(instance_number)
    ds.SliceThickness = "1.0"
    ds.PixelSpacing = [0.5, 0.5]
    if procedure_code is not None:
        code = Dataset()
        code.CodeValue = procedure_code
        code.CodingSchemeDesignator = "99DICOMHUB"
        code.CodeMeaning = f"Procedure {procedure_code}"
        ds.ProcedureCodeSequence = DicomSequence([code])
    if requested_procedure_id is not None:
        item = Dataset()
        item.RequestedProcedureID = requested_procedure_id
        item.ScheduledProcedureStepID = f"SPS-{requested_procedure_id}"
        ds.RequestAttributesSequence = DicomSequence([item])

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if modality == "CT":
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
    if seed is None:
        seed = zlib.crc32(sop_uid.encode())
    ds.PixelData = _pixels(rows, cols, seed).tobytes()

    for key, value in (extra or {}).items():
        setattr(ds, key, value)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def write_dataset(path: str | os.PathLike[str], ds: Dataset) -> Path:
    """Write ``ds`` as a Part 10 file (meta already set by make_dataset)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return path


def write_part10_raw(path: str | os.PathLike[str], ds: Dataset) -> Path:
    """Write preamble, ``ds.file_meta`` exactly as given, then the data set
    (explicit VR LE unless the meta says implicit). No consistency fix-ups:
    e.g. MediaStorageSOPInstanceUID may differ from SOPInstanceUID."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset as _write_ds
    from pydicom.filewriter import write_file_meta_info

    implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    buf = DicomBytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, ds.file_meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian = True
    body.is_implicit_VR = implicit
    plain = Dataset()
    plain.update(ds)
    with no_validation():
        _write_ds(body, plain)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue() + body.getvalue())
    return path


def write_instance(path: str | os.PathLike[str], **kwargs: Any) -> Dataset:
    """Write one valid instance to ``path`` and return its Dataset."""
    ds = make_dataset(**kwargs)
    write_dataset(path, ds)
    ds.filename = str(path)  # type: ignore[attr-defined]
    return ds


def write_ct_series(
    directory: str | os.PathLike[str],
    n: int,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    rows: int = 64,
    cols: int = 64,
    **kwargs: Any,
) -> list[Dataset]:
    """Write an N-slice CT series (one file per slice) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or uid()
    series_uid = series_uid or uid()
    out = []
    for i in range(1, n + 1):
        ds = write_instance(
            directory / f"ct{i:04d}.dcm",
            modality="CT",
            study_uid=study_uid,
            series_uid=series_uid,
            instance_number=i,
            rows=rows,
            cols=cols,
            **kwargs,
        )
        out.append(ds)
    return out


def pixel_bytes(ds: Dataset) -> bytes:
    """Raw PixelData bytes (no decoding)."""
    return bytes(ds.PixelData)


# --------------------------------------------------------------------------- bad files


def write_truncated(path: str | os.PathLike[str], keep: float = 0.6, **kwargs: Any) -> Dataset:
    """A valid file cut off in the middle of its PixelData (file meta intact)."""
    kwargs.setdefault("rows", 64)
    kwargs.setdefault("cols", 64)
    ds = write_instance(path, **kwargs)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    return ds


def _write_without(path: str | os.PathLike[str], keyword: str, **kwargs: Any) -> Dataset:
    ds = make_dataset(**kwargs)
    delattr(ds, keyword)
    with no_validation():
        write_dataset(path, ds)
    return ds


def write_missing_sop_instance_uid(path: str | os.PathLike[str], **kwargs: Any) -> Dataset:
    """SOPInstanceUID removed from the data set (the file meta still names one)."""
    return _write_without(path, "SOPInstanceUID", **kwargs)


def write_missing_study_uid(path: str | os.PathLike[str], **kwargs: Any) -> Dataset:
    """StudyInstanceUID removed from the data set."""
    return _write_without(path, "StudyInstanceUID", **kwargs)


def write_bad_sop_uid(path: str | os.PathLike[str], bad_uid: str, **kwargs: Any) -> Dataset:
    """An instance whose SOP Instance UID (data set and file meta) is ``bad_uid``."""
    with no_validation():
        ds = make_dataset(sop_uid=bad_uid, **kwargs)
        write_dataset(path, ds)
    return ds


def dotdot_uid() -> str:
    """A SOP Instance UID containing ``../`` (path traversal attempt)."""
    return "1.2.826.0.1.3680043.8.498.../../../../etc/" + uid()[-8:]


def long_uid(length: int = 70) -> str:
    """A syntactically plausible UID that is longer than 64 characters."""
    base = "1.2.826.0.1.3680043.8.498."
    digits = "".join(str((i % 9) + 1) for i in range(length - len(base)))
    out = base + digits
    assert len(out) == length
    return out


def write_dotdot_uid(path: str | os.PathLike[str], **kwargs: Any) -> Dataset:
    return write_bad_sop_uid(path, dotdot_uid(), **kwargs)


def write_long_uid(path: str | os.PathLike[str], length: int = 70, **kwargs: Any) -> Dataset:
    return write_bad_sop_uid(path, long_uid(length), **kwargs)


def write_garbage(path: str | os.PathLike[str], size: int = 2048, seed: int = 1) -> Path:
    """Random bytes with a .dcm name (not DICOM at all)."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def uids_of(datasets: Sequence[Dataset]) -> list[str]:
    return [str(d.SOPInstanceUID) for d in datasets]


def study_corpus(
    studies: int, patients: int, series_size: int, *, prefix: str, year: int
) -> Iterator[tuple[int, str, int, Dataset]]:
    """A corpus of ``studies`` studies over ``patients`` patients, each with a CT and an
    MR series of ``series_size`` instances: (study index, modality, instance number,
    data set). ``prefix`` starts the Patient IDs, names and accession numbers, so that
    corpora of several tests never share a patient."""
    for s in range(studies):
        study_uid = uid()
        for series_number, modality in ((1, "CT"), (2, "MR")):
            series_uid = uid()
            for i in range(1, series_size + 1):
                yield s, modality, i, make_dataset(
                    modality=modality,
                    patient_id=f"{prefix.upper()}{s % patients:03d}",
                    patient_name=f"{prefix}^{s % patients:03d}",
                    study_uid=study_uid,
                    study_date=f"{year}{1 + s % 12:02d}{1 + s:02d}",
                    accession=f"{prefix.upper()}A{s:04d}",
                    series_uid=series_uid,
                    series_number=series_number,
                    instance_number=i,
                    seed=s * 100 + series_number * 10 + i,
                )
