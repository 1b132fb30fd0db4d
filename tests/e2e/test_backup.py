"""`dicomhub backup`, `restore` and `reindex` against real servers.

On either back end (DICOMHUB_TEST_BACKEND): SQLite + file store (online
backup, blobs copied) or PostgreSQL + S3 (pg_dump on an exported snapshot,
manifest only: the restore copies from the source bucket into the new
archive's own prefix).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicomhub.index.backup import drop_all_tables
from dicomhub.index.engine import connect_engine
from tests.backends import BACKEND, POSTGRES_S3, backend_env
from tests.datagen import write_ct_series, write_garbage
from tests.e2e.helpers import (
    HOST,
    DicomhubServer,
    ServerPool,
    find,
    get,
    parse_store_statuses,
    popen_dcmtk,
    read_blob,
    read_dir,
    run_cli,
    store_ok,
    write_blob,
)

pytestmark = pytest.mark.e2e


def _pixels(ds: Dataset) -> str:
    return hashlib.sha256(bytes(ds.PixelData)).hexdigest()


def _retrieve_all(server: DicomhubServer, study_uids: set[str], out: Path) -> dict[str, Dataset]:
    """Every instance of these studies, fetched with C-GET."""
    received: dict[str, Dataset] = {}
    for i, study_uid in enumerate(sorted(study_uids)):
        res = get(server, "STUDY", {"StudyInstanceUID": study_uid}, out / f"get{i}")
        assert res.returncode == 0, res.output[-3000:]
        received.update(read_dir(out / f"get{i}"))
    return received


def _assert_intact(received: dict[str, Dataset], expected: dict[str, Dataset]) -> None:
    missing = sorted(set(expected) - set(received))
    assert not missing, f"{len(missing)} acknowledged instances missing after restore, e.g. {missing[:3]}"
    for uid, original in expected.items():
        got = received[uid]
        assert got.StudyInstanceUID == original.StudyInstanceUID, uid
        assert got.SeriesInstanceUID == original.SeriesInstanceUID, uid
        assert got.PatientID == original.PatientID, uid
        assert _pixels(got) == _pixels(original), f"PixelData of {uid} differs"


def _cli(*args: str, data_dir: Path) -> tuple[int, str]:
    return run_cli(*args, "--data-dir", str(data_dir), timeout=120)


def test_backup_while_storing_then_restore_on_a_fresh_archive(servers: ServerPool, tmp_path: Path) -> None:
    srv = servers.start("source")
    first = write_ct_series(tmp_path / "first", 40, rows=16, cols=16, patient_id="BKP-A")
    second = write_ct_series(tmp_path / "second", 300, rows=16, cols=16, patient_id="BKP-B")
    sent = {str(d.SOPInstanceUID): d for d in first + second}
    store_ok(srv, tmp_path / "first", expect=len(first))

    # The second series goes in while the backup is taken.
    log = tmp_path / "storescu.log"
    proc = popen_dcmtk(
        "storescu", "-d", "-nh", "+sd", "+r", "-aet", "BKPSCU", "-aec", srv.aet,
        HOST, str(srv.dimse_port), tmp_path / "second", log=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(parse_store_statuses(log.read_text(errors="replace"))) < 40:
            assert proc.poll() is None, "storescu ended before the backup could start"
            assert time.monotonic() < deadline, "storescu made no progress"
            time.sleep(0.02)
        acked_before = {
            u for u, st in parse_store_statuses(log.read_text(errors="replace")).items() if st == 0
        }
        assert proc.poll() is None, "storescu ended before the backup began: not a backup during ingest"
        rc, out = _cli("backup", str(tmp_path / "bk"), data_dir=srv.data_dir)
        assert rc == 0, out
        still_storing = proc.poll() is None
    finally:
        assert proc.wait(120) == 0, log.read_text(errors="replace")[-3000:]
    final = parse_store_statuses(log.read_text(errors="replace"))
    assert all(st == 0 for st in final.values()) and len(final) == len(second)

    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    entries = [json.loads(line) for line in (tmp_path / "bk" / "blobs.jsonl").read_text().splitlines()]
    assert manifest["blobs"] == len(entries)
    assert manifest["index_kind"] == ("postgresql" if BACKEND == POSTGRES_S3 else "sqlite")
    assert manifest["blobs_copied"] is (BACKEND != POSTGRES_S3)  # S3: manifest only by default
    in_backup = {e["sop_instance_uid"] for e in entries}
    print(f"backup: {len(acked_before)} of the second series acknowledged before it began, "
          f"{len(in_backup)} of {len(sent)} in it, storescu still sending after it: {still_storing}")
    expected = {u: sent[u] for u in set(map(str, (d.SOPInstanceUID for d in first))) | acked_before}
    assert set(expected) <= in_backup, "an instance acknowledged before the backup began is not in it"
    # Taken during ingest: when storescu was still sending as the backup ended, the
    # instances it stored after the snapshot are not in the backup.
    assert not still_storing or len(in_backup) < len(sent)

    # A fresh archive (its own database and prefix on postgres-s3) from the backup.
    fresh = tmp_path / "restored" / "data"
    rc, out = _cli("restore", str(tmp_path / "bk"), data_dir=fresh)
    assert rc == 0, out
    assert f"restored {len(in_backup)} instances" in out, out
    restored = servers.start("restored", data_dir=fresh)
    received = _retrieve_all(restored, {str(first[0].StudyInstanceUID), str(second[0].StudyInstanceUID)},
                             tmp_path / "out")  # fmt: skip
    assert set(received) == in_backup, "the restored archive serves other instances than the backup lists"
    _assert_intact(received, expected)
    _assert_intact(received, {u: sent[u] for u in in_backup})
    # C-FIND agrees with the counts.
    matches = find(restored, "STUDY", {"StudyInstanceUID": str(first[0].StudyInstanceUID),
                   "NumberOfStudyRelatedInstances": None}, tmp_path / "find")  # fmt: skip
    assert [int(m.NumberOfStudyRelatedInstances) for m in matches] == [len(first)]

    # Over a non-empty archive: refused, and the archive is left as it was.
    rc, out = _cli("restore", str(tmp_path / "bk"), data_dir=srv.data_dir)
    assert rc == 1 and "refusing to restore over an archive that holds" in out, out


def test_restore_from_a_damaged_backup_names_the_blob(servers: ServerPool, tmp_path: Path) -> None:
    srv = servers.start("damaged")
    series = write_ct_series(tmp_path / "in", 12, rows=16, cols=16, patient_id="BKP-D")
    store_ok(srv, tmp_path / "in", expect=len(series))
    srv.stop()
    rc, out = _cli("backup", str(tmp_path / "bk"), data_dir=srv.data_dir)
    assert rc == 0, out
    entries = [json.loads(line) for line in (tmp_path / "bk" / "blobs.jsonl").read_text().splitlines()]
    victim = entries[3]["key"]
    if BACKEND == POSTGRES_S3:  # manifest only: the bytes are the source bucket's
        data = bytearray(read_blob(srv.data_dir, victim) or b"")
        data[-5] ^= 0xFF
        write_blob(srv.data_dir, victim, bytes(data))
    else:
        path = tmp_path / "bk" / "blobs" / victim[:2] / victim[2] / victim
        data = bytearray(path.read_bytes())
        data[-5] ^= 0xFF
        path.write_bytes(bytes(data))
    fresh = tmp_path / "fresh" / "data"
    rc, out = _cli("restore", str(tmp_path / "bk"), data_dir=fresh)
    assert rc == 1, out
    assert f"blob {victim}" in out and "is damaged" in out and "nothing was restored" in out, out
    # Nothing was restored: the fresh archive is still empty and a later restore is not refused.
    rc, out = _cli("ls", "--json", data_dir=fresh)
    assert rc == 0 and json.loads(out[out.index("[") :]) == [], out

    rc, out = _cli("restore", str(tmp_path / "nowhere"), data_dir=fresh)
    assert rc == 1 and "not a complete dicomhub backup" in out, out


def _lose_the_index(data_dir: Path) -> None:
    url = backend_env(data_dir).get("DICOMHUB_DATABASE_URL")
    if url:
        engine = connect_engine(url, pool_size=1, max_overflow=0)
        try:
            drop_all_tables(engine)
        finally:
            engine.dispose()
        return
    for path in data_dir.glob("index.sqlite*"):
        path.unlink()


def test_reindex_rebuilds_a_lost_index_from_the_blobs(servers: ServerPool, tmp_path: Path) -> None:
    srv = servers.start("reindex")
    one = write_ct_series(tmp_path / "in" / "a", 25, rows=16, cols=16, patient_id="RIX-1")
    two = write_ct_series(tmp_path / "in" / "b", 15, rows=16, cols=16, patient_id="RIX-2")
    sent = {str(d.SOPInstanceUID): d for d in one + two}
    store_ok(srv, tmp_path / "in", expect=len(sent))
    srv.stop()
    _lose_the_index(srv.data_dir)
    stray = "00" + "f" * 30  # not a DICOM object, in the store as a blob
    write_blob(srv.data_dir, stray, write_garbage(tmp_path / "garbage.bin").read_bytes())

    rc, out = _cli("reindex", data_dir=srv.data_dir)
    assert rc == 1, out  # the stray object is reported
    assert f"{len(sent)} indexed" in out, out
    assert f"not DICOM: blob {stray}" in out, out
    # Run again: nothing new, the instances are found as indexed already.
    rc, out = _cli("reindex", data_dir=srv.data_dir)
    assert "0 indexed" in out and f"{len(sent)} indexed already" in out, out

    srv.start()
    studies = {str(one[0].StudyInstanceUID), str(two[0].StudyInstanceUID)}
    received = _retrieve_all(srv, studies, tmp_path / "o")
    assert set(received) == set(sent)
    _assert_intact(received, sent)
    matches = find(srv, "SERIES", {"StudyInstanceUID": str(two[0].StudyInstanceUID), "Modality": "CT",
                   "NumberOfSeriesRelatedInstances": None}, tmp_path / "f")  # fmt: skip
    assert [int(m.NumberOfSeriesRelatedInstances) for m in matches] == [len(two)]
    assert read_blob(srv.data_dir, stray) is not None  # reported, not removed
