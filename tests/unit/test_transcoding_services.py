"""Compression at rest, the decode check and retrieval transcoding, on a real SQLite index."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

from dicomhub import codec
from dicomhub.config import load_settings
from dicomhub.errors import ConfigurationError, DuplicateInstance
from dicomhub.index.checks import DecodeCheckRepository
from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.repository import IndexRepository
from dicomhub.model.caller import Caller
from dicomhub.model.policy import CompressionRule, DecodeCheckMode, parse_compression_rule
from dicomhub.services.decodecheck import DecodeCheckService
from dicomhub.services.ingest import IngestService, StoreOutcome
from dicomhub.services.transcode import TranscodeService
from dicomhub.storage.filesystem import FileSystemBlobStore
from tests import datagen

CLI = Caller.cli()
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def ct(**kwargs: object) -> bytes:
    return encode(datagen.make_dataset(rows=64, cols=64, **kwargs))  # type: ignore[arg-type]


class Parts:
    def __init__(
        self, tmp: Path, rules: list[str] = (), mode: DecodeCheckMode = DecodeCheckMode.ALWAYS
    ) -> None:  # type: ignore[assignment]
        engine = connect_engine(f"sqlite:///{tmp / 'index.sqlite'}")
        migrate(engine, lock_dir=tmp)
        self.index = IndexRepository(engine)
        self.blobs = FileSystemBlobStore(tmp / "blobs", fsync=False)
        compression = [
            (parse_compression_rule(r), codec.transfer_syntax(parse_compression_rule(r).transfer_syntax).uid)
            for r in rules
        ]
        self.ingest = IngestService(self.index, self.blobs, compression=compression)
        self.transcode = TranscodeService(self.blobs, tmp / "tmp")
        self.checks = DecodeCheckService(DecodeCheckRepository(engine), self.blobs, mode)


def decoded(data: bytes) -> np.ndarray:
    return pydicom.dcmread(io.BytesIO(data)).pixel_array


# ------------------------------------------------------------------ configuration


def test_compression_rules_are_parsed_and_matched() -> None:
    rule = parse_compression_rule(" CT = jpeg-ls-lossless ")
    assert rule == CompressionRule("CT", "jpeg-ls-lossless")
    assert rule.matches("ct", "1.2.3") and not rule.matches("MR", "1.2.3")
    assert CompressionRule("1.2.840.10008.5.1.4.1.1.2", "rle").matches(None, "1.2.840.10008.5.1.4.1.1.2")
    assert CompressionRule("*", "rle").matches(None, "1.2")
    with pytest.raises(ValueError):
        parse_compression_rule("CT")


def test_settings_refuse_lossy_rules_without_permission_and_unknown_syntaxes() -> None:
    settings = load_settings({"compress": ["CT=jpeg-ls-lossless"]}, environ={})
    assert settings.compress == (CompressionRule("CT", "jpeg-ls-lossless"),)
    with pytest.raises(ConfigurationError, match="lossy"):
        load_settings({"compress": ["CT=j2k"]}, environ={})
    allowed = load_settings({"compress": ["CT=j2k"], "allow_lossy_compression": True}, environ={})
    assert allowed.compress[0].transfer_syntax == "j2k"
    with pytest.raises(ConfigurationError, match="no-such-codec"):
        load_settings({"compress": ["CT=no-such-codec"]}, environ={})
    env = load_settings(
        environ={"DICOMHUB_COMPRESS": "CT=rle,MR=j2k-lossless", "DICOMHUB_DECODE_CHECK": "off"}
    )
    assert [str(r) for r in env.compress] == ["CT=rle", "MR=j2k-lossless"]
    assert env.decode_check is DecodeCheckMode.OFF


# ------------------------------------------------------------------ compression at rest


def test_compression_at_rest_keeps_pixels_and_recognises_the_original_again(tmp_path: Path) -> None:
    parts = Parts(tmp_path, ["CT=jpeg-ls-lossless"])
    study = datagen.uid()
    original = ct(study_uid=study)
    result = parts.ingest.store_part10(original, CLI)
    assert result.outcome is StoreOutcome.STORED
    row = parts.index.get_instance(result.sop_instance_uid)
    assert row is not None and row.transfer_syntax_uid == JPEG_LS_LOSSLESS
    stored = parts.blobs.read(row.blob_key)
    assert np.array_equal(decoded(stored), decoded(original))
    with parts.index.engine.connect() as conn:
        orig_ts, orig_sha = conn.exec_driver_sql(
            "SELECT original_transfer_syntax_uid, original_sha256 FROM instance"
        ).one()
    import hashlib

    assert orig_ts == EXPLICIT_LE and orig_sha == hashlib.sha256(original).hexdigest()
    again = parts.ingest.store_part10(original, CLI)
    assert again.outcome is StoreOutcome.ALREADY_PRESENT
    assert parts.index.conflicts() == []


def test_compression_at_rest_of_a_stow_object_records_the_received_digests(tmp_path: Path) -> None:
    """STOW-RS leaves a kept-as-received blob's digests for later; a compressed one's are
    taken from the received blob before it goes, once, for the index."""
    import hashlib

    parts = Parts(tmp_path, ["CT=jpeg-ls-lossless"])
    original = ct()
    (result,) = parts.ingest.store_many([original], CLI)
    assert not isinstance(result, Exception) and result.outcome is StoreOutcome.STORED
    row = parts.index.get_instance(result.sop_instance_uid)
    assert row is not None and row.transfer_syntax_uid == JPEG_LS_LOSSLESS
    assert row.sha256 == hashlib.sha256(parts.blobs.read(row.blob_key)).hexdigest()
    with parts.index.engine.connect() as conn:
        (orig_sha,) = conn.exec_driver_sql("SELECT original_sha256 FROM instance").one()
    assert orig_sha == hashlib.sha256(original).hexdigest()
    (again,) = parts.ingest.store_many([original], CLI)
    assert not isinstance(again, Exception) and again.outcome is StoreOutcome.ALREADY_PRESENT


def test_objects_outside_the_rules_are_kept_as_received(tmp_path: Path) -> None:
    parts = Parts(tmp_path, ["MR=jpeg-ls-lossless"])
    original = ct()
    result = parts.ingest.store_part10(original, CLI)
    row = parts.index.get_instance(result.sop_instance_uid)
    assert row is not None and row.transfer_syntax_uid == EXPLICIT_LE
    assert parts.blobs.read(row.blob_key) == original


def test_an_object_the_encoder_cannot_take_is_kept_as_received(tmp_path: Path) -> None:
    # JPEG baseline takes 8-bit samples only; this CT has 16: stored as received, not lost.
    parts = Parts(tmp_path, ["*=jpeg-baseline"])
    original = ct()
    result = parts.ingest.store_part10(original, CLI)
    row = parts.index.get_instance(result.sop_instance_uid)
    assert row is not None and row.transfer_syntax_uid == EXPLICIT_LE


# ------------------------------------------------------------------ the decode check


def corrupt_j2k(**kwargs: object) -> bytes:
    ds = datagen.make_dataset(rows=32, cols=32, **kwargs)  # type: ignore[arg-type]
    good = codec.transcode_bytes(encode(ds), J2K_LOSSLESS)
    bad = pydicom.dcmread(io.BytesIO(good))
    bad.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(256)) * 4])
    return encode(bad)


def test_decode_check_flags_undecodable_objects_and_only_those(tmp_path: Path) -> None:
    parts = Parts(tmp_path, mode=DecodeCheckMode.ALWAYS)
    good = parts.ingest.store_part10(codec.transcode_bytes(ct(), J2K_LOSSLESS), CLI)
    bad = parts.ingest.store_part10(corrupt_j2k(), CLI)
    assert parts.checks.run_pending() == 2
    assert parts.checks.run_pending() == 0  # the cursor moved on
    failures = parts.checks.failures()
    assert [f["sop_instance_uid"] for f in failures] == [bad.sop_instance_uid]
    assert failures[0]["transfer_syntax_uid"] == J2K_LOSSLESS
    assert failures[0]["study_instance_uid"] == bad.study_instance_uid
    assert failures[0]["reason"]
    assert good.sop_instance_uid not in {f["sop_instance_uid"] for f in failures}


def test_sample_mode_stops_checking_a_pair_once_one_object_decoded(tmp_path: Path) -> None:
    parts = Parts(tmp_path, mode=DecodeCheckMode.SAMPLE)
    parts.ingest.store_part10(codec.transcode_bytes(ct(), J2K_LOSSLESS), CLI)
    parts.checks.run_pending()
    # Same syntax and SOP class, already verified: not decoded again, so not flagged.
    parts.ingest.store_part10(corrupt_j2k(), CLI)
    parts.checks.run_pending()
    assert parts.checks.failures() == []
    # A pair never seen before is checked.
    mr = corrupt_j2k(modality="MR")
    parts.ingest.store_part10(mr, CLI)
    parts.checks.run_pending()
    assert len(parts.checks.failures()) == 1


def test_decode_check_off_does_nothing(tmp_path: Path) -> None:
    parts = Parts(tmp_path, mode=DecodeCheckMode.OFF)
    parts.ingest.store_part10(corrupt_j2k(), CLI)
    assert parts.checks.run_pending() == 0
    assert parts.checks.failures() == []


# ------------------------------------------------------------------ retrieval transcoding


def test_transcode_service_produces_lossless_targets_and_refuses_silent_loss(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    original = ct()
    result = parts.ingest.store_part10(codec.transcode_bytes(original, J2K_LOSSLESS), CLI)
    row = parts.index.get_instance(result.sop_instance_uid)
    assert row is not None
    alternatives = parts.transcode.alternatives(row.transfer_syntax_uid)
    assert alternatives[:2] == (EXPLICIT_LE, IMPLICIT_LE)
    assert J2K_LOSSLESS not in alternatives
    assert not parts.transcode.can_produce(row, "1.2.840.10008.1.2.4.91")  # lossy J2K
    assert parts.transcode.can_produce(row, "1.2.840.10008.1.2.4.91", allow_lossy=True)
    out = parts.transcode.transcode(row, IMPLICIT_LE)
    try:
        data = Path(out.path).read_bytes()
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.file_meta.TransferSyntaxUID == IMPLICIT_LE
        assert np.array_equal(ds.pixel_array, decoded(original))
        assert out.dataset_offset > 132 and data[128:132] == b"DICM"
    finally:
        out.close()
    assert not Path(out.path).exists()
    frames = parts.transcode.frames(row, [1], EXPLICIT_LE)
    assert frames[0] == decoded(original).astype("<u2").tobytes()


def test_a_copy_compressed_at_rest_that_comes_back_is_the_same_object(tmp_path: Path) -> None:
    """A peer that took the stored (compressed) syntax may send that copy back: not a conflict."""
    parts = Parts(tmp_path, ["CT=jpeg-ls-lossless"])
    result = parts.ingest.store_part10(ct(), CLI)
    row = parts.index.get_instance(result.sop_instance_uid)
    assert row is not None and row.transfer_syntax_uid == JPEG_LS_LOSSLESS
    as_sent_back = parts.blobs.read(row.blob_key)
    again = parts.ingest.store_part10(as_sent_back, CLI)
    assert again.outcome is StoreOutcome.ALREADY_PRESENT
    assert parts.index.conflicts() == []
    # Other content in the same syntax is still a conflict.
    other = pydicom.dcmread(io.BytesIO(as_sent_back))
    other.PatientName = "Somebody^Else"
    with pytest.raises(DuplicateInstance):
        parts.ingest.store_part10(encode(other), CLI)
