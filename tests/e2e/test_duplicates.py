"""Duplicate SOP Instance UIDs under the keep / overwrite / reject policies,
and two associations sending the same instances at once."""

from __future__ import annotations

import re
from pathlib import Path

import datagen
import pytest
from pydicom.dataset import Dataset

from .helpers import (
    DicomhubServer,
    ServerPool,
    StoreResult,
    assert_same_instances,
    get,
    is_failure,
    parse_store_statuses,
    popen_dcmtk,
    read_dir,
    store,
    store_ok,
    study_instance_count,
)

pytestmark = pytest.mark.e2e


def pair(tmp_path: Path) -> tuple[Dataset, Dataset]:
    """Two files with identical UIDs and different pixel data."""
    sop, study, series = datagen.uid(), datagen.uid(), datagen.uid()
    kw = dict(sop_uid=sop, study_uid=study, series_uid=series, patient_id="DUP" + sop[-6:])
    a = datagen.write_instance(tmp_path / "a" / "x.dcm", seed=1, **kw)
    b = datagen.write_instance(tmp_path / "b" / "x.dcm", seed=2, **kw)
    assert bytes(a.PixelData) != bytes(b.PixelData)
    return a, b


def retrieve_one(server: DicomhubServer, ds: Dataset, out: Path) -> Dataset:
    res = get(
        server, "IMAGE",
        {"StudyInstanceUID": str(ds.StudyInstanceUID), "SeriesInstanceUID": str(ds.SeriesInstanceUID),
         "SOPInstanceUID": str(ds.SOPInstanceUID)},
        out,
    )  # fmt: skip
    assert res.returncode == 0, res.output[-3000:]
    got = read_dir(out)
    assert list(got) == [str(ds.SOPInstanceUID)], list(got)
    return got[str(ds.SOPInstanceUID)]


def single_status(res: StoreResult, ds: Dataset) -> int:
    uid = str(ds.SOPInstanceUID)
    assert uid in res.statuses, f"no C-STORE response for {uid}:\n{res.output[-3000:]}"
    return res.statuses[uid]


def error_comment(res: StoreResult) -> str | None:
    """ErrorComment of a C-STORE-RSP (DCMTK prints it in the "Status Detail" dump)."""
    m = re.search(r"\(0000,0902\) LO \[([^\]]*)\]", res.output)
    return m.group(1).strip() if m else None


def test_same_bytes_twice_is_success_and_changes_nothing(server: DicomhubServer, tmp_path: Path) -> None:
    a, _ = pair(tmp_path)
    store_ok(server, tmp_path / "a", expect=1)
    assert study_instance_count(server.data_dir, str(a.StudyInstanceUID)) == 1
    res = store_ok(server, tmp_path / "a", expect=1)
    assert single_status(res, a) == 0x0000
    assert study_instance_count(server.data_dir, str(a.StudyInstanceUID)) == 1
    assert bytes(retrieve_one(server, a, tmp_path / "get").PixelData) == bytes(a.PixelData)


def test_same_bytes_from_another_ae_is_success(server: DicomhubServer, tmp_path: Path) -> None:
    """Identical data set sent again by a different calling AE: still "the same
    bytes" (the data set is identical; only the association differs)."""
    a, _ = pair(tmp_path)
    store_ok(server, tmp_path / "a", expect=1, calling="FIRSTAE")
    res = store(server, tmp_path / "a", calling="SECONDAE")
    assert single_status(res, a) == 0x0000, f"0x{single_status(res, a):04X}\n{res.output[-2000:]}"
    assert study_instance_count(server.data_dir, str(a.StudyInstanceUID)) == 1


def test_keep_policy_refuses_different_bytes(server: DicomhubServer, tmp_path: Path) -> None:
    """Default policy keep: the second, different copy gets a 0xC4xx failure
    with an ErrorComment; the first copy is what is retrieved."""
    a, b = pair(tmp_path)
    store_ok(server, tmp_path / "a", expect=1)
    res = store(server, tmp_path / "b")
    status = single_status(res, b)
    assert 0xC400 <= status <= 0xC4FF, f"expected 0xC4xx, got 0x{status:04X}\n{res.output[-3000:]}"
    assert error_comment(res), f"failure response without ErrorComment:\n{res.output[-3000:]}"
    assert study_instance_count(server.data_dir, str(a.StudyInstanceUID)) == 1
    got = retrieve_one(server, a, tmp_path / "get")
    assert bytes(got.PixelData) == bytes(a.PixelData), "the refused copy replaced the first one"


def test_keep_policy_explicit_flag(servers: ServerPool, tmp_path: Path) -> None:
    srv = servers.start(args=["--duplicate-policy", "keep"])
    a, b = pair(tmp_path)
    store_ok(srv, tmp_path / "a", expect=1)
    assert single_status(store_ok(srv, tmp_path / "a"), a) == 0
    status = single_status(store(srv, tmp_path / "b"), b)
    assert 0xC400 <= status <= 0xC4FF, f"0x{status:04X}"
    assert bytes(retrieve_one(srv, a, tmp_path / "get").PixelData) == bytes(a.PixelData)


