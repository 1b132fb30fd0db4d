"""Issue 16: the decoder order, the GDCM fallback and where its use is recorded."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomhub import codec
from dicomhub.codec import gdcm_plugin
from dicomhub.codec.pixels import decoded_frames, decoding_plugins, encoding_plugins
from dicomhub.codec.source import open_source
from dicomhub.errors import NotFound
from dicomhub.index.checks import DecodeCheckRepository
from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.repository import IndexRepository
from dicomhub.model.caller import Caller
from dicomhub.model.policy import DecodeCheckMode
from dicomhub.services.decodecheck import DecodeCheckService
from dicomhub.services.ingest import IngestService
from dicomhub.storage.filesystem import FileSystemBlobStore

JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
RLE = "1.2.840.10008.1.2.5"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _sample(name: str) -> Path:
    return Path(str(get_testdata_file(name)))


def test_the_fast_path_comes_first_and_gdcm_only_as_the_fallback() -> None:
    assert decoding_plugins(JPEG_EXTENDED) == ("pylibjpeg", "pillow", gdcm_plugin.PLUGIN)
    assert decoding_plugins(RLE) == ("pylibjpeg", "pydicom", gdcm_plugin.PLUGIN)
    for ts in codec.transfer_syntaxes():
        # pydicom's own gdcm plugin (which it would try first) is never used.
        assert "gdcm" not in ts.decoders and "gdcm" not in ts.encoders, ts.name
        if ts.encapsulated:
            assert ts.decoders[0] == "pylibjpeg" and ts.decoders[-1] == gdcm_plugin.PLUGIN, ts.name
        else:
            assert ts.decoders == ("native",)
    # pydicom would encode RLE with GDCM first once python-gdcm is installed: not here.
    assert encoding_plugins(RLE) == ("pylibjpeg", "pydicom")
    table = codec.codec_table_markdown()
    assert "| pylibjpeg → pillow → gdcm-fallback | - |" in table  # jpeg-extended: decode only


def test_12_bit_jpeg_extended_is_decoded_by_the_fallback_and_transcodes(tmp_path: Path) -> None:
    path = _sample("JPEG-lossy.dcm")
    report = codec.decode_report(path, all_frames=True)
    assert report.reason is None and report.decoders == (gdcm_plugin.PLUGIN,)
    with open_source(path) as source:
        ((arr, props),) = list(decoded_frames(source))
    assert props["decoding_plugin"] == gdcm_plugin.PLUGIN
    assert arr.dtype == np.uint16 and arr.shape == (1024, 256) and 0 < int(arr.max()) < 4096
    out = codec.transcode_bytes(path.read_bytes(), EXPLICIT_LE)
    native = pydicom.dcmread(io.BytesIO(out))
    assert np.array_equal(native.pixel_array, arr)
    assert native.LossyImageCompression == "01"  # a JPEG extended source is lossy


def test_files_the_fast_path_reads_never_reach_gdcm() -> None:
    for name in ("JPGExtended.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_jpeg_dcmtk.dcm"):
        assert codec.decode_report(_sample(name), all_frames=True).decoders == ("pylibjpeg",), name
    assert codec.decode_report(_sample("CT_small.dcm")).decoders == ("native",)


def test_a_dead_gdcm_helper_costs_one_frame_and_is_replaced() -> None:
    path = _sample("JPEG-lossy.dcm")
    assert codec.check_decodable(path) is None  # starts the helper
    helper = gdcm_plugin._HELPER
    assert helper._proc is not None
    helper._proc.kill()  # as if GDCM had abort()ed on a corrupt stream
    helper._proc.wait()
    report = codec.decode_report(path)
    assert report.reason is None and report.decoders == (gdcm_plugin.PLUGIN,)


def test_what_gdcm_cannot_decode_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    # A JPEG 2000 stream of garbage after SOC and SIZ: every decoder fails, GDCM last.
    ds = pydicom.dcmread(_sample("MR_small_jp2klossless.dcm"))
    garbage = b"\xff\x4f\xff\x51" + np.random.default_rng(3).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    ds.PixelData = pydicom.encaps.encapsulate([garbage])
    path = tmp_path / "corrupt.dcm"
    ds.save_as(path, enforce_file_format=True)
    report = codec.decode_report(path)
    assert report.reason is not None and "pylibjpeg:" in report.reason
    assert f"{gdcm_plugin.PLUGIN}:" in report.reason
    assert report.decoders == ()


@pytest.fixture
def checks(tmp_path: Path) -> tuple[IngestService, DecodeCheckService]:
    engine = connect_engine(f"sqlite:///{tmp_path / 'index.sqlite'}")
    migrate(engine, lock_dir=tmp_path)
    blobs = FileSystemBlobStore(tmp_path / "blobs", fsync=False)
    ingest = IngestService(IndexRepository(engine), blobs)
    return ingest, DecodeCheckService(DecodeCheckRepository(engine), blobs, DecodeCheckMode.ALWAYS)


def test_the_decode_check_records_which_decoder_read_each_object(
    checks: tuple[IngestService, DecodeCheckService],
) -> None:
    ingest, service = checks
    for name in ("JPEG-lossy.dcm", "MR_small_jp2klossless.dcm", "CT_small.dcm"):
        ingest.store_part10(_sample(name).read_bytes(), Caller.cli())
    assert service.run_pending() == 3
    assert service.failures() == []
    by_syntax = {d["transfer_syntax_uid"]: (d["decoder"], d["objects"]) for d in service.decoders()}
    assert by_syntax == {
        JPEG_EXTENDED: (gdcm_plugin.PLUGIN, 1),
        J2K_LOSSLESS: ("pylibjpeg", 1),
        EXPLICIT_LE: ("native", 1),
    }


def test_rendering_decodes_through_the_same_chain() -> None:
    frame = codec.decode_frame(_sample("JPEG-lossy.dcm"), 1)
    assert frame.decoder == gdcm_plugin.PLUGIN and frame.pixels.shape == (1024, 256)
    # Display wants RGB: YBR_FULL (RLE) and YBR_FULL_422 (uncompressed) are converted.
    for name in ("SC_rgb_rle.dcm", "SC_ybr_full_422_uncompressed.dcm"):
        ybr = codec.decode_frame(_sample(name), 1)
        assert ybr.photometric_interpretation == "RGB" and ybr.pixels.shape[-1] == 3, name
    with pytest.raises(NotFound):
        codec.decode_frame(_sample("CT_small.dcm"), 2)


def test_a_fast_path_miss_the_fallback_decodes_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        assert codec.check_decodable(_sample("JPEG-lossy.dcm")) is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
