"""The duplicate decision of every store path: the same object in another transfer
syntax is "already present"; other content still goes to the duplicate policy.

On a real SQLite index and the in-memory blob store; the objects are pydicom's
sample files, re-encoded by dicomhub's transcoder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

import dicomhub.codec
from dicomhub.codec import transcode_bytes, transfer_syntax
from dicomhub.errors import DuplicateInstance
from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.repository import IndexRepository
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.extract import extract_part10
from dicomhub.model.policy import CompressionRule, DuplicatePolicy
from dicomhub.model.structure import dataset_offset
from dicomhub.services.ingest import IngestService, StoreOutcome
from dicomhub.storage.memory import MemoryBlobStore

CLI = Caller.cli()


def sample(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path).read_bytes()


def as_syntax(data: bytes, name: str) -> bytes:
    return transcode_bytes(data, transfer_syntax(name).uid)


class Archive:
    def __init__(self, tmp: Path, policy: DuplicatePolicy = DuplicatePolicy.KEEP, **kw: object) -> None:
        engine = connect_engine(f"sqlite:///{tmp / 'index.sqlite'}")
        migrate(engine, lock_dir=tmp)
        self.index = IndexRepository(engine)
        self.blobs = MemoryBlobStore()
        self.ingest = IngestService(self.index, self.blobs, policy, **kw)  # type: ignore[arg-type]

    def state(self) -> tuple[int, int, int, int]:
        """What a resend must leave unchanged: instances, blobs, conflicts, change log."""
        return (
            self.index.counts()["instances"],
            len(list(self.blobs.iter_keys())),
            len(self.index.conflicts()),
            self.index.last_change(),
        )


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    return Archive(tmp_path)


@pytest.fixture
def no_comparison(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if the content comparison runs (the cheap paths must not pay for it)."""

    def forbidden(*_args: object) -> str | None:
        raise AssertionError("content_difference ran")

    monkeypatch.setattr(dicomhub.codec, "content_difference", forbidden)
    yield


def store_received(archive: Archive, data: bytes) -> StoreOutcome:
    """As the C-STORE handler does: the data set without its File Meta."""
    header = extract_part10(data)
    return archive.ingest.store_received(
        data[dataset_offset(data) :],
        header.transfer_syntax_uid,
        header.sop_class_uid,
        header.sop_instance_uid,
        Caller(Channel.DIMSE, "RESENDER"),
    ).outcome


def test_first_store_and_identical_resend_do_not_compare_content(
    archive: Archive, no_comparison: None
) -> None:
    data = sample("CT_small.dcm")
    assert archive.ingest.store_part10(data, CLI).outcome is StoreOutcome.STORED
    assert archive.ingest.store_part10(data, CLI).outcome is StoreOutcome.ALREADY_PRESENT
    assert store_received(archive, data) is StoreOutcome.ALREADY_PRESENT
    (result,) = archive.ingest.store_many([data], CLI)
    assert not isinstance(result, Exception) and result.outcome is StoreOutcome.ALREADY_PRESENT


@pytest.mark.parametrize(
    "syntax", ["implicit-le", "explicit-be", "deflated", "rle", "jpeg-ls-lossless", "j2k-lossless"]
)
def test_resend_in_another_syntax_is_already_present_on_every_path(archive: Archive, syntax: str) -> None:
    original = sample("CT_small.dcm")
    copy = as_syntax(original, syntax)
    assert archive.ingest.store_part10(original, CLI).outcome is StoreOutcome.STORED
    before = archive.state()
    assert archive.ingest.store_part10(copy, CLI).outcome is StoreOutcome.ALREADY_PRESENT  # import, migration
    assert store_received(archive, copy) is StoreOutcome.ALREADY_PRESENT  # C-STORE
    (stow,) = archive.ingest.store_many([iter([copy[:1000], copy[1000:]])], CLI)  # STOW-RS
    assert not isinstance(stow, Exception), stow
    assert stow.outcome is StoreOutcome.ALREADY_PRESENT
    assert archive.state() == before


def test_import_of_a_file_judges_by_content(archive: Archive, tmp_path: Path) -> None:
    """``dicomhub import`` memory-maps the file: the comparison reads the mapping."""
    original = sample("MR_small.dcm")
    archive.ingest.store_part10(original, CLI)
    path = tmp_path / "copy.dcm"
    path.write_bytes(as_syntax(original, "j2k-lossless"))
    before = archive.state()
    assert archive.ingest.store_part10_file(path, CLI).outcome is StoreOutcome.ALREADY_PRESENT
    assert archive.state() == before


def test_large_cstore_path_judges_by_content(archive: Archive, tmp_path: Path) -> None:
    """A data set spooled to a file (above 16 MiB) takes the same decision."""
    original = sample("MR_small.dcm")
    archive.ingest.store_part10(original, CLI)
    copy = as_syntax(original, "implicit-le")
    spool = tmp_path / "spool"
    spool.write_bytes(copy[dataset_offset(copy) :])
    header = extract_part10(copy)
    before = archive.state()
    result = archive.ingest.store_received_file(
        spool, header.transfer_syntax_uid, header.sop_class_uid, header.sop_instance_uid, CLI
    )
    assert result.outcome is StoreOutcome.ALREADY_PRESENT
    assert archive.state() == before


