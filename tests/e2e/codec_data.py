"""Test data in compressed transfer syntaxes, and one very large object.

Built with pydicom 3 + numpy and the pixel codecs the test venv has
(pylibjpeg-openjpeg for JPEG 2000, pyjpegls for JPEG-LS, pylibjpeg-rle);
nothing here uses dicomhub's own codec module, so the tests compare the server
against an independent implementation.

    signed_ct(...)            uncompressed 16-bit signed CT (Dataset + its pixel array)
    compressed(ds, uid)       a copy of ``ds`` compressed losslessly in ``uid``
    rgb_j2k_rct(...)          8-bit RGB image stored as JPEG 2000 lossless with MCT (YBR_RCT)
    corrupt_j2k(...)          JPEG 2000 lossless framing around a garbage codestream
    mpeg2_video(...)          MPEG-2 "video" (garbage elementary stream, valid framing)
    write_large_multiframe()  a huge multi-frame file written in chunks (never in memory)
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import datagen
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    MPEG2MPML,
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)

EXPLICIT_LE = str(ExplicitVRLittleEndian)
IMPLICIT_LE = str(ImplicitVRLittleEndian)
DEFLATED = "1.2.840.10008.1.2.1.99"
RLE = "1.2.840.10008.1.2.5"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
J2K_LOSSLESS = str(JPEG2000Lossless)
J2K = "1.2.840.10008.1.2.4.91"
MPEG2 = str(MPEG2MPML)
VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"

__all__ = [
    "EXPLICIT_LE",
    "IMPLICIT_LE",
    "RLE",
    "JPEG_LS_LOSSLESS",
    "J2K_LOSSLESS",
    "MPEG2",
    "signed_ct",
    "compressed",
    "rgb_j2k_rct",
    "corrupt_j2k",
    "mpeg2_video",
    "save",
    "LargeObject",
    "write_large_multiframe",
    "large_frame",
]


def _meta(ds: Dataset, ts: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta


def signed_ct(rows: int = 64, cols: int = 48, seed: int = 0, **kwargs: object) -> tuple[Dataset, np.ndarray]:
    """An uncompressed (explicit VR LE) CT with 16-bit signed pixels in -1024..3071.

    Smooth gradient plus noise, so that compressors have something to do and
    a decoder that loses the sign or the high bits gives other values.
    """
    ds = datagen.make_dataset(modality="CT", rows=rows, cols=cols, **kwargs)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    arr = (yy * 37 + xx * 11 - 1024 + rng.integers(-200, 200, size=(rows, cols))).clip(-1024, 3071)
    arr = arr.astype(np.int16)
    arr[0, 0], arr[-1, -1] = -1024, 3071  # the extremes present in every image
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.PixelData = arr.tobytes()
    return ds, arr


def compressed(ds: Dataset, uid: str) -> Dataset:
    """A deep copy of ``ds`` compressed (lossless) into ``uid`` by pydicom."""
    out = copy.deepcopy(ds)
    out.compress(uid)
    return out


def rgb_j2k_rct(
    rows: int = 40, cols: int = 56, seed: int = 7, **kwargs: object
) -> tuple[Dataset, np.ndarray]:
    """8-bit RGB pixels encoded as JPEG 2000 lossless with the reversible colour
    transform, so the stored Photometric Interpretation is ``YBR_RCT``; decoded,
    the pixels are RGB again."""
    import openjpeg

    ds = datagen.make_dataset(modality="CT", rows=rows, cols=cols, **kwargs)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    rgb = np.stack([(yy * 5) % 256, (xx * 3) % 256, rng.integers(0, 256, size=(rows, cols))], axis=-1)
    rgb = rgb.astype(np.uint8)
    codestream = openjpeg.encode(rgb, bits_stored=8, photometric_interpretation=1, use_mct=True)
    for kw in ("RescaleIntercept", "RescaleSlope"):
        if kw in ds:
            delattr(ds, kw)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_RCT"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "00"
    _meta(ds, J2K_LOSSLESS)
    return ds, rgb


def corrupt_j2k(seed: int = 3, **kwargs: object) -> Dataset:
    """A CT whose encapsulation is valid (Basic Offset Table item, one fragment,
    sequence delimiter) but whose JPEG 2000 codestream is garbage after the SOC
    and SIZ markers: it cannot be decoded."""
    ds, _ = signed_ct(seed=seed, **kwargs)
    rng = np.random.default_rng(seed)
    garbage = b"\xff\x4f\xff\x51" + rng.integers(0, 256, size=3000, dtype=np.uint8).tobytes()
    ds.PixelData = encapsulate([garbage])
    ds["PixelData"].VR = "OB"
    _meta(ds, J2K_LOSSLESS)
    return ds


def mpeg2_video(seed: int = 4, frames: int = 3, **kwargs: object) -> Dataset:
    """A Video Endoscopic Image in MPEG-2 MP@ML: valid framing, garbage stream.
    No server in this test set can decode it, so it cannot be transcoded."""
    ds = datagen.make_dataset(modality="CT", rows=480, cols=640, **kwargs)  # type: ignore[arg-type]
    for kw in ("RescaleIntercept", "RescaleSlope", "KVP", "SliceThickness", "ImagePositionPatient",
               "ImageOrientationPatient", "SliceLocation", "PixelSpacing"):  # fmt: skip
        if kw in ds:
            delattr(ds, kw)
    ds.SOPClassUID = VIDEO_ENDOSCOPIC
    ds.Modality = "ES"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = frames
    ds.FrameTime = "33.3"
    ds.FrameIncrementPointer = 0x00181063
    rng = np.random.default_rng(seed)
    stream = b"\x00\x00\x01\xb3" + rng.integers(0, 256, size=4000, dtype=np.uint8).tobytes()
    ds.PixelData = encapsulate([stream], has_bot=False)
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    _meta(ds, MPEG2)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a Part 10 file in the transfer syntax its file meta names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------- large object


@dataclass
class LargeObject:
    path: Path
    dataset: Dataset  # header only (no PixelData)
    frames: int
    rows: int
    cols: int
    pixel_sha256: str
    pixel_bytes: int

    @property
    def file_size(self) -> int:
        return self.path.stat().st_size


def _large_base(rows: int, cols: int) -> np.ndarray:
    return np.arange(rows * cols, dtype=np.uint32).reshape(rows, cols) * np.uint32(2654435761)


def _large_frame(base: np.ndarray, index: int) -> np.ndarray:
    return (((base + np.uint32(index * 40503)) >> np.uint32(7)) & np.uint32(0x0FFF)).astype("<u2")


def large_frame(index: int, rows: int, cols: int) -> np.ndarray:
    """Frame ``index`` (0-based) of the large object: cheap to make, different per frame."""
    return _large_frame(_large_base(rows, cols), index)


def write_large_multiframe(path: Path, frames: int = 500, rows: int = 512, cols: int = 1024) -> LargeObject:
    """Write a multi-frame explicit VR LE CT of ``frames`` x ``rows`` x ``cols``
    16-bit pixels without holding it in memory: the header is written by
    pydicom, then the Pixel Data element header and the frames chunk by chunk.
    Returns the SHA-256 of the Pixel Data value."""
    ds = datagen.make_dataset(modality="CT", rows=rows, cols=cols)
    del ds.PixelData
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00541330  # ImageIndex; harmless for a test object
    pixel_len = frames * rows * cols * 2
    assert pixel_len < 0xFFFFFFFF

    head = DicomBytesIO()
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, ds.file_meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    plain = Dataset()
    plain.update(ds)
    write_dataset(body, plain)

    sha = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(head.getvalue())
        fh.write(body.getvalue())
        # (7FE0,0010) OW, explicit VR LE long form: tag, VR, 2 reserved, 4-byte length
        fh.write(b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_len.to_bytes(4, "little"))
        base = _large_base(rows, cols)
        for i in range(frames):
            chunk = _large_frame(base, i).tobytes()
            sha.update(chunk)
            fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    return LargeObject(path, ds, frames, rows, cols, sha.hexdigest(), pixel_len)
