"""Repair from a peer on a real index (SQLite) and file store, with the peer's copies given.

The network side (C-GET, WADO-RS) is the end-to-end test's (tests/e2e/test_repair.py);
here the peer is a fake :class:`~dicomhub.services.repair.PeerCopies` that hands back
whatever bytes a test gives it, so that every proof and refusal is seen on its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ImplicitVRLittleEndian

from dicomhub.bootstrap import open_archive
from dicomhub.config import load_settings
from dicomhub.errors import InvalidIdentifier, NotFound
from dicomhub.model.caller import Caller
from dicomhub.model.migration import RemoteArchive, RemoteKind
from dicomhub.model.peer import Peer, Role
from dicomhub.model.repair import RepairTarget
from dicomhub.model.structure import dataset_offset
from dicomhub.services.archive import Archive
from dicomhub.services.repair import RepairService
from tests.datagen import make_dataset, write_dataset


class FakePeer:
    """Copies by SOP Instance UID; records what it was asked for and how."""

    def __init__(self) -> None:
        self.copies: dict[str, bytes] = {}
        self.asked: list[tuple[RemoteKind, str]] = []

    def fetch(self, remote: RemoteArchive, target: RepairTarget) -> bytes:
        self.asked.append((remote.kind, target.sop_instance_uid))
        if target.sop_instance_uid not in self.copies:
            from dicomhub.errors import DicomhubError

            raise DicomhubError("the peer does not hold it")
        return self.copies[target.sop_instance_uid]


class Setup:
    def __init__(self, archive: Archive, files: dict[str, bytes], peer: FakePeer) -> None:
        self.archive, self.files, self.peer = archive, files, peer

    @property
    def service(self) -> RepairService:
        assert self.archive.repair is not None
        return self.archive.repair

    def row(self, sop: str) -> tuple[str, int, str, str]:
        found = self.archive.index.get_instance(sop)
        assert found is not None
        return found.blob_key, found.size, found.sha256, found.transfer_syntax_uid


def _setup(tmp_path: Path, **settings: object) -> Iterator[Setup]:
    archive = open_archive(load_settings({"data_dir": str(tmp_path / "data"), **settings}, environ={}))
    study = "1.2.826.0.1.3680043.8.498.1"
    files = {}
    for n in range(3):
        ds = make_dataset(study_uid=study, instance_number=n + 1, seed=n)
        data = write_dataset(tmp_path / f"in{n}.dcm", ds).read_bytes()
        archive.ingest.store_part10(data, Caller.cli())
        files[str(ds.SOPInstanceUID)] = data
    archive.peers.add(
        Peer("web", dicomweb_url="http://127.0.0.1:9/dicomweb", roles=frozenset({Role.MIGRATION_SOURCE})),
        Caller.cli(),
    )
    peer = FakePeer()
    assert archive.repair is not None
    archive.repair.copies = peer
    yield Setup(archive, files, peer)
    archive.close()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    yield from _setup(tmp_path)


def _truncate(s: Setup, sop: str) -> bytes:
    key = s.row(sop)[0]
    data = s.archive.blobs.read(key)
    s.archive.blobs.delete(key)
    s.archive.blobs.put(key, data[: len(data) // 2])
    return data[: len(data) // 2]


def test_missing_and_truncated_blobs_are_restored_from_the_peer(setup: Setup) -> None:
    s = setup
    first, second, third = s.files
    before = {sop: s.row(sop) for sop in s.files}
    _truncate(s, first)
    s.archive.blobs.delete(before[second][0])
    s.peer.copies = dict(s.files)
    report = s.service.repair()
    assert report.checked == 3 and report.ok
    assert {i.sop_instance_uid: (i.problem, i.outcome) for i in report.items} == {
        first: ("size-mismatch", "repaired"),
        second: ("missing", "repaired"),
    }
    for sop in (first, second):
        key, size, sha256, syntax = s.row(sop)
        assert key != before[sop][0] and (size, sha256, syntax) == before[sop][1:]
        assert s.archive.blobs.read(key) == s.files[sop]
        assert not s.archive.blobs.exists(before[sop][0])
    assert s.row(third) == before[third]
    assert s.peer.asked == [(RemoteKind.DICOMWEB, first), (RemoteKind.DICOMWEB, second)]
    assert s.archive.storage_check.check().ok
    # Nothing left to do, and nothing asked for.
    assert s.service.repair().items == [] and len(s.peer.asked) == 2


def test_a_copy_that_is_not_proven_the_same_object_is_refused_and_nothing_changes(setup: Setup) -> None:
    s = setup
    first, second, third = s.files
    damaged = {sop: _truncate(s, sop) for sop in s.files}
    keys = {sop: s.row(sop)[0] for sop in s.files}
    other = dcmread(BytesIO(s.files[first]))
    other.ImageComments = "another object"
    s.peer.copies[first] = _encode(other)
    reencoded = dcmread(BytesIO(s.files[second]))
    s.peer.copies[second] = _encode(reencoded, ImplicitVRLittleEndian)
    s.peer.copies[third] = s.files[first]  # another SOP Instance
    report = s.service.repair()
    assert not report.ok
    reasons = {i.sop_instance_uid: i.reason for i in report.items}
    assert all(i.outcome == "failed" for i in report.items)
    assert "refused: its data set differs" in reasons[first]
    assert "refused: its data set differs" in reasons[second]
    assert f"refused: the copy is SOP Instance {first}" in reasons[third]
    for sop in s.files:
        assert s.row(sop)[0] == keys[sop]
        assert s.archive.blobs.read(keys[sop]) == damaged[sop]  # never made worse


def test_dry_run_lists_the_peers_and_changes_nothing(setup: Setup) -> None:
    s = setup
    first = next(iter(s.files))
    damaged = _truncate(s, first)
    report = s.service.repair(dry_run=True)
    assert [(i.sop_instance_uid, i.outcome, i.source) for i in report.items] == [
        (first, "planned", "web (WADO-RS)")
    ]
    assert report.ok and s.peer.asked == []
    assert s.archive.blobs.read(s.row(first)[0]) == damaged


def test_without_a_peer_each_damaged_instance_says_why(setup: Setup) -> None:
    s = setup
    first = next(iter(s.files))
    _truncate(s, first)
    s.archive.peers.remove("web", Caller.cli())
    report = s.service.repair(dry_run=True)
    assert not report.ok and "no peer to repair from" in report.items[0].reason


def test_study_selection_and_bad_arguments(setup: Setup) -> None:
    s = setup
    first = next(iter(s.files))
    _truncate(s, first)
    assert s.service.repair(["1.2.3.4"], dry_run=True).checked == 0
    assert s.service.repair(["1.2.826.0.1.3680043.8.498.1"], dry_run=True).checked == 3
    with pytest.raises(InvalidIdentifier):
        s.service.repair(["../etc"])
    with pytest.raises(NotFound):
        s.service.repair(peer_names=["nobody"])


def test_a_compressed_object_is_restored_from_what_was_received_and_compressed_again(
    tmp_path: Path,
) -> None:
    for s in _setup(tmp_path, compress=["CT=rle"]):
        first = next(iter(s.files))
        key, _size, _sha, syntax = s.row(first)
        assert syntax == "1.2.840.10008.1.2.5"  # RLE Lossless at rest
        s.archive.blobs.delete(key)
        s.peer.copies[first] = s.files[first]  # the peer holds it as it was received
        report = s.service.repair()
        assert [i.outcome for i in report.items] == ["repaired"], report.items[0].reason
        new_key, size, sha256, syntax = s.row(first)
        stored = s.archive.blobs.read(new_key)
        assert syntax == "1.2.840.10008.1.2.5" and (size, sha256) == (
            len(stored),
            hashlib.sha256(stored).hexdigest(),
        )
        restored, received = dcmread(BytesIO(stored)), dcmread(BytesIO(s.files[first]))
        assert str(restored.file_meta.TransferSyntaxUID) == syntax
        assert (restored.pixel_array == received.pixel_array).all()
        assert s.archive.storage_check.check().ok


def _encode(ds: object, syntax: str | None = None) -> bytes:
    from pydicom.dataset import FileDataset

    assert isinstance(ds, FileDataset)
    out = BytesIO()
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(
        out, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True
    )
    return out.getvalue()


def test_without_digests_a_damaged_stowed_object_is_found_by_parsing_and_nothing_is_proof(
    tmp_path: Path,
) -> None:
    for s in _setup(tmp_path):
        data = write_dataset(tmp_path / "stow.dcm", make_dataset(instance_number=9, seed=9)).read_bytes()
        [result] = s.archive.ingest.store_many([data], Caller.cli())
        assert not isinstance(result, Exception)
        sop = str(dcmread(BytesIO(data)).SOPInstanceUID)
        key, _size, sha256, _syntax = s.row(sop)
        assert sha256 == ""  # left for the background process, which has not run
        # The same size (which the index does keep), but no data set any more.
        stored = s.archive.blobs.read(key)
        damaged = stored[: dataset_offset(stored)] + b"\xff" * (len(stored) - dataset_offset(stored))
        s.archive.blobs.delete(key)
        s.archive.blobs.put(key, damaged)
        s.peer.copies[sop] = data  # the very object: still nothing to prove it with
        report = s.service.repair()
        [item] = report.items
        assert (item.sop_instance_uid, item.problem, item.outcome) == (sop, "unreadable", "failed")
        assert "no data set digest" in item.reason and "left for later too" in item.reason
        assert s.row(sop)[0] == key and s.archive.blobs.read(key) == damaged


def test_a_folder_copy_is_found_by_the_uid_in_its_header_and_read_again_when_it_changed(
    tmp_path: Path,
) -> None:
    from dicomhub.errors import DicomhubError
    from dicomhub.migrate.repairsource import PeerInstanceFetcher

    folder = tmp_path / "backup"
    (folder / "deep").mkdir(parents=True)
    first, second = make_dataset(seed=1), make_dataset(seed=2)
    sop1, sop2 = str(first.SOPInstanceUID), str(second.SOPInstanceUID)
    # Named after the other instance: the name counts for nothing.
    data1 = write_dataset(folder / "deep" / f"{sop2}.dcm", first).read_bytes()
    (folder / "junk.dcm").write_bytes(b"not DICOM at all")
    fetcher = PeerInstanceFetcher(load_settings({"data_dir": str(tmp_path / "data")}, environ={}))
    remote = RemoteArchive("folder", RemoteKind.FOLDER, path=str(folder))

    def target(sop: str) -> RepairTarget:
        return RepairTarget(0, sop, "", "", "", 0, "", "", "", "", None, None, None)

    assert fetcher.fetch(remote, target(sop1)) == data1
    with pytest.raises(DicomhubError, match="no file under"):
        fetcher.fetch(remote, target(sop2))
    # Added after the first read, and the first file replaced by another object: read again.
    data2 = write_dataset(folder / "later.bin", second).read_bytes()
    assert fetcher.fetch(remote, target(sop2)) == data2
    write_dataset(folder / "deep" / f"{sop2}.dcm", second)
    with pytest.raises(DicomhubError, match="no file under"):
        fetcher.fetch(remote, target(sop1))
    with pytest.raises(DicomhubError, match="is not a folder"):
        fetcher.fetch(RemoteArchive("x", RemoteKind.FOLDER, path=str(tmp_path / "absent")), target(sop1))
