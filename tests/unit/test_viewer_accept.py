"""The ``Accept`` headers web viewers send for frames, and what dicomhub makes of them.

The headers are written as OHIF (through cornerstone3D's WADO-RS image loader
and OHIF's own ``generateAcceptHeader``) and dicomweb-client send them: the
cornerstone3D constant has no quotes, OHIF quotes unless
``omitQuotationForMultipartRequest`` is set, and with
``requestTransferSyntaxUID`` it names a syntax and then ``*`` again.
"""

from __future__ import annotations

import pytest

from dicomhub.model.records import InstanceRow
from dicomhub.web.dicomweb.multipart import MediaRange, parse_accept
from dicomhub.web.dicomweb.wado import _frame_representation, _representative
from dicomhub.web.errors import NotAcceptable

EXPLICIT = "1.2.840.10008.1.2.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_LS = "1.2.840.10008.1.2.4.80"
RLE = "1.2.840.10008.1.2.5"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"

CORNERSTONE = "multipart/related; type=application/octet-stream; transfer-syntax=*"
OHIF_QUOTED = 'multipart/related; type="application/octet-stream"; transfer-syntax="*"'
OHIF_NAMED_JLS = f"multipart/related; type=image/jls; transfer-syntax={JPEG_LS}; transfer-syntax=*"
SINGLE_PART_ANY = "application/octet-stream; transfer-syntax=*"


class _NoTranscoding:
    """Stands in for WadoService: this install can transcode nothing."""

    def can_encode(self, row: InstanceRow, transfer_syntax_uid: str) -> bool:
        return False


def _row(ts: str) -> InstanceRow:
    return InstanceRow(1, "1.2.3.4", "1.2.840.10008.5.1.4.1.1.4", ts, "key", 100, "")


def _choose(ts: str, accept: str, *, native: bool, count: int = 1) -> tuple[str, str, bool]:
    return _frame_representation(
        _row(ts),
        ts,
        native,
        count,
        parse_accept(accept),
        _NoTranscoding(),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("header", [CORNERSTONE, OHIF_QUOTED])
def test_unquoted_and_quoted_parameters_parse_alike(header: str) -> None:
    assert parse_accept(header) == [
        MediaRange("multipart/related", {"type": "application/octet-stream", "transfer-syntax": "*"})
    ]


@pytest.mark.parametrize("ts", [J2K_LOSSLESS, JPEG_LS, RLE, JPEG_LOSSLESS_SV1])
@pytest.mark.parametrize("header", [CORNERSTONE, OHIF_QUOTED])
def test_any_syntax_as_octet_stream_gives_compressed_frames_as_stored(ts: str, header: str) -> None:
    assert _choose(ts, header, native=False, count=3) == ("application/octet-stream", ts, True)


@pytest.mark.parametrize("ts", [J2K_LOSSLESS, RLE])
def test_single_part_any_syntax_gives_one_frame_as_stored(ts: str) -> None:
    assert _choose(ts, SINGLE_PART_ANY, native=False) == ("application/octet-stream", ts, False)
    with pytest.raises(NotAcceptable):  # a single part holds one frame
        _choose(ts, SINGLE_PART_ANY, native=False, count=2)


@pytest.mark.parametrize("ts", [EXPLICIT, "1.2.840.10008.1.2", BIG_ENDIAN])
def test_any_syntax_for_native_frames_is_explicit_little_endian(ts: str) -> None:
    # Big endian included: the frames go byte-swapped, never as stored.
    assert _choose(ts, CORNERSTONE, native=True) == ("application/octet-stream", EXPLICIT, True)


def test_named_syntax_then_any_takes_the_stored_bit_stream_of_that_type() -> None:
    assert _choose(JPEG_LS, OHIF_NAMED_JLS, native=False) == ("image/jls", JPEG_LS, True)


def test_legacy_media_type_names_are_understood() -> None:
    assert _choose(JPEG_LS, 'multipart/related; type="image/x-jls"', native=False) == (
        "image/jls",
        JPEG_LS,
        True,
    )
    assert _choose(RLE, 'multipart/related; type="image/x-dicom-rle"', native=False) == (
        "image/dicom-rle",
        RLE,
        True,
    )


def test_a_type_that_needs_transcoding_is_still_refused_without_a_codec() -> None:
    with pytest.raises(NotAcceptable, match="transfer-syntax=\\*"):
        _choose(J2K_LOSSLESS, 'multipart/related; type="image/jls"', native=False)


def test_a_study_thumbnail_shows_an_image_not_a_report() -> None:
    ct, sr, pdf = (
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.5.1.4.1.1.88.33",
        "1.2.840.10008.5.1.4.1.1.104.1",
    )
    video = "1.2.840.10008.1.2.4.102"
    rows = [
        InstanceRow(1, "1.1", ct, EXPLICIT, "k1", 1, ""),
        InstanceRow(2, "1.2", sr, EXPLICIT, "k2", 1, ""),
        InstanceRow(3, "1.3", pdf, EXPLICIT, "k3", 1, ""),
        InstanceRow(4, "1.4", "1.2.840.10008.5.1.4.1.1.77.1.4.1", video, "k4", 1, ""),
        InstanceRow(5, "1.5", ct, J2K_LOSSLESS, "k5", 1, ""),
    ]
    assert _representative(rows).pk == 5  # the middle of the two images
    assert _representative(rows[1:3]).pk == 3  # no image at all: the middle one still