def test_overwrite_policy_second_copy_wins(servers: ServerPool, tmp_path: Path) -> None:
    srv = servers.start(args=["--duplicate-policy", "overwrite"])
    a, b = pair(tmp_path)
    store_ok(srv, tmp_path / "a", expect=1)
    res = store_ok(srv, tmp_path / "b", expect=1)
    assert single_status(res, b) == 0x0000
    assert study_instance_count(srv.data_dir, str(a.StudyInstanceUID)) == 1
    got = retrieve_one(srv, b, tmp_path / "get")
    assert bytes(got.PixelData) == bytes(b.PixelData), "overwrite policy kept the old copy"


def test_reject_policy_refuses_any_duplicate(servers: ServerPool, tmp_path: Path) -> None:
    srv = servers.start(args=["--duplicate-policy", "reject"])
    a, b = pair(tmp_path)
    store_ok(srv, tmp_path / "a", expect=1)
    for again, ds in (("a", a), ("b", b)):
        res = store(srv, tmp_path / again)
        status = single_status(res, ds)
        assert is_failure(status), f"duplicate ({again}) not refused: 0x{status:04X}\n{res.output[-2000:]}"
    assert study_instance_count(srv.data_dir, str(a.StudyInstanceUID)) == 1
    got = retrieve_one(srv, a, tmp_path / "get")
    assert bytes(got.PixelData) == bytes(a.PixelData)


def test_concurrent_identical_stores(server: DicomhubServer, tmp_path: Path) -> None:
    """Two storescu processes send the same 50 instances at the same time:
    every C-STORE succeeds (same bytes), exactly 50 instances are indexed and
    each one is retrievable."""
    n = 50
    series = datagen.write_ct_series(
        tmp_path / "src", n, rows=16, cols=16, patient_id="CONC" + datagen.uid()[-6:]
    )
    study_uid = str(series[0].StudyInstanceUID)
    procs = []
    for i in range(2):
        log = tmp_path / f"storescu{i}.log"
        args = ["-d", "-nh", "+sd", "-aet", f"CONC{i}", "-aec", server.aet,
                "127.0.0.1", str(server.dimse_port), tmp_path / "src"]  # fmt: skip
        procs.append((popen_dcmtk("storescu", *args, log=log), log))
    for proc, log in procs:
        rc = proc.wait(120)
        out = log.read_text(errors="replace")
        statuses = parse_store_statuses(out)
        assert rc == 0, out[-3000:]
        assert len(statuses) == n, f"{len(statuses)} responses\n{out[-2000:]}"
        bad = {u: hex(s) for u, s in statuses.items() if s != 0}
        assert not bad, f"concurrent identical store got non-success statuses: {bad}"
    assert study_instance_count(server.data_dir, study_uid) == n
    res = get(server, "STUDY", {"StudyInstanceUID": study_uid}, tmp_path / "get")
    assert res.returncode == 0, res.output[-3000:]
    assert res.final_counts()["completed"] == n, res.final_counts()
    assert_same_instances(read_dir(tmp_path / "get"), series)


def test_concurrent_conflicting_stores(server: DicomhubServer, tmp_path: Path) -> None:
    """Same 30 UIDs, different bytes, two associations at once (keep policy):
    never two rows for one UID; for each UID exactly one version is retrievable
    and one of the two senders got success for it."""
    n = 30
    sops = [datagen.uid() for _ in range(n)]
    study, series_uid = datagen.uid(), datagen.uid()
    versions: dict[str, dict[str, bytes]] = {}
    for v in ("a", "b"):
        for i, sop in enumerate(sops):
            ds = datagen.write_instance(
                tmp_path / v / f"{i}.dcm", sop_uid=sop, study_uid=study, series_uid=series_uid,
                instance_number=i + 1, patient_id="CONF" + study[-6:], seed=(1 if v == "a" else 2) * 1000 + i,
            )  # fmt: skip
            versions.setdefault(sop, {})[v] = bytes(ds.PixelData)
    procs = []
    for v in ("a", "b"):
        log = tmp_path / f"storescu-{v}.log"
        args = ["-d", "-nh", "+sd", "-aet", f"CONF{v.upper()}", "-aec", server.aet,
                "127.0.0.1", str(server.dimse_port), tmp_path / v]  # fmt: skip
        procs.append((v, popen_dcmtk("storescu", *args, log=log), log))
    statuses: dict[str, dict[str, int]] = {}
    for v, proc, log in procs:
        proc.wait(120)
        statuses[v] = parse_store_statuses(log.read_text(errors="replace"))
        assert len(statuses[v]) == n, log.read_text(errors="replace")[-2000:]
    assert study_instance_count(server.data_dir, study) == n
    res = get(server, "STUDY", {"StudyInstanceUID": study}, tmp_path / "get")
    assert res.returncode == 0, res.output[-3000:]
    got = read_dir(tmp_path / "get")
    assert set(got) == set(sops)
    for sop in sops:
        winners = [v for v in ("a", "b") if statuses[v][sop] == 0]
        assert len(winners) == 1, f"{sop}: statuses a=0x{statuses['a'][sop]:04X} b=0x{statuses['b'][sop]:04X}"
        assert bytes(got[sop].PixelData) == versions[sop][winners[0]], (
            f"{sop}: retrieved copy is not the accepted one"
        )
        loser = "b" if winners[0] == "a" else "a"
        assert 0xC400 <= statuses[loser][sop] <= 0xC4FF, hex(statuses[loser][sop])
