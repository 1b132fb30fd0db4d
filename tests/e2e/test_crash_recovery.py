"""kill -9 of the server in the middle of a long store: every instance that was
acknowledged with Success survives a restart intact, and there are no
half-written objects (everything the index shows can be retrieved)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import datagen
import pytest

from .helpers import (
    ServerPool,
    echo,
    find,
    get,
    pyn_store,
    read_dir,
    study_instance_count,
)

pytestmark = pytest.mark.e2e

N = 300
KILL_AFTER = 60


def test_kill9_during_store_loses_no_acknowledged_instance(servers: ServerPool, tmp_path: Path) -> None:
    srv = servers.start()
    series = datagen.write_ct_series(
        tmp_path / "src", N, rows=32, cols=32, patient_id="CRASH" + datagen.uid()[-6:]
    )
    originals = {str(d.SOPInstanceUID): d for d in series}
    study_uid = str(series[0].StudyInstanceUID)
    series_uid = str(series[0].SeriesInstanceUID)
    files = [Path(d.filename) for d in series]

    acked: list[str] = []
    others: list[tuple[str | None, int | None]] = []
    enough = threading.Event()

    def on_result(uid: str | None, status: int | None) -> None:
        if status == 0x0000 and uid is not None:
            acked.append(uid)
        else:
            others.append((uid, status))
        if len(acked) >= KILL_AFTER:
            enough.set()

    sender_error: list[BaseException] = []

    def sender() -> None:
        try:
            pyn_store(srv, files, calling="CRASHSCU", on_result=on_result)
        except BaseException as exc:  # reported below
            sender_error.append(exc)
        finally:
            enough.set()

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    assert enough.wait(120), "no progress sending instances"
    srv.kill9()
    t.join(60)
    assert not t.is_alive(), "SCU thread did not notice the dead server"
    assert not sender_error, sender_error
    assert KILL_AFTER <= len(acked) < N, (
        f"{len(acked)} acknowledged; the kill did not land mid-transfer, test is meaningless"
    )
    # only a missing response (None) may follow the kill; no other failures
    assert all(st is None for _, st in others), others

    time.sleep(0.2)
    srv.restart()
    rc, out = echo(srv)
    assert rc == 0, out

    # every acknowledged instance is in the index ...
    rsp = find(
        srv, "IMAGE",
        {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "SOPInstanceUID": None},
        tmp_path / "find",
    )  # fmt: skip
    indexed = {str(r.SOPInstanceUID) for r in rsp}
    missing = set(acked) - indexed
    assert not missing, f"{len(missing)} acknowledged instances lost, e.g. {sorted(missing)[:3]}"
    assert indexed <= set(originals)
    assert study_instance_count(srv.data_dir, study_uid) == len(indexed)

    # ... and everything in the index is retrievable with intact pixel data
    res = get(
        srv, "SERIES", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}, tmp_path / "get"
    )
    assert res.returncode == 0, res.output[-3000:]
    counts = res.final_counts()
    assert counts["completed"] == len(indexed), counts
    assert counts["failed"] in (0, None), counts
    got = read_dir(tmp_path / "get")
    assert set(got) == indexed
    for uid, ds in got.items():
        assert bytes(ds.PixelData) == bytes(originals[uid].PixelData), f"{uid} corrupted"

    # the archive keeps working: the rest of the series can be sent now
    rest = [Path(originals[u].filename) for u in originals if u not in indexed]
    results = pyn_store(srv, rest, calling="CRASHSCU")
    assert all(st == 0 for _, st, _ in results), [r for r in results if r[1] != 0][:5]
    assert study_instance_count(srv.data_dir, study_uid) == N
