"""Round trips through dicomhub.codec on pydicom's sample files and generated images."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicomhub.codec import (
    check_decodable,
    codec_table_markdown,
    lossless_targets,
    read_frames,
    transcode_bytes,
    transcode_file,
    transfer_syntax,
    transfer_syntaxes,
)
from dicomhub.errors import InvalidRequest, NotFound, TranscodeError

TARGETS = [
    "explicit-le",
    "implicit-le",
    "explicit-be",
    "deflated",
    "rle",
    "jpeg-ls-lossless",
    "j2k-lossless",
    "jpeg-ls-near-lossless",
    "j2k",
    "jpeg-baseline",
]
LOSSY = {"jpeg-ls-near-lossless": "ISO_14495_1", "j2k": "ISO_15444_1", "jpeg-baseline": "ISO_10918_1"}
PSNR_FLOOR = 30.0

# pydicom's sample files, one per source syntax / kind of pixel data (pydicom-data ones marked *).
SAMPLES = [
    "CT_small.dcm",  # explicit LE, 16-bit signed
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",  # deflated
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "JPEG2000.dcm",  # J2K lossy, signed
    "JPGExtended.dcm",  # 12-bit JPEG extended
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline YBR_FULL
    "SC_rgb_rle_2frame.dcm",  # multi-frame RGB
    "examples_palette.dcm",  # PALETTE COLOR
    "SC_ybr_full_422_uncompressed.dcm",
    "JPEGLSNearLossless_08.dcm",
    "JPEG-LL.dcm",  # * JPEG lossless process 14
    "JPGLosslessP14SV1_1s_1f_8b.dcm",  # * JPEG lossless SV1
    "emri_small_jpeg_2k_lossless.dcm",  # * multi-frame J2K
    "US1_J2KR.dcm",  # * YBR_RCT
]

_psnr_table: list[tuple[str, str, float]] = []


@pytest.fixture(scope="module", autouse=True)
def _print_psnr_table(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not _psnr_table:
        return
    # Printed past the output capture, so the table shows in every run (not only on failure).
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(f"{'lossy transcode: source':40} {'target':24} {'PSNR dB':>8}")
        for source, target, psnr in sorted(_psnr_table):
            reporter.write_line(f"{source:40} {target:24} {psnr:8.1f}")


def _sample(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom-data)")
    return str(path)


def _psnr(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any], bits: int) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(((1 << bits) - 1) ** 2 / mse)


def _expected_failure(ds: Dataset, target: str) -> bool:
    """The pairs the standard or the encoders rule out (checked to fail cleanly)."""
    pi = str(ds.PhotometricInterpretation)
    if target == "jpeg-baseline":
        return bool(ds.BitsStored != 8 or ds.PixelRepresentation != 0 or pi == "PALETTE COLOR")
    if target in ("j2k", "jpeg-ls-near-lossless") and pi == "PALETTE COLOR":
        return True
    # OpenJPEG (as wrapped by pylibjpeg-openjpeg) uses 6 resolutions: needs >= 32 pixels a side.
    return target.startswith("j2k") and min(int(ds.Rows), int(ds.Columns)) < 32


def _check_roundtrip(label: str, path: str, target: str) -> None:
    src = dcmread(path)
    expected = src.pixel_array
    target_uid = transfer_syntax(target).uid
    out = io.BytesIO()
    if _expected_failure(src, target):
        with pytest.raises(TranscodeError):
            transcode_file(path, target_uid, out, allow_lossy=True)
        return
    info = transcode_file(path, target_uid, out, allow_lossy=True)
    result = dcmread(io.BytesIO(out.getvalue()))
    assert result.file_meta.TransferSyntaxUID == target_uid
    assert result.file_meta.ImplementationClassUID == "1.2.826.0.1.3680043.10.1419.1"
    assert result.file_meta.MediaStorageSOPInstanceUID == src.file_meta.MediaStorageSOPInstanceUID
    assert result.SOPInstanceUID == src.SOPInstanceUID
    assert info.frames == int(src.get("NumberOfFrames") or 1)
    actual = result.pixel_array
    assert actual.shape == expected.shape
    was_lossy = str(src.get("LossyImageCompression", "")) == "01"
    if src.file_meta.TransferSyntaxUID == target_uid:
        assert not info.lossy  # the same syntax is copied, not re-encoded
        np.testing.assert_array_equal(actual, expected)
    elif target in LOSSY:
        assert info.lossy
        psnr = _psnr(expected, actual, int(src.BitsStored))
        _psnr_table.append((label, target, psnr))
        assert psnr > PSNR_FLOOR, f"{label} -> {target}: PSNR {psnr:.1f} dB"
        assert result.LossyImageCompression == "01"
        methods = result.LossyImageCompressionMethod
        methods = list(methods) if not isinstance(methods, str) else [methods]
        assert methods[-1] == LOSSY[target]
        ratios = result.LossyImageCompressionRatio
        ratios = list(ratios) if isinstance(ratios, list | tuple) or hasattr(ratios, "__len__") else [ratios]
        assert float(ratios[-1]) > 0  # tiny noisy images can come out bigger than raw
        if "LossyImageCompressionRatio" in src:
            assert len(ratios) == len(list(np.atleast_1d(src.LossyImageCompressionRatio))) + 1
    else:
        assert not info.lossy
        np.testing.assert_array_equal(actual, expected)
        if was_lossy:
            assert result.LossyImageCompression == "01"
    pi = str(result.PhotometricInterpretation)
    if src.file_meta.TransferSyntaxUID == target_uid:
        assert pi == str(src.PhotometricInterpretation)
    elif int(src.SamplesPerPixel) == 3:
        if transfer_syntax(target).encapsulated or str(src.PhotometricInterpretation) != "YBR_FULL_422":
            assert int(result.PlanarConfiguration) == 0
        if target == "j2k-lossless" and str(src.PhotometricInterpretation) in ("RGB", "YBR_RCT"):
            assert pi == "YBR_RCT"
        if target == "j2k" and str(src.PhotometricInterpretation) in ("RGB", "YBR_RCT"):
            assert pi == "YBR_ICT"
        if target == "jpeg-baseline":
            assert pi == "YBR_FULL_422"
        if (
            src.file_meta.TransferSyntaxUID.name.startswith("JPEG Baseline")
            and not transfer_syntax(target).encapsulated
        ):
            assert pi == "RGB"  # the JPEG codec undid the YCbCr transform
    elif str(src.PhotometricInterpretation) == "PALETTE COLOR":
        assert pi == "PALETTE COLOR"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", SAMPLES)
def test_sample_roundtrip(name: str, target: str) -> None:
    _check_roundtrip(name, _sample(name), target)


# --------------------------------------------------------------------------- generated images


def _generated(kind: str, tmp_path: Path) -> str:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:64, 0:80]
    smooth = np.sin(x / 9.0) + np.cos(y / 7.0)  # in [-2, 2]
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = 64, 80
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    frames = 1
    if kind == "mono8":
        arr = np.clip(60 * smooth + 128 + rng.normal(0, 3, x.shape), 0, 255).astype(np.uint8)
        bits, stored, rep = 8, 8, 0
    elif kind == "mono12":
        arr = np.clip(900 * smooth + 2048 + rng.normal(0, 10, x.shape), 0, 4095).astype(np.uint16)
        bits, stored, rep = 16, 12, 0
    elif kind == "signed12":
        arr = np.clip(900 * smooth + rng.normal(0, 10, x.shape), -2048, 2047).astype(np.int16)
        bits, stored, rep = 16, 12, 1
    elif kind == "signed16":
        arr = np.clip(14000 * smooth + rng.normal(0, 50, x.shape), -32768, 32767).astype(np.int16)
        bits, stored, rep = 16, 16, 1
    elif kind == "rgb":
        chans = [60 * smooth + 128, 60 * np.roll(smooth, 9, axis=1) + 120, 50 * smooth[::-1] + 100]
        arr = np.clip(np.stack(chans, axis=-1), 0, 255).astype(np.uint8)
        bits, stored, rep = 8, 8, 0
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    elif kind == "multiframe":
        frames = 4
        arr = np.stack([np.clip(800 * smooth + 2000 + 100 * k, 0, 4095) for k in range(frames)])
        arr = arr.astype(np.uint16)
        bits, stored, rep = 16, 12, 0
        ds.NumberOfFrames = frames
    else:
        raise AssertionError(kind)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, rep
    ds.PixelData = arr.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / f"{kind}.dcm"
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(dcmread(path).pixel_array, arr)  # write-then-read
    return str(path)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", ["mono8", "mono12", "signed12", "signed16", "rgb", "multiframe"])
def test_generated_roundtrip(kind: str, target: str, tmp_path: Path) -> None:
    path = _generated(kind, tmp_path)
    _check_roundtrip(f"generated {kind}", path, target)
    if _expected_failure(dcmread(path), target):
        return
    # ... and back to explicit VR little endian: lossless targets give the same bytes.
    encoded = transcode_file(path, target, out := io.BytesIO(), allow_lossy=True)
    assert encoded.transfer_syntax_uid == transfer_syntax(target).uid
    back = dcmread(io.BytesIO(transcode_bytes(out.getvalue(), "explicit-le")))
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    if target not in LOSSY:
        assert back.PixelData == dcmread(path).PixelData


# --------------------------------------------------------------------------- rules and API


def test_catalogue() -> None:
    names = [ts.name for ts in transfer_syntaxes()]
    assert len(names) == 16 and len(set(names)) == 16
    assert transfer_syntax("JPEG-LS-Lossless").uid == "1.2.840.10008.1.2.4.80"
    assert transfer_syntax("1.2.840.10008.1.2.4.201").name == "htj2k-lossless"
    assert transfer_syntax("rle").title == "RLE Lossless"
    with pytest.raises(InvalidRequest):
        transfer_syntax("jpeg-xl")
    for ts in transfer_syntaxes():
        assert ts.can_decode, ts.name  # every catalogued syntax decodes in this install
    encodable = {ts.name for ts in transfer_syntaxes() if ts.can_encode}
    assert encodable == {
        "explicit-le",
        "implicit-le",
        "explicit-be",
        "deflated",
        "jpeg-baseline",
        "jpeg-ls-lossless",
        "jpeg-ls-near-lossless",
        "j2k-lossless",
        "j2k",
        "htj2k-lossless",
        "htj2k-lossless-rpcl",
        "htj2k",
        "rle",
    }
    table = codec_table_markdown()
    assert all(f"`{name}`" in table for name in names)


def test_lossless_targets() -> None:
    expected = [transfer_syntax(n).uid for n in ("explicit-le", "implicit-le", "deflated", "rle")]
    expected += [transfer_syntax(n).uid for n in ("jpeg-ls-lossless", "j2k-lossless")]
    assert lossless_targets("1.2.840.10008.1.2.4.50") == expected
    assert lossless_targets("1.2.840.10008.1.2") == expected
    assert lossless_targets("1.2.3.4") == []


def test_lossy_needs_permission() -> None:
    path = _sample("CT_small.dcm")
    with pytest.raises(TranscodeError, match="lossy"):
        transcode_file(path, "j2k", io.BytesIO())
    with pytest.raises(TranscodeError):
        transcode_file(path, "jpeg-extended", io.BytesIO(), allow_lossy=True)  # no JPEG extended encoder
    with pytest.raises(TranscodeError):
        transcode_file(path, "jpeg-xl", io.BytesIO())


def test_same_syntax_copies_the_data_set() -> None:
    path = _sample("MR_small_RLE.dcm")
    raw = Path(path).read_bytes()
    out = transcode_bytes(raw, "rle")
    src_meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    out_meta_end = 132 + 12 + int.from_bytes(out[140:144], "little")
    assert out[out_meta_end:] == raw[src_meta_end:]
    assert dcmread(io.BytesIO(out)).file_meta.ImplementationVersionName == "DICOMHUB_010"


@pytest.mark.parametrize("target", ["explicit-le", "implicit-le", "explicit-be", "deflated", "rle"])
def test_object_without_pixel_data(target: str) -> None:
    path = _sample("rtplan.dcm")
    info = transcode_file(path, target, out := io.BytesIO())
    assert info.frames == 0
    result = dcmread(io.BytesIO(out.getvalue()))
    assert result.file_meta.TransferSyntaxUID == transfer_syntax(target).uid
    assert result.BeamSequence[0].BeamName == dcmread(path).BeamSequence[0].BeamName


def test_lossy_ratio_on_an_unseekable_destination() -> None:
    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            self.data += bytes(b)
            return len(b)

    pipe = Pipe()
    transcode_file(_sample("SC_rgb_rle_2frame.dcm"), "j2k", pipe, allow_lossy=True)  # type: ignore[arg-type]
    seekable = io.BytesIO()
    transcode_file(_sample("SC_rgb_rle_2frame.dcm"), "j2k", seekable, allow_lossy=True)
    first_frame_ratio = float(dcmread(io.BytesIO(bytes(pipe.data))).LossyImageCompressionRatio)
    overall_ratio = float(dcmread(io.BytesIO(seekable.getvalue())).LossyImageCompressionRatio)
    assert first_frame_ratio > 1 and overall_ratio > 1


def test_read_frames() -> None:
    rle = _sample("SC_rgb_rle_2frame.dcm")
    ds = dcmread(rle)
    stored = read_frames(rle, [2, 1], None)
    assert stored == [
        get_frame(ds.PixelData, 1, number_of_frames=2),
        get_frame(ds.PixelData, 0, number_of_frames=2),
    ]
    native = read_frames(rle, [2], "1.2.840.10008.1.2.1")
    assert native == [ds.pixel_array[1].tobytes()]
    j2k = read_frames(rle, [1], "j2k-lossless")
    assert j2k[0][:4] == b"\xff\x4f\xff\x51"  # a J2K codestream: SOC, SIZ
    with pytest.raises(NotFound):
        read_frames(rle, [3], None)
    with pytest.raises(NotFound):
        read_frames(rle, [0], None)
    big = _sample("MR_small_bigendian.dcm")
    assert read_frames(big, [1], "explicit-le") == [dcmread(big).pixel_array.astype("<i2").tobytes()]
    ct = _sample("CT_small.dcm")
    assert read_frames(ct, [1], None) == [dcmread(ct).PixelData]


def test_check_decodable(tmp_path: Path) -> None:
    assert check_decodable(_sample("CT_small.dcm")) is None
    assert check_decodable(_sample("SC_rgb_rle_2frame.dcm"), all_frames=True) is None
    assert check_decodable(_sample("rtplan.dcm")) is None
    assert check_decodable(_sample("MR_truncated.dcm")) is not None
    raw = bytearray(Path(_sample("MR_small_RLE.dcm")).read_bytes())
    raw[-200:-8] = b"\x00" * 192  # damage the RLE segments, keep the item structure
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(bytes(raw))
    assert isinstance(check_decodable(broken), str)
