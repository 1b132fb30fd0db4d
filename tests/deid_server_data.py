"""A small multi-series study for the server-side de-identification tests.

Two CT series sharing a Frame of Reference, a Comprehensive SR whose evidence
and content reference every image, and (optionally) a Secondary Capture with
burned-in annotation. Every identifying value is listed in :data:`IDENTIFIERS`
so that a test can assert none of them survives.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from tests import datagen

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
PATIENT_ID = "PID-DEID-7781"
PATIENT_NAME = "Identifiable^Jane"
ACCESSION = "ACC778812"
# Values that must not appear in any de-identified object.
IDENTIFIERS = (PATIENT_ID, "Identifiable", ACCESSION, "19610203")
SECRET = "a-test-secret-of-enough-length-0123456789"


@dataclass
class Study:
    study_uid: str
    series_uids: list[str]
    images: list[Dataset] = field(default_factory=list)
    sr: Dataset | None = None
    capture: Dataset | None = None

    @property
    def datasets(self) -> list[Dataset]:
        out = list(self.images)
        if self.sr is not None:
            out.append(self.sr)
        if self.capture is not None:
            out.append(self.capture)
        return out

    @property
    def uids(self) -> set[str]:
        """Every UID an original object carries that must be replaced."""
        found = {self.study_uid, *self.series_uids}
        for ds in self.datasets:
            found.add(str(ds.SOPInstanceUID))
            if "FrameOfReferenceUID" in ds:
                found.add(str(ds.FrameOfReferenceUID))
        return found


def _common() -> dict[str, object]:
    return {
        "patient_id": PATIENT_ID,
        "patient_name": PATIENT_NAME,
        "birth_date": "19610203",
        "accession": ACCESSION,
        "rows": 16,
        "cols": 16,
    }


def _sop_ref(ds: Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return ref


def make_sr(study_uid: str, series_uid: str, images: list[Dataset]) -> Dataset:
    """A Comprehensive SR citing every image: evidence by series, and one IMAGE content item."""
    base = datagen.make_dataset(study_uid=study_uid, series_uid=series_uid, **_common())  # type: ignore[arg-type]
    ds = Dataset()
    for keyword in (
        "SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
        "StudyDescription", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
        "StudyInstanceUID", "StudyID",
    ):  # fmt: skip
        setattr(ds, keyword, base.get(keyword))
    ds.SOPClassUID = COMPREHENSIVE_SR
    ds.SOPInstanceUID = datagen.uid()
    ds.Modality = "SR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.ContentDate = "20200115"
    ds.ContentTime = "101500"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    by_series: dict[str, list[Dataset]] = {}
    for image in images:
        by_series.setdefault(str(image.SeriesInstanceUID), []).append(image)
    evidence = Dataset()
    evidence.StudyInstanceUID = study_uid
    evidence.ReferencedSeriesSequence = DicomSequence()
    for uid, members in by_series.items():
        item = Dataset()
        item.SeriesInstanceUID = uid
        item.ReferencedSOPSequence = DicomSequence([_sop_ref(m) for m in members])
        evidence.ReferencedSeriesSequence.append(item)
    ds.CurrentRequestedProcedureEvidenceSequence = DicomSequence([evidence])
    content = Dataset()
    content.RelationshipType = "CONTAINS"
    content.ValueType = "IMAGE"
    content.ReferencedSOPSequence = DicomSequence([_sop_ref(images[0])])
    ds.ContentSequence = DicomSequence([content])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = COMPREHENSIVE_SR
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def make_capture(study_uid: str, value: int = 1000) -> Dataset:
    """A Secondary Capture with BurnedInAnnotation YES and every pixel ``value``."""
    ds = datagen.make_dataset(study_uid=study_uid, series_number=50, **_common())  # type: ignore[arg-type]
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.PixelData = np.full((16, 16), value, dtype=np.uint16).tobytes()
    return ds


def make_study(*, images_per_series: int = 3, capture: bool = False) -> Study:
    study_uid = datagen.uid()
    series = [datagen.uid(), datagen.uid()]
    frame_of_reference = datagen.uid()
    study = Study(study_uid, list(series))
    for s, series_uid in enumerate(series):
        for n in range(images_per_series):
            ds = datagen.make_dataset(
                study_uid=study_uid,
                series_uid=series_uid,
                series_number=s + 1,
                instance_number=n + 1,
                **_common(),  # type: ignore[arg-type]
            )
            ds.FrameOfReferenceUID = frame_of_reference
            study.images.append(ds)
    sr_series = datagen.uid()
    study.series_uids.append(sr_series)
    study.sr = make_sr(study_uid, sr_series, study.images)
    if capture:
        study.capture = make_capture(study_uid)
        study.series_uids.append(str(study.capture.SeriesInstanceUID))
    return study


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_study(study: Study, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(study.datasets):
        path = directory / f"obj{i:03d}.dcm"
        path.write_bytes(encode(ds))
        paths.append(path)
    return paths


def all_values(ds: Dataset) -> set[str]:
    """Every string value in ``ds``, sequences included (for "nothing identifying left")."""
    found: set[str] = set()

    def walk(d: Dataset) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
            elif elem.VR not in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
                values = elem.value if isinstance(elem.value, (list, tuple)) else [elem.value]
                found.update(str(v) for v in values)

    walk(ds)
    return found


def referenced_uids(ds: Dataset) -> set[str]:
    """The ReferencedSOPInstanceUIDs and SeriesInstanceUIDs cited inside ``ds``'s sequences."""
    found: set[str] = set()

    def walk(d: Dataset, nested: bool) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item, True)
            elif nested and elem.keyword in ("ReferencedSOPInstanceUID", "SeriesInstanceUID"):
                found.add(str(elem.value))

    walk(ds, False)
    return found
