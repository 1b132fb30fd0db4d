"""Transcoding streams: peak memory stays at a few frames, not the object size."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicomhub.codec import read_frames, transcode_file

ROWS = COLS = 512
FRAMES = 120  # 120 x 512 x 512 x 2 bytes = 63 MB of pixel data
FRAME_BYTES = ROWS * COLS * 2


def _frame(k: int) -> np.ndarray:
    y, x = np.mgrid[0:ROWS, 0:COLS]
    return ((x + 2 * y + 7 * k) % 4096).astype("<u2")


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~63 MB multi-frame object, written frame by frame (the test itself must not hold it)."""
    path = tmp_path_factory.mktemp("stream") / "big.dcm"
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = ROWS, COLS, FRAMES
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    with open(path, "ab") as fh:
        fh.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, FRAME_BYTES * FRAMES))
        for k in range(FRAMES):
            fh.write(_frame(k).tobytes())
    return path


def _peak(src: Path, target: str, dst: Path) -> int:
    with open(dst, "wb") as out:
        tracemalloc.start()
        try:
            transcode_file(src, target, out)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    return peak


def test_transcode_streams_frame_by_frame(big_file: Path, tmp_path: Path) -> None:
    size = big_file.stat().st_size
    assert size > 60_000_000
    budget = 12 * FRAME_BYTES  # "a few frames": ~6 MB, against 63 MB of pixel data
    rle = tmp_path / "big-rle.dcm"
    peaks = {"explicit-le -> rle": _peak(big_file, "rle", rle)}
    native = tmp_path / "big-native.dcm"
    peaks["rle -> explicit-le"] = _peak(rle, "explicit-le", native)
    peaks["explicit-le -> implicit-le"] = _peak(native, "implicit-le", tmp_path / "big-implicit.dcm")
    for label, peak in peaks.items():
        print(f"{label}: peak {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB object")
        assert peak < budget, f"{label}: peak {peak / 1e6:.1f} MB"
    # The round trip kept every frame (spot-check first, middle and last frame).
    for number in (1, FRAMES // 2, FRAMES):
        (frame,) = read_frames(native, [number], None)
        assert frame == _frame(number - 1).tobytes()
    header = dcmread(native, stop_before_pixels=True)
    assert header.NumberOfFrames == FRAMES and header.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert native.stat().st_size == pytest.approx(size, abs=1024)
    assert read_frames(rle, [FRAMES], "explicit-le") == [_frame(FRAMES - 1).tobytes()]
