"""Synthetic DICOM data sets for the DIMSE benchmark, cached under ``benchmarks/.cache/``.

Two kinds of data are generated (deterministically from a seed):

* a CT series: ``ct_count`` slices of 512x512 16-bit (BitsStored 12, rescale -1024/1),
  one patient/study/series, smooth phantom plus noise;
* a "small" set: ``small_count`` instances of 64x64 16-bit MR/CT, grouped in studies of
  5 instances (2 series of 3+2) over ~``small_count/10`` patients with Latin names
  (about 6% of family names start with "A"), StudyDate spread over 2000-2024 and an
  AccessionNumber per study.  The small set exists twice, as sets "A" and "B": same
  patients, names, dates and study layout, but every Study/Series/SOP Instance UID and
  AccessionNumber differs, so that the second ingest run really stores new instances.
  Each set is split into four sub-directories ``q0``..``q3`` (by study) for the
  4-association run.

All files are Explicit VR Little Endian Part-10 files.  Layout of a cache entry::

    .cache/<key>/manifest.json
    .cache/<key>/ct/CT000001.dcm ...
    .cache/<key>/small-A/q0/IM000001.dcm ...
    .cache/<key>/small-B/q3/...
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

FORMAT_VERSION = 1
CACHE_ROOT = Path(__file__).resolve().parent / ".cache"
INSTANCES_PER_STUDY = 5
N_QUARTERS = 4

# ~50 Latin family names, 3 of which start with "A" (=> ~6% of patients/studies match A*)
FAMILY_NAMES = [
    "Aurelius",
    "Antonius",
    "Aemilius",
    "Brutus",
    "Caecilius",
    "Cassius",
    "Claudius",
    "Cornelius",
    "Crassus",
    "Decius",
    "Domitius",
    "Fabius",
    "Flavius",
    "Fulvius",
    "Galerius",
    "Horatius",
    "Hortensius",
    "Julius",
    "Junius",
    "Licinius",
    "Livius",
    "Lucretius",
    "Marius",
    "Maximus",
    "Metellus",
    "Naevius",
    "Nero",
    "Octavius",
    "Ovidius",
    "Papirius",
    "Petronius",
    "Plinius",
    "Pompeius",
    "Porcius",
    "Quinctius",
    "Rufus",
    "Sabinus",
    "Scipio",
    "Sempronius",
    "Seneca",
    "Sergius",
    "Servilius",
    "Sulpicius",
    "Tarquinius",
    "Terentius",
    "Tullius",
    "Valerius",
    "Varro",
    "Vergilius",
    "Vibius",
]
GIVEN_NAMES = [
    "Marcus",
    "Lucius",
    "Gaius",
    "Publius",
    "Quintus",
    "Titus",
    "Sextus",
    "Gnaeus",
    "Decimus",
    "Aulus",
    "Tiberius",
    "Servius",
    "Spurius",
    "Manius",
    "Appius",
    "Julia",
    "Claudia",
    "Cornelia",
    "Livia",
    "Octavia",
    "Flavia",
    "Antonia",
    "Valeria",
]
STUDY_DESCRIPTIONS = ["MR BRAIN", "MR KNEE", "CT CHEST", "CT ABDOMEN", "MR SPINE", "CT HEAD"]

# The C-FIND date-range query used by the benchmark (~2.7% of 25 years => ~54/2000 studies)
DATE_RANGE = "20100101-20100831"
CT_STUDY_DATE = "20250115"  # outside 2000-2024 so it never matches the date-range query


def _uid(seed: int, *parts: object) -> str:
    return generate_uid(entropy_srcs=[f"dimse-bench-v{FORMAT_VERSION}", str(seed), *map(str, parts)])


def cache_key(ct_count: int, small_count: int, seed: int) -> str:
    return f"v{FORMAT_VERSION}-ct{ct_count}-small{small_count}-seed{seed}"


def _file_meta(ds: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DIMSE_BENCH"
    return meta


def _save(ds: Dataset, path: Path) -> int:
    ds.file_meta = _file_meta(ds)
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return path.stat().st_size


# --------------------------------------------------------------------------- CT series


def _ct_slices(count: int, rng: np.random.Generator) -> Any:
    """Yield uint16 512x512 slices (stored values, HU + 1024) of a simple body phantom."""
    n = 512
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    cx = cy = (n - 1) / 2.0
    for k in range(count):
        t = k / max(count - 1, 1)
        img = np.zeros((n, n), dtype=np.float32)  # air: -1000 HU -> ~24
        img += 24.0
        # body ellipse (soft tissue ~ +40 HU), size varies along z
        a, b = 220 - 30 * abs(t - 0.5), 160 - 20 * abs(t - 0.5)
        body = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0
        img[body] = 1064.0
        # lungs (~ -800 HU) in the upper part of the volume
        if t < 0.7:
            for sx in (-1, 1):
                lung = ((x - cx - sx * 85) / 60) ** 2 + ((y - cy + 10) / (95 - 40 * t)) ** 2 <= 1.0
                img[lung] = 224.0
        # spine (bone ~ +700 HU) and a contrast-filled vessel
        spine = ((x - cx) / 22) ** 2 + ((y - cy - 110) / 20) ** 2 <= 1.0
        img[spine] = 1724.0
        vessel = ((x - cx - 25) / 14) ** 2 + ((y - cy - 60) / 14) ** 2 <= 1.0
        img[vessel] = 1324.0
        # gentle gradient + noise
        img += 8.0 * np.sin(x / 37.0 + t * 3.0) * body
        img += rng.normal(0.0, 12.0, size=(n, n)).astype(np.float32)
        yield np.clip(img, 0, 4095).astype(np.uint16)


def _generate_ct(out: Path, count: int, seed: int) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    study_uid = _uid(seed, "ct-study")
    series_uid = _uid(seed, "ct-series")
    for_uid = _uid(seed, "ct-for")
    total = 0
    sop_uids = []
    for i, pixels in enumerate(_ct_slices(count, rng)):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = _uid(seed, "ct-sop", i)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = CT_STUDY_DATE
        ds.StudyTime = ds.SeriesTime = "101500"
        ds.ContentTime = f"1015{i % 60:02d}"
        ds.AccessionNumber = "CTBENCH0001"
        ds.Modality = "CT"
        ds.Manufacturer = "DIMSE_BENCH"
        ds.InstitutionName = "Benchmark Hospital"
        ds.ReferringPhysicianName = "Galenus^Claudius"
        ds.StudyDescription = "CT CHEST ABDOMEN"
        ds.SeriesDescription = "AXIAL 1.25mm"
        ds.PatientName = "Bench^Computed"
        ds.PatientID = "BENCH-CT-0001"
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = "1.25"
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 2
        ds.InstanceNumber = i + 1
        z = -1.25 * i
        ds.ImagePositionPatient = [-249.51171875, -249.51171875, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = for_uid
        ds.SliceLocation = z
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = 512
        ds.Columns = 512
        ds.PixelSpacing = [0.9765625, 0.9765625]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = pixels.tobytes()
        total += _save(ds, out / f"CT{i + 1:06d}.dcm")
        sop_uids.append(ds.SOPInstanceUID)
    return {
        "dir": out.name,
        "count": count,
        "bytes": total,
        "study_uid": study_uid,
        "series_uid": series_uid,
        "patient_id": "BENCH-CT-0001",
    }


# --------------------------------------------------------------------------- small set


def _demographics(small_count: int, seed: int) -> dict[str, Any]:
    """Patients and per-study attributes shared by sets A and B."""
    n_studies = max(1, small_count // INSTANCES_PER_STUDY)
    n_patients = max(1, n_studies // 2)
    rng = np.random.default_rng(seed)
    patients = []
    for p in range(n_patients):
        family = FAMILY_NAMES[int(rng.integers(len(FAMILY_NAMES)))]
        given = GIVEN_NAMES[int(rng.integers(len(GIVEN_NAMES)))]
        birth = _dt.date(1930, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 365 * 70)))
        patients.append(
            {
                "id": f"PAT{p + 1:06d}",
                "name": f"{family}^{given}",
                "birth": birth.strftime("%Y%m%d"),
                "sex": "F" if given.endswith("a") else "M",
            }
        )
    start = _dt.date(2000, 1, 1)
    span = (_dt.date(2024, 12, 31) - start).days + 1
    studies = []
    for s in range(n_studies):
        # every patient gets at least one study, the rest are spread at random
        p = s if s < n_patients else int(rng.integers(n_patients))
        date = start + _dt.timedelta(days=int(rng.integers(0, span)))
        studies.append(
            {
                "patient": p,
                "date": date.strftime("%Y%m%d"),
                "time": f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}00",
                "modality": "MR" if s % 2 == 0 else "CT",
                "description": STUDY_DESCRIPTIONS[int(rng.integers(len(STUDY_DESCRIPTIONS)))],
            }
        )
    return {"patients": patients, "studies": studies}


def _generate_small(out: Path, label: str, demo: dict[str, Any], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed + (11 if label == "A" else 22))
    n = 64
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    base = 600.0 * np.exp(-(((x - 32) / 20) ** 2 + ((y - 32) / 24) ** 2)) + 100.0
    patients = demo["patients"]
    studies_out = []
    total_bytes = 0
    count = 0
    n_studies = len(demo["studies"])
    for q in range(N_QUARTERS):
        (out / f"q{q}").mkdir(parents=True, exist_ok=True)
    for s, st in enumerate(demo["studies"]):
        pat = patients[st["patient"]]
        q = s * N_QUARTERS // n_studies
        study_uid = _uid(seed, "small", label, "study", s)
        series_uids = [_uid(seed, "small", label, "series", s, k) for k in range(2)]
        sop_class = MRImageStorage if st["modality"] == "MR" else CTImageStorage
        for i in range(INSTANCES_PER_STUDY):
            ser = 0 if i < 3 else 1
            ds = Dataset()
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = _uid(seed, "small", label, "sop", s, i)
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = st["date"]
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = st["time"]
            ds.AccessionNumber = f"{label}{s + 1:09d}"
            ds.Modality = st["modality"]
            ds.Manufacturer = "DIMSE_BENCH"
            ds.InstitutionName = "Benchmark Hospital"
            ds.ReferringPhysicianName = "Galenus^Claudius"
            ds.StudyDescription = st["description"]
            ds.SeriesDescription = f"SERIES {ser + 1}"
            ds.PatientName = pat["name"]
            ds.PatientID = pat["id"]
            ds.PatientBirthDate = pat["birth"]
            ds.PatientSex = pat["sex"]
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uids[ser]
            ds.StudyID = str(s + 1)
            ds.SeriesNumber = ser + 1
            ds.InstanceNumber = i + 1
            ds.ImagePositionPatient = [-120.0, -120.0, float(i * 5)]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.FrameOfReferenceUID = _uid(seed, "small", label, "for", s)
            ds.SliceThickness = "5"
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = n
            ds.Columns = n
            ds.PixelSpacing = [3.75, 3.75]
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            if st["modality"] == "CT":
                ds.RescaleIntercept = "-1024"
                ds.RescaleSlope = "1"
            pix = base * (0.8 + 0.05 * i) + rng.normal(0.0, 15.0, size=(n, n))
            ds.PixelData = np.clip(pix, 0, 65535).astype(np.uint16).tobytes()
            count += 1
            total_bytes += _save(ds, out / f"q{q}" / f"IM{count:06d}.dcm")
        studies_out.append({"study_uid": study_uid, "series_uids": series_uids, "patient_id": pat["id"]})
    return {"dir": out.name, "count": count, "bytes": total_bytes, "studies": studies_out}


def ensure_datasets(
    ct_count: int,
    small_count: int,
    seed: int = 20240601,
    root: Path = CACHE_ROOT,
    log: Any = None,
) -> tuple[Path, dict[str, Any]]:
    """Generate (or reuse) the cached data sets; returns (cache dir, manifest)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    key = cache_key(ct_count, small_count, seed)
    base = root / key
    manifest_path = base / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        log(f"using cached data sets in {base}")
        return base, manifest
    if base.exists():
        shutil.rmtree(base)
    tmp = root / (key + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    t0 = time.monotonic()
    log(f"generating CT series ({ct_count} x 512x512) ...")
    ct = _generate_ct(tmp / "ct", ct_count, seed)
    demo = _demographics(small_count, seed)
    small = {}
    for label in ("A", "B"):
        log(f"generating small set {label} ({small_count} x 64x64) ...")
        small[label] = _generate_small(tmp / f"small-{label}", label, demo, seed)
    # Query parameters for the C-FIND measurements (identical for sets A and B).
    studies = demo["studies"]
    patients = demo["patients"]
    # exact PatientID: the patient of the middle study
    pid = patients[studies[len(studies) // 2]["patient"]]["id"]
    lo, hi = DATE_RANGE.split("-")
    expected = {
        "patient_id": sum(1 for st in studies if patients[st["patient"]]["id"] == pid),
        "patient_name": sum(1 for st in studies if patients[st["patient"]]["name"].upper().startswith("A")),
        "date_range": sum(1 for st in studies if lo <= st["date"] <= hi),
        "series": 2,
    }
    manifest = {
        "format": FORMAT_VERSION,
        "key": key,
        "seed": seed,
        "ct": ct,
        "small": small,
        "query": {
            "patient_id": pid,
            "patient_name": "A*",
            "date_range": DATE_RANGE,
            "series_study_index": len(studies) // 3,
            "expected_per_set": expected,
        },
        "n_studies": len(studies),
        "n_patients": len(patients),
        "generated_s": round(time.monotonic() - t0, 1),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, base)
    log(f"data sets generated in {manifest['generated_s']} s -> {base}")
    return base, manifest


if __name__ == "__main__":  # pragma: no cover - manual helper
    import argparse

    ap = argparse.ArgumentParser(description="generate the cached benchmark data sets")
    ap.add_argument("--ct-count", type=int, default=300)
    ap.add_argument("--small-count", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=20240601)
    a = ap.parse_args()
    d, m = ensure_datasets(a.ct_count, a.small_count, a.seed)
    print(d)
    print(json.dumps(m["query"], indent=1))
