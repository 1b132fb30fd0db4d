"""kill -9 of the whole server (its process group) at random points while several
clients store (storescu and STOW-RS at once) and another deletes, for several
rounds on one archive.

After every restart: every instance acknowledged with success is there, in
the index and retrievable (WADO-RS) with the pixel data that was sent; an
acknowledged delete stays done; ``dicomhub check`` reports no row without its
blob and no damaged blob, only young orphans (blobs written before the kill,
whose rows never committed), which ``check --repair`` mends. The delays are
random but seeded: the seed is printed (``pytest -s``), and
``DICOMHUB_CRASH_SEED`` replays a run. The figures are printed for
docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import datagen
import httpx
import pydicom
import pytest

from .helpers import (
    DicomhubServer,
    ServerPool,
    run_cli_split,
    split_multipart,
    store,
    store_ok,
)

pytestmark = pytest.mark.e2e

ROUNDS = 3
SERIES_PER_ROUND = 2  # storescu processes at once
STOW_CLIENTS = 2
INSTANCES = 60  # per storescu series and per STOW-RS client, more than a round lasts


def figure(name: str, value: object) -> None:
    print(f"FIGURE {name}: {value}")


def stow_one(srv: DicomhubServer, path: Path) -> bool:
    """POST one instance; True when the server answered that it stored it."""
    boundary = "crashboundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    try:
        r = httpx.post(
            f"{srv.base_url}/dicomweb/studies",
            content=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
            timeout=30,
        )
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def retrieve_study(srv: DicomhubServer, study_uid: str) -> dict[str, bytes]:
    """SOP Instance UID -> PixelData of every instance WADO-RS returns for the study."""
    r = httpx.get(
        f"{srv.base_url}/dicomweb/studies/{study_uid}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
        timeout=60,
    )
    if r.status_code == 404:
        return {}
    assert r.status_code == 200, r.text[:500]
    out: dict[str, bytes] = {}
    for _, content in split_multipart(r.content, r.headers["content-type"]):
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(content), force=True)
        out[str(ds.SOPInstanceUID)] = bytes(ds.PixelData)
    return out


def check_report(srv: DicomhubServer, *extra: str) -> list[dict[str, object]]:
    rc, out, err = run_cli_split("check", "--data-dir", str(srv.data_dir), "--json", *extra)
    problems: list[dict[str, object]] = json.loads(out)["storage"]["problems"]
    # Exit status 1: problems found (listed); anything else is a failure of the command.
    assert rc == (1 if problems else 0), f"dicomhub check exited with {rc}:\n{out}\n{err}"
    return problems


def test_kill9_rounds_lose_no_acknowledged_instance_and_leave_nothing_half_done(
    servers: ServerPool, tmp_path: Path
) -> None:
    seed = int(os.environ.get("DICOMHUB_CRASH_SEED", str(int(time.time()))))
    print(f"crash consistency seed: {seed} (DICOMHUB_CRASH_SEED={seed} replays it)")
    rng = random.Random(seed)
    srv = servers.start(args=["--workers", "2"])

    # What the archive must hold: SOP Instance UID -> (study, PixelData sent).
    expected: dict[str, tuple[str, bytes]] = {}
    attempted = acknowledged = deletes_acked = orphans_total = 0
    lock = threading.Lock()

    # One small study per round for the deleting client, stored beforehand.
    doomed: list[list[pydicom.Dataset]] = []
    for r in range(ROUNDS):
        series = datagen.write_ct_series(tmp_path / f"doomed{r}", 10, rows=16, cols=16)
        store_ok(srv, tmp_path / f"doomed{r}", expect=len(series))
        doomed.append(series)
        for ds in series:
            expected[str(ds.SOPInstanceUID)] = (str(ds.StudyInstanceUID), datagen.pixel_bytes(ds))

    for r in range(ROUNDS):
        acked_now: list[tuple[str, str, bytes]] = []
        delete_done: list[str] = []

        def storescu_client(
            directory: Path, series: list[pydicom.Dataset], acked_now: list[tuple[str, str, bytes]]
        ) -> None:
            res = store(srv, directory, calling="CRASHSCU", timeout=120)
            by_uid = {str(d.SOPInstanceUID): d for d in series}
            with lock:
                for uid, status in res.statuses.items():
                    if status == 0x0000 and uid in by_uid:
                        d = by_uid[uid]
                        acked_now.append((uid, str(d.StudyInstanceUID), datagen.pixel_bytes(d)))

        def stow_client(series: list[pydicom.Dataset], acked_now: list[tuple[str, str, bytes]]) -> None:
            for d in series:
                if not stow_one(srv, Path(d.filename)):
                    return  # the server is gone
                with lock:
                    acked_now.append((str(d.SOPInstanceUID), str(d.StudyInstanceUID), datagen.pixel_bytes(d)))

        def delete_client(study_uid: str, delay: float, delete_done: list[str]) -> None:
            time.sleep(delay)
            try:
                rsp = httpx.delete(f"{srv.base_url}/dicomweb/studies/{study_uid}", timeout=30)
            except httpx.HTTPError:
                return
            if rsp.status_code == 204:
                delete_done.append(study_uid)

        threads: list[threading.Thread] = []
        for s in range(SERIES_PER_ROUND):
            directory = tmp_path / f"r{r}scu{s}"
            series = datagen.write_ct_series(directory, INSTANCES, rows=32, cols=32)
            attempted += len(series)
            threads.append(threading.Thread(target=storescu_client, args=(directory, series, acked_now)))
        for s in range(STOW_CLIENTS):
            series = datagen.write_ct_series(tmp_path / f"r{r}stow{s}", INSTANCES, rows=32, cols=32)
            attempted += len(series)
            threads.append(threading.Thread(target=stow_client, args=(series, acked_now)))
        kill_after = rng.uniform(0.5, 3.0)
        doomed_study = str(doomed[r][0].StudyInstanceUID)
        threads.append(
            threading.Thread(
                target=delete_client, args=(doomed_study, rng.uniform(0.0, kill_after), delete_done)
            )
        )
        for t in threads:
            t.start()
        time.sleep(kill_after)  # the random point of the kill (the test's input, not an assertion)
        srv.kill9()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a client did not notice the dead server"
        assert len(acked_now) < attempted, "the kill came after every store ended: not mid-ingest"

        srv.start()
        acknowledged += len(acked_now)
        for uid, study, pixels in acked_now:
            expected[uid] = (study, pixels)
        # The study a delete was asked for: gone if the delete was acknowledged, else
        # whole or gone (a delete that committed before its answer was sent), never half.
        doomed_uids = {u for u, (st, _) in expected.items() if st == doomed_study}
        remaining = set(retrieve_study(srv, doomed_study))
        assert remaining in (set(), doomed_uids), (
            f"round {r} (seed {seed}): delete half applied, {len(remaining)} of {len(doomed_uids)} left"
        )
        if delete_done:
            deletes_acked += 1
            assert not remaining, f"round {r}: an acknowledged delete came undone"
        for uid in doomed_uids:
            del expected[uid]

        # Every acknowledged instance is there with its pixel data.
        studies = {study for study, _ in expected.values()}
        held: dict[str, bytes] = {}
        for study in studies:
            held.update(retrieve_study(srv, study))
        lost = sorted(uid for uid in expected if uid not in held)
        assert not lost, f"round {r} (seed {seed}): {len(lost)} acknowledged instances lost, e.g. {lost[:3]}"
        for uid, (_, pixels) in expected.items():
            assert held[uid] == pixels, f"round {r} (seed {seed}): {uid} has other pixel data"

        # The index and the store agree: the kill leaves only orphans (blobs whose
        # rows never committed), young ones, which repair removes or indexes.
        problems = check_report(srv)
        assert all(p["kind"] == "orphan" for p in problems), problems
        orphans_total += len(problems)
        srv.stop()
        check_report(srv, "--repair", "--grace", "0")
        assert check_report(srv) == [], "problems left after dicomhub check --repair"
        srv.start()
        print(
            f"round {r}: kill after {kill_after:.2f} s, {len(acked_now)} acknowledged, "
            f"delete acknowledged: {bool(delete_done)}, orphans after the kill: {len(problems)}"
        )

    figure("crash consistency rounds (seed)", f"{ROUNDS} ({seed})")
    figure("instances attempted / acknowledged / lost", f"{attempted} / {acknowledged} / 0")
    figure("deletes acknowledged before the kill", f"{deletes_acked} of {ROUNDS}")
    figure("orphan blobs found after the kills (repaired)", orphans_total)
