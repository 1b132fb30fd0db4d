"""HTJ2K (issue 16): decoding real code streams made by OpenJPH's ``ojph_compress``,
and encoding with imagecodecs, checked by OpenJPH's ``ojph_expand``.

``ojph_compress`` / ``ojph_expand`` come from Debian's openjph-tools
(``scripts/install-test-deps.sh``).
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicomhub.codec import (
    check_decodable,
    read_frames,
    transcode_bytes,
    transfer_syntax,
    transfer_syntaxes,
)
from dicomhub.codec.gdcm_plugin import decode_with_gdcm
from dicomhub.codec.pixels import decoded_frames
from dicomhub.codec.source import open_source
from dicomhub.errors import TranscodeError

HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
EXPLICIT = str(ExplicitVRLittleEndian)
Array = NDArray[Any]


@pytest.fixture(scope="module", autouse=True)
def _openjph() -> None:
    for tool in ("ojph_compress", "ojph_expand"):
        assert shutil.which(tool), f"{tool} is missing: run scripts/install-test-deps.sh"


def _mono12(rows: int = 96, cols: int = 80) -> Array:
    y, x = np.mgrid[0:rows, 0:cols]
    smooth = 2048 + 1500 * np.sin(x / 7.0) * np.cos(y / 11.0)
    noise = np.random.default_rng(16).integers(-40, 41, size=(rows, cols))
    return np.clip(smooth + noise, 0, 4095).astype(np.uint16)


def _rgb8(rows: int = 64, cols: int = 72) -> Array:
    y, x = np.mgrid[0:rows, 0:cols]
    r = (x * 255 // cols).astype(np.uint8)
    g = (y * 255 // rows).astype(np.uint8)
    b = np.random.default_rng(7).integers(0, 256, size=(rows, cols), dtype=np.uint8)
    return np.dstack([r, g, b])


def _ojph_compress(arr: Array, tmp: Path, *args: str) -> bytes:
    """``arr`` through ojph_compress (from a PGM / PPM file): a raw HTJ2K code stream."""
    if arr.ndim == 2:
        src = tmp / "in.pgm"
        maxval = 4095 if arr.dtype == np.uint16 else 255
        header = f"P5 {arr.shape[1]} {arr.shape[0]} {maxval}\n".encode()
        src.write_bytes(header + arr.astype(">u2" if arr.dtype == np.uint16 else "u1").tobytes())
    else:
        src = tmp / "in.ppm"
        src.write_bytes(f"P6 {arr.shape[1]} {arr.shape[0]} 255\n".encode() + arr.tobytes())
    out = tmp / "out.j2c"
    subprocess.run(["ojph_compress", "-i", str(src), "-o", str(out), *args], check=True, capture_output=True)
    return out.read_bytes()


def _ojph_expand(codestream: bytes, tmp: Path, colour: bool) -> Array:
    """OpenJPH's own decode of ``codestream`` (PGM / PPM output)."""
    src = tmp / "enc.j2c"
    src.write_bytes(codestream)
    out = tmp / ("dec.ppm" if colour else "dec.pgm")
    subprocess.run(["ojph_expand", "-i", str(src), "-o", str(out)], check=True, capture_output=True)
    data = out.read_bytes()
    fields = data.split(maxsplit=4)  # magic, width, height, maxval, pixels
    width, height, maxval = int(fields[1]), int(fields[2]), int(fields[3])
    body = data[len(data) - width * height * (3 if colour else 1) * (2 if maxval > 255 else 1) :]
    arr = np.frombuffer(body, dtype=">u2" if maxval > 255 else "u1")
    return arr.reshape((height, width, 3) if colour else (height, width)).astype(np.int64)