def test_decompressed_resend_of_a_compressed_original(archive: Archive) -> None:
    original = sample("MR_small_jpeg_ls_lossless.dcm")
    archive.ingest.store_part10(original, CLI)
    before = archive.state()
    for syntax in ("explicit-le", "implicit-le"):
        copy = as_syntax(original, syntax)
        assert store_received(archive, copy) is StoreOutcome.ALREADY_PRESENT
    assert archive.state() == before


@pytest.mark.parametrize("syntax", ["implicit-le", "rle"])
def test_changed_patient_name_in_another_syntax_is_refused_and_quarantined(
    archive: Archive, syntax: str
) -> None:
    original = sample("CT_small.dcm")
    archive.ingest.store_part10(original, CLI)
    renamed = original.replace(b"CompressedSamples^CT1", b"CompressedSamples^CT2")
    assert renamed != original
    changed = as_syntax(renamed, syntax)
    with pytest.raises(DuplicateInstance, match=r"other content: \(0010,0010\) PatientName differs"):
        store_received(archive, changed)
    (row,) = archive.index.conflicts()
    assert row["kind"] == "duplicate-different-content"
    assert "PatientName differs" in row["detail"]
    # The refused copy is kept (as received over DIMSE: our File Meta, its data set).
    quarantined = archive.blobs.read(row["blob_key"])
    assert quarantined[dataset_offset(quarantined) :] == changed[dataset_offset(changed) :]
    assert archive.index.counts()["instances"] == 1


def test_stow_batch_refuses_other_content_in_another_syntax(archive: Archive) -> None:
    original = sample("MR_small.dcm")
    archive.ingest.store_part10(original, CLI)
    changed = as_syntax(original.replace(b"CompressedSamples^MR1", b"CompressedSamples^MR9"), "explicit-be")
    (result,) = archive.ingest.store_many([changed], CLI)
    assert isinstance(result, DuplicateInstance), result
    assert "PatientName differs" in str(result)
    assert [c["kind"] for c in archive.index.conflicts()] == ["duplicate-different-content"]


def test_overwrite_policy_does_not_replace_the_same_object(tmp_path: Path) -> None:
    archive = Archive(tmp_path, DuplicatePolicy.OVERWRITE)
    original = sample("CT_small.dcm")
    archive.ingest.store_part10(original, CLI)
    held = archive.index.get_instance(extract_part10(original).sop_instance_uid)
    assert held is not None
    before = archive.state()
    copy = as_syntax(original, "implicit-le")
    assert archive.ingest.store_part10(copy, CLI).outcome is StoreOutcome.ALREADY_PRESENT
    (stow,) = archive.ingest.store_many([as_syntax(original, "rle")], CLI)
    assert not isinstance(stow, Exception) and stow.outcome is StoreOutcome.ALREADY_PRESENT
    assert archive.state() == before
    again = archive.index.get_instance(held.sop_instance_uid)
    assert again is not None and again.blob_key == held.blob_key
    # Other content still replaces.
    changed = as_syntax(original.replace(b"CompressedSamples^CT1", b"CompressedSamples^CT2"), "rle")
    assert archive.ingest.store_part10(changed, CLI).outcome is StoreOutcome.REPLACED


def test_reject_policy_refuses_the_same_object_in_another_syntax(tmp_path: Path) -> None:
    archive = Archive(tmp_path, DuplicatePolicy.REJECT)
    original = sample("CT_small.dcm")
    archive.ingest.store_part10(original, CLI)
    with pytest.raises(DuplicateInstance, match="policy: reject"):
        archive.ingest.store_part10(as_syntax(original, "implicit-le"), CLI)


def test_held_copy_compressed_at_rest(tmp_path: Path) -> None:
    """The held blob is JPEG-LS (compression at rest); a resend in a third syntax is
    compared with it by content."""
    ls = transfer_syntax("jpeg-ls-lossless").uid
    archive = Archive(tmp_path, compression=[(CompressionRule("*", ls), ls)])
    original = sample("CT_small.dcm")
    archive.ingest.store_part10(original, CLI)
    held = archive.index.get_instance(extract_part10(original).sop_instance_uid)
    assert held is not None
    assert extract_part10(archive.blobs.read(held.blob_key)).transfer_syntax_uid == ls
    before = archive.state()
    assert store_received(archive, as_syntax(original, "explicit-be")) is StoreOutcome.ALREADY_PRESENT
    assert archive.state() == before


def test_unreadable_held_copy_is_not_taken_for_the_same_object(archive: Archive) -> None:
    original = sample("CT_small.dcm")
    archive.ingest.store_part10(original, CLI)
    held = archive.index.get_instance(extract_part10(original).sop_instance_uid)
    assert held is not None
    archive.blobs.put(held.blob_key, b"not a DICOM file")  # damaged behind our back
    with pytest.raises(DuplicateInstance, match="cannot be compared"):
        store_received(archive, as_syntax(original, "implicit-le"))
