"""dicomhub.codec.equivalence: the same object in another encoding is the same object.

The encodings are made two ways: by dicomhub's own transcoder (every syntax it
writes) and by the pydicom sample files that come in several syntaxes. The
end-to-end tests (tests/e2e/test_same_object.py) use DCMTK and GDCM instead.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomhub.codec import content_difference, same_content, transcode_bytes, transfer_syntax

NATIVE = ["explicit-le", "implicit-le", "explicit-be", "deflated"]
LOSSLESS = ["rle", "jpeg-ls-lossless", "j2k-lossless"]


def sample(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is not installed"
    return Path(path).read_bytes()


def as_syntax(data: bytes, name: str) -> bytes:
    return transcode_bytes(data, transfer_syntax(name).uid, allow_lossy=True)


def encode(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    """A data set written with pydicom (Part 10) in a little endian syntax."""
    ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def edited(data: bytes, change: Callable[[Dataset], None], syntax: str | None = None) -> bytes:
    ds = dcmread(io.BytesIO(data))
    change(ds)
    return encode(ds, syntax or str(ds.file_meta.TransferSyntaxUID))


# --------------------------------------------------------------------------- same content


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "SC_rgb_rle_2frame.dcm"])
@pytest.mark.parametrize("target", NATIVE + LOSSLESS)
def test_every_syntax_dicomhub_writes_is_the_same_object(name: str, target: str) -> None:
    original = sample(name)
    copy = as_syntax(original, target)
    assert content_difference(original, copy) is None
    assert content_difference(copy, original) is None


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("MR_small.dcm", "MR_small_implicit.dcm"),
        ("MR_small.dcm", "MR_small_bigendian.dcm"),
        ("MR_small.dcm", "MR_small_RLE.dcm"),
        ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
        ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
        ("MR_small_bigendian.dcm", "MR_small_jpeg_ls_lossless.dcm"),
        ("SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm"),
    ],
)
def test_pydicom_samples_in_several_syntaxes_are_the_same_object(first: str, second: str) -> None:
    assert content_difference(sample(first), sample(second)) is None


@pytest.mark.parametrize(
    "name",
    ["image_dfl.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "US1_J2KR.dcm", "JPEG2000.dcm"],
)
def test_decompressed_copy_is_the_same_object(name: str) -> None:
    original = sample(name)
    for target in ("explicit-le", "implicit-le"):
        assert content_difference(original, as_syntax(original, target)) is None


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+s2.dcm"])
def test_lossy_jpeg_original_and_its_decompressed_copy(name: str) -> None:
    """The decompressed copy (Photometric Interpretation RGB, YBR_FULL in the JPEG
    original) is compared as RGB pixel values."""
    original = sample(name)
    copy = as_syntax(original, "explicit-le")
    assert str(dcmread(io.BytesIO(copy)).PhotometricInterpretation) == "RGB"
    assert content_difference(original, copy) is None


def test_paths_bytes_and_memoryviews_are_accepted(tmp_path: Path) -> None:
    original = sample("CT_small.dcm")
    path = tmp_path / "implicit.dcm"
    path.write_bytes(as_syntax(original, "implicit-le"))
    assert same_content(get_testdata_file("CT_small.dcm") or "", path)
    assert same_content(memoryview(original), str(path))


def test_padding_the_vr_allows_is_not_content() -> None:
    ds = dcmread(io.BytesIO(sample("MR_small.dcm")))
    # Written by hand: pydicom would normalise these values.
    ds["InstitutionName"].value = "TOSHIBA"
    first = encode(ds)
    data = bytearray(first)
    name = b"TOSHIBA "
    assert data.count(name) >= 1
    second = bytes(data).replace(name, b"TOSHIBA\x00", 1)
    assert content_difference(first, second) is None
    # CS: leading and trailing spaces of each value are insignificant.
    ds.ImageType = [f" {value} " for value in ds.ImageType]
    assert content_difference(first, encode(ds)) is None
    ds.ImageType = [f"{value}X" for value in ds.ImageType]
    assert content_difference(first, encode(ds)) == "(0008,0008) ImageType differs"


def test_defined_and_undefined_sequence_lengths_are_not_content() -> None:
    ds = dcmread(io.BytesIO(sample("CT_small.dcm")))
    defined = encode(ds)
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
    undefined = encode(ds)
    assert undefined != defined
    assert content_difference(defined, undefined) is None


def test_group_lengths_and_trailing_padding_are_not_content() -> None:
    ds = dcmread(io.BytesIO(sample("MR_small.dcm")))
    plain = encode(ds)
    ds.add_new(0x00080000, "UL", 0)
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 64)
    assert content_difference(plain, encode(ds)) is None


def test_private_elements_and_sequences_under_implicit_vr() -> None:
    """An implicit VR copy holds unknown private elements as UN; a private sequence of
    defined length there is parsed from its bytes (PS3.5 6.2.2)."""
    ds = dcmread(io.BytesIO(sample("MR_small.dcm")))
    block = ds.private_block(0x0011, "DICOMHUB TEST", create=True)
    block.add_new(0x01, "LO", "private text")
    block.add_new(0x02, "US", 513)
    item = Dataset()
    item.add_new(0x00100020, "LO", "IN-ITEM")
    block.add_new(0x03, "SQ", Sequence([item]))
    explicit = encode(ds, ExplicitVRLittleEndian)
    implicit = encode(ds, ImplicitVRLittleEndian)
    assert content_difference(explicit, implicit) is None
    big = as_syntax(explicit, "explicit-be")
    assert content_difference(big, implicit) is None
    item.PatientID = "OTHER"
    assert "(0011,1003)" in (content_difference(explicit, encode(ds, ImplicitVRLittleEndian)) or "")


def test_ambiguous_vrs_under_big_endian_and_implicit_vr() -> None:
    """US or SS elements: swapped by their two-byte unit, read as the explicit copy says."""
    ds = dcmread(io.BytesIO(sample("CT_small.dcm")))
    ds.add_new(0x00280106, "SS", -5)  # SmallestImagePixelValue; CT_small is signed
    ds.add_new(0x00280107, "SS", 1200)  # LargestImagePixelValue
    explicit = encode(ds)
    assert content_difference(as_syntax(explicit, "explicit-be"), as_syntax(explicit, "implicit-le")) is None
    ds.LargestImagePixelValue = 1201
    assert "LargestImagePixelValue" in (
        content_difference(explicit, encode(ds, ImplicitVRLittleEndian)) or ""
    )


# --------------------------------------------------------------------------- other content


@pytest.mark.parametrize(
    "syntax", ["explicit-le", "implicit-le", "explicit-be", "deflated", "rle", "jpeg-ls-lossless"]
)
def test_changed_patient_name_is_other_content(syntax: str) -> None:
    original = sample("CT_small.dcm")

    def rename(ds: Dataset) -> None:
        ds.PatientName = "Other^Patient"

    changed = as_syntax(edited(original, rename, ExplicitVRLittleEndian), syntax)
    assert content_difference(original, changed) == "(0010,0010) PatientName differs"


@pytest.mark.parametrize("syntax", NATIVE + LOSSLESS)
def test_one_changed_pixel_is_other_content(syntax: str) -> None:
    original = sample("MR_small.dcm")

    def poke(ds: Dataset) -> None:
        arr = ds.pixel_array.copy()
        arr[10, 20] += 1
        ds.PixelData = arr.tobytes()

    changed = as_syntax(edited(original, poke, ExplicitVRLittleEndian), syntax)
    assert content_difference(original, changed) == "frame 1 has other pixel values"
    assert content_difference(as_syntax(original, "rle"), changed) is not None


def test_one_changed_frame_of_many_is_other_content() -> None:
    original = sample("SC_rgb_rle_2frame.dcm")
    native = dcmread(io.BytesIO(as_syntax(original, "explicit-le")))
    arr = native.pixel_array.copy()
    arr[1, 0, 0, 0] ^= 0x80
    native.PixelData = arr.tobytes()
    assert content_difference(original, encode(native)) == "frame 2 has other pixel values"


def test_lossy_original_with_a_real_change_is_other_content() -> None:
    """Decoders of one JPEG stream differ by a level or two; a real edit does not hide there."""
    original = sample("SC_rgb_jpeg_dcmtk.dcm")
    native = dcmread(io.BytesIO(as_syntax(original, "explicit-le")))
    arr = native.pixel_array.copy()
    arr[50, 50, 0] = 255 if arr[50, 50, 0] < 128 else 0
    native.PixelData = arr.tobytes()
    assert content_difference(original, encode(native)) == "frame 1 has other pixel values"


def test_near_lossless_copy_of_a_lossless_original_is_other_content() -> None:
    """JPEG-LS decodes exactly, so its near-lossless errors are not decoder tolerance."""
    original = sample("CT_small.dcm")
    near = as_syntax(original, "jpeg-ls-near-lossless")
    assert content_difference(original, near) == "frame 1 has other pixel values"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            lambda ds: setattr(ds, "StudyDescription", ""),
            "(0008,1030) StudyDescription is present in one copy only",
        ),
        (lambda ds: delattr(ds, "PatientID"), "(0010,0020) PatientID is present in one copy only"),
        (lambda ds: setattr(ds, "PatientName", " CompressedSamples^MR1"), "(0010,0010) PatientName differs"),
        (lambda ds: setattr(ds, "SpecificCharacterSet", "ISO_IR 100"), "present in one copy only"),
        (
            lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"),
            "PhotometricInterpretation differs",
        ),
        (lambda ds: delattr(ds, "PixelData"), "Pixel Data is present in one copy only"),
    ],
)
def test_other_differences_that_count(change: Callable[[Dataset], None], reason: str) -> None:
    original = sample("MR_small.dcm")
    changed = edited(original, change, ImplicitVRLittleEndian)
    assert reason in (content_difference(original, changed) or "<same>")


def test_photometric_interpretation_counts_between_native_copies_of_one_syntax() -> None:
    """Colour spaces may differ only where a codec was involved (the syntaxes differ)."""
    original = sample("SC_rgb_small_odd.dcm")

    def relabel(ds: Dataset) -> None:
        ds.PhotometricInterpretation = "YBR_FULL"

    assert content_difference(original, edited(original, relabel)) == (
        "(0028,0004) PhotometricInterpretation differs"
    )


def test_deflated_copy_of_a_changed_object_differs() -> None:
    original = sample("image_dfl.dcm")

    def rename(ds: Dataset) -> None:
        ds.PatientName = "Someone^Else"

    changed = edited(original, rename, DeflatedExplicitVRLittleEndian)
    assert content_difference(original, changed) == "(0010,0010) PatientName differs"


def test_big_endian_pixel_bytes_are_compared_as_values() -> None:
    """Native pixel data in two byte orders is compared by value: swapping the two
    bytes of one big endian sample changes it."""
    big = bytearray(sample("MR_small_bigendian.dcm"))
    little = sample("MR_small.dcm")
    assert content_difference(bytes(big), little) is None
    pixels = dcmread(io.BytesIO(bytes(big))).PixelData
    start = len(big) - len(pixels)  # Pixel Data is the last element
    assert big[start:] == pixels
    samples = np.frombuffer(pixels, dtype=">u2")
    index = int(np.flatnonzero((samples >> 8) != (samples & 0xFF))[0])
    offset = start + 2 * index
    big[offset], big[offset + 1] = big[offset + 1], big[offset]
    assert content_difference(bytes(big), little) == "frame 1 has other pixel values"