def _dataset(arr: Array, syntax: str, frames: list[bytes], pi: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = arr.shape[0], arr.shape[1]
    ds.SamplesPerPixel = 3 if arr.ndim == 3 else 1
    ds.PhotometricInterpretation = pi
    if arr.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = 12 if arr.dtype == np.uint16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _decode_all(tmp: Path, data: bytes) -> tuple[Array, dict[str, Any]]:
    path = tmp / "obj.dcm"
    path.write_bytes(data)
    with open_source(path) as source:
        frames = list(decoded_frames(source))
    return np.stack([a for a, _ in frames]), frames[-1][1]


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("syntax", [HTJ2K_LOSSLESS, HTJ2K_RPCL])
def test_lossless_ojph_streams_decode_exactly(tmp_path: Path, syntax: str) -> None:
    original = np.stack([_mono12(), _mono12()[::-1].copy()])
    streams = [_ojph_compress(frame, tmp_path, "-reversible", "true") for frame in original]
    data = _dataset(original[0], syntax, streams, "MONOCHROME2")
    decoded, props = _decode_all(tmp_path, data)
    assert props["decoding_plugin"] == "pylibjpeg"  # pylibjpeg-openjpeg, the fast path
    assert np.array_equal(decoded, original)
    assert check_decodable(tmp_path / "obj.dcm", all_frames=True) is None
    # As an uncompressed object, as a C-GET to a receiver without HTJ2K gets it.
    native = dcmread(io.BytesIO(transcode_bytes(data, EXPLICIT)))
    assert np.array_equal(native.pixel_array, original)


def test_lossless_ojph_colour_stream_with_its_colour_transform_decodes_to_rgb(tmp_path: Path) -> None:
    original = _rgb8()
    stream = _ojph_compress(original, tmp_path, "-reversible", "true", "-colour_trans", "true")
    decoded, props = _decode_all(tmp_path, _dataset(original, HTJ2K_LOSSLESS, [stream], "YBR_RCT"))
    assert props["photometric_interpretation"] == "RGB"
    assert np.array_equal(decoded[0], original)


def test_lossy_ojph_stream_decodes_within_the_quantisation_error(tmp_path: Path) -> None:
    original = _mono12()
    stream = _ojph_compress(original, tmp_path, "-qstep", "0.001")
    decoded, _ = _decode_all(tmp_path, _dataset(original, HTJ2K, [stream], "MONOCHROME2"))
    reference = _ojph_expand(stream, tmp_path, colour=False)
    # pylibjpeg-openjpeg and OpenJPH reconstruct the same irreversible stream alike.
    assert int(np.abs(decoded[0].astype(np.int64) - reference).max()) <= 1
    assert 0 < int(np.abs(decoded[0].astype(np.int64) - original).max()) <= 64


def test_the_gdcm_fallback_decodes_htj2k_too(tmp_path: Path) -> None:
    original = _mono12()
    stream = _ojph_compress(original, tmp_path, "-reversible", "true")
    request = {
        "transfer_syntax_uid": HTJ2K_LOSSLESS,
        "photometric_interpretation": "MONOCHROME2",
        "rows": original.shape[0],
        "columns": original.shape[1],
        "samples_per_pixel": 1,
        "planar_configuration": 0,
        "bits_allocated": 16,
        "bits_stored": 12,
        "pixel_representation": 0,
    }
    frame, pi = decode_with_gdcm(request, stream)
    assert pi == "MONOCHROME2"
    assert np.array_equal(np.frombuffer(frame, dtype="<u2").reshape(original.shape), original)


# --------------------------------------------------------------------------- encoding


def test_the_catalogue_says_htj2k_is_encoded() -> None:
    for name in ("htj2k-lossless", "htj2k-lossless-rpcl", "htj2k"):
        ts = transfer_syntax(name)
        assert ts.can_decode and ts.can_encode, name
    assert {ts.name for ts in transfer_syntaxes() if ts.uid.startswith("1.2.840.10008.1.2.4.20")} == {
        "htj2k-lossless",
        "htj2k-lossless-rpcl",
        "htj2k",
    }


@pytest.mark.parametrize("target", [HTJ2K_LOSSLESS, HTJ2K_RPCL])
@pytest.mark.parametrize(
    "sample", ["CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm", "examples_palette.dcm"]
)
def test_lossless_encoding_round_trips_and_ojph_expand_reads_it(
    tmp_path: Path, sample: str, target: str
) -> None:
    raw = Path(str(get_testdata_file(sample))).read_bytes()
    src = dcmread(io.BytesIO(raw))
    encoded = transcode_bytes(raw, target)
    ds = dcmread(io.BytesIO(encoded))
    assert ds.file_meta.TransferSyntaxUID == target
    assert "LossyImageCompressionMethod" not in ds
    colour = int(src.SamplesPerPixel) == 3
    assert ds.PhotometricInterpretation == ("YBR_RCT" if colour else src.PhotometricInterpretation)
    back = dcmread(io.BytesIO(transcode_bytes(encoded, EXPLICIT)))
    assert np.array_equal(back.pixel_array, src.pixel_array)
    # OpenJPH, an independent HTJ2K implementation, reads each frame back exactly (unsigned
    # 8-bit samples only: its PGM/PPM output cannot hold signed or 16-bit-precision data).
    frames = int(src.get("NumberOfFrames", 1) or 1)
    stream = get_frame(ds.PixelData, 0, number_of_frames=frames)
    assert stream[:4] == b"\xff\x4f\xff\x51"  # a raw code stream: SOC then SIZ
    if target == HTJ2K_RPCL:
        cod = stream.find(b"\xff\x52")
        assert stream[cod + 5] == 2  # progression order RPCL
        assert b"\xff\x55" in stream  # TLM marker segment
    if int(src.BitsAllocated) == 8 and int(src.PixelRepresentation) == 0:
        first = src.pixel_array[0] if frames > 1 else src.pixel_array
        assert np.array_equal(_ojph_expand(stream, tmp_path, colour), first.astype(np.int64))


def test_lossy_encoding_is_marked_and_stays_close(tmp_path: Path) -> None:
    raw = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    with pytest.raises(TranscodeError, match="lossy"):
        transcode_bytes(raw, HTJ2K)
    encoded = transcode_bytes(raw, HTJ2K, allow_lossy=True)
    ds = dcmread(io.BytesIO(encoded))
    assert ds.LossyImageCompression == "01"
    methods = ds.LossyImageCompressionMethod
    assert (methods[-1] if isinstance(methods, MultiValue) else methods) == "ISO_15444_15"
    src = dcmread(io.BytesIO(raw)).pixel_array.astype(np.int64)
    back = dcmread(io.BytesIO(transcode_bytes(encoded, EXPLICIT))).pixel_array.astype(np.int64)
    assert int(np.abs(back - src).max()) <= 8
    # WADO-RS frames in HTJ2K: asking for the lossy syntax is the permission.
    path = tmp_path / "ct.dcm"
    path.write_bytes(raw)
    (frame,) = read_frames(path, [1], HTJ2K)
    assert frame[:4] == b"\xff\x4f\xff\x51"


def test_lossy_htj2k_refuses_palette_indices() -> None:
    raw = Path(str(get_testdata_file("examples_palette.dcm"))).read_bytes()
    with pytest.raises(TranscodeError, match="PALETTE COLOR"):
        transcode_bytes(raw, HTJ2K, allow_lossy=True)
