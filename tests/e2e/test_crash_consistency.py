"""kill -9 of the whole server (its process group) at random points while several
clients store (storescu and STOW-RS at once) and another deletes, for several
rounds on one archive; then at random points of a pull migration (DICOMweb, from
Orthanc), a push migration (C-STORE, to Orthanc) and a de-identification run,
each run by the server's background process.

After every restart: every instance acknowledged with success is there, in
the index and retrievable (WADO-RS) with the pixel data that was sent; an
acknowledged delete stays done; a killed job is taken up again by the restarted
server and completes, with every object once and as sent (the de-identified ones
under the same keyed UIDs as before the kill); ``dicomhub check`` reports no row without its
blob and no damaged blob, only young orphans (blobs written before the kill,
whose rows never committed), which ``check --repair`` mends. The delays are
random but seeded: the seed is printed (``pytest -s``), and
``DICOMHUB_CRASH_SEED`` replays a run. The figures are printed for
docs/reliability.md.
"""

from __future__ import annotations

import io
import json
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datagen
import httpx
import pydicom
import pytest

from tests.deid_server_data import SECRET as DEID_SECRET

from .helpers import (
    HOST,
    DicomhubServer,
    ServerPool,
    index_rows,
    read_blob,
    run_cli,
    run_cli_split,
    split_multipart,
    store,
    store_ok,
    wait_until,
)
from .orthanc import orthanc, orthanc_rest, orthanc_store

pytestmark = pytest.mark.e2e

ROUNDS = 2  # kept small: the job rounds below share the file's time budget
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


# -- kills during jobs ---------------------------------------------------------------

JOB_STUDIES, JOB_SERIES_SIZE = 10, 6  # the pull: 20 series of 6 instances
PUSH_SERIES, PUSH_SIZE = 24, 6  # stored here, then pushed (C-STORE is quick: more than the pull)
DEID_INSTANCES = 150
SECRET_ENV = {"DICOMHUB_DEID_SECRET": DEID_SECRET}


def migration_job(srv: DicomhubServer, job_id: int) -> dict[str, Any]:
    r = httpx.get(f"{srv.base_url}/migrations/{job_id}", timeout=30)
    assert r.status_code == 200, r.text
    job: dict[str, Any] = r.json()
    return job


def deid_run(srv: DicomhubServer, run_id: int, token: str) -> dict[str, Any]:
    r = httpx.get(
        f"{srv.base_url}/deid/jobs/{run_id}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert r.status_code == 200, r.text
    run: dict[str, Any] = r.json()
    return run


def kill_mid_job(
    srv: DicomhubServer,
    rng: random.Random,
    progress: Callable[[], tuple[int, int, bool]],
    what: str,
    total: int,
) -> tuple[float, int]:
    """kill -9 the server at a random point of the job: once ``progress`` shows work
    planned (the job is under way) and a random share of the ``total`` work done, below
    two thirds, so that the job has not ended; (seconds since under way, work done).

    ``progress``: (work planned or started, work done, job ended). A point chosen by
    time alone missed the job when the machine was quick: the point is work done."""
    wait_until(lambda: progress()[0] > 0 or None, timeout=120, interval=0.02, what=f"{what} under way")
    started = time.monotonic()
    # The random point of the kill (the test's input, not an assertion).
    target = rng.randint(0, max(0, total * 2 // 3))
    wait_until(
        lambda: (lambda p: p[1] >= target or p[2] or None)(progress()),
        timeout=120, interval=0.01, what=f"{what}: {target} of {total} done",
    )  # fmt: skip
    _, done, finished = progress()
    srv.kill9()
    assert not finished, f"the {what} ended before the kill ({done} of {total} done)"
    return time.monotonic() - started, done


def index_instances(srv: DicomhubServer) -> dict[str, bytes]:
    """SOP Instance UID -> PixelData of every indexed instance, read from the index and
    the blobs; no UID may be indexed twice."""
    rows = index_rows(srv.data_dir, "SELECT sop_instance_uid, blob_key FROM instance")
    uids = [str(sop) for sop, _ in rows]
    assert len(uids) == len(set(uids)), "an instance is indexed twice"
    out = {}
    for sop, key in rows:
        data = read_blob(srv.data_dir, str(key))
        assert data is not None, f"the blob of {sop} is missing"
        out[str(sop)] = bytes(pydicom.dcmread(io.BytesIO(data)).PixelData)
    return out


def wait_job(srv: DicomhubServer, job_id: int) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job = migration_job(srv, job_id)
        return job if job["state"] in ("done", "failed", "stopped") else None

    return wait_until(ended, timeout=180, interval=0.3, what=f"migration job {job_id} ended")  # type: ignore[return-value]


def only_orphans(srv: DicomhubServer) -> int:
    """The check after a kill: no row without its blob, only orphans; their count."""
    problems = check_report(srv)
    assert all(p["kind"] == "orphan" for p in problems), problems
    return len(problems)


def test_kill9_during_migration_and_deidentification_jobs_resumes_them_without_loss_or_duplicates(
    servers: ServerPool, tmp_path: Path
) -> None:
    seed = int(os.environ.get("DICOMHUB_CRASH_SEED", str(int(time.time()))))
    print(f"crash consistency (jobs) seed: {seed} (DICOMHUB_CRASH_SEED={seed} replays it)")
    rng = random.Random(seed)
    corpus = tmp_path / "corpus"
    pulled: dict[str, bytes] = {}
    for s, modality, i, ds in datagen.study_corpus(
        JOB_STUDIES, 4, JOB_SERIES_SIZE, prefix="Crash", year=2023
    ):
        datagen.write_dataset(corpus / f"s{s}" / f"{modality}{i}.dcm", ds)
        pulled[str(ds.SOPInstanceUID)] = bytes(ds.PixelData)
    srv = servers.start(env=SECRET_ENV, args=["--workers", "1"])
    orphans = 0
    with orthanc(tmp_path / "orthanc") as peer:
        orthanc_store(peer, corpus)
        rc, out = run_cli(
            "remote", "add", "src", "--dicomweb", peer.dicomweb_url, "--data-dir", str(srv.data_dir)
        )
        assert rc == 0, out
        rc, out = run_cli(
            "remote",
            "add",
            "dst",
            "--dimse",
            f"{peer.aet}@{HOST}:{peer.port}",
            "--data-dir",
            str(srv.data_dir),
        )
        assert rc == 0, out

        # 1. A pull migration, killed in the middle.
        r = httpx.post(f"{srv.base_url}/migrations", json={"remote": "src", "parallel": 1}, timeout=30)
        assert r.status_code == 201, r.text
        pull_id = r.json()["id"]

        def pull_progress() -> tuple[int, int, bool]:
            job = migration_job(srv, pull_id)
            # The series to move are planned once the inventory is done: the transfer starts.
            progress = job["progress"]
            return int(progress["series"]), int(progress["instances_done"]), job["state"] == "done"

        delay, at_kill = kill_mid_job(srv, rng, pull_progress, "pull migration", len(pulled))
        srv.start()
        restarted = time.monotonic()
        job = wait_job(srv, pull_id)
        resumed = time.monotonic() - restarted
        assert job["state"] == "done" and job["reconcile_clean"] is True, job
        assert job["progress"]["series_done"] == job["progress"]["series"] == 2 * JOB_STUDIES, job
        held = index_instances(srv)
        assert held == pulled, f"seed {seed}: the pull lost, added or changed instances"
        orphans += only_orphans(srv)
        print(
            f"pull: kill {delay:.2f} s after its series were planned, {at_kill} instances done at the kill, "
            f"done {resumed:.1f} s after the restart"
        )

        # 2. A push migration of what was stored here since, killed in the middle.
        pushed: dict[str, bytes] = {}
        study = datagen.uid()
        for n in range(PUSH_SERIES):
            series = datagen.write_ct_series(
                tmp_path / "push" / f"s{n}", PUSH_SIZE, study_uid=study, rows=16, cols=16
            )
            pushed.update((str(d.SOPInstanceUID), datagen.pixel_bytes(d)) for d in series)
        store_ok(srv, tmp_path / "push", expect=len(pushed))
        r = httpx.post(f"{srv.base_url}/migrations", json={"target": "dst", "parallel": 1}, timeout=30)
        assert r.status_code == 201, r.text
        push_id = r.json()["id"]

        def push_progress() -> tuple[int, int, bool]:
            job = migration_job(srv, push_id)
            # The series to move are planned once the inventory is done: the transfer starts.
            progress = job["progress"]
            return int(progress["series"]), int(progress["instances_done"]), job["state"] == "done"

        delay, at_kill = kill_mid_job(srv, rng, push_progress, "push migration", len(pushed))
        srv.start()
        restarted = time.monotonic()
        job = wait_job(srv, push_id)
        resumed = time.monotonic() - restarted
        assert job["state"] == "done" and job["reconcile_clean"] is True, job
        on_peer = orthanc_rest(peer, "GET", "/instances")
        assert len(on_peer) == len(pulled) + len(pushed), "the target lacks or doubles instances"
        for sop, pixels in pushed.items():
            (found,) = orthanc_rest(peer, "POST", "/tools/lookup", content=sop.encode())
            r = httpx.get(f"http://{HOST}:{peer.http_port}/instances/{found['ID']}/file", timeout=30)
            assert bytes(pydicom.dcmread(io.BytesIO(r.content)).PixelData) == pixels, sop
        assert index_instances(srv).keys() == pulled.keys() | pushed.keys()
        orphans += only_orphans(srv)
        print(
            f"push: kill {delay:.2f} s after its series were planned, {at_kill} instances done at the kill, "
            f"done {resumed:.1f} s after the restart"
        )

    # 3. A de-identification run of one study, killed in the middle.
    source_study, series_uid = datagen.uid(), datagen.uid()
    sources: dict[str, bytes] = {}
    for n in range(DEID_INSTANCES):
        ds = datagen.write_instance(
            tmp_path / "deid" / f"i{n:04d}.dcm", study_uid=source_study, series_uid=series_uid,
            instance_number=n + 1, patient_id="CRASH-DEID-1", rows=8, cols=8,
        )  # fmt: skip
        sources[str(ds.SOPInstanceUID)] = datagen.pixel_bytes(ds)
    store_ok(srv, tmp_path / "deid", expect=DEID_INSTANCES)
    rc, out = run_cli("token", "create", "crashbot", "--data-dir", str(srv.data_dir), env=SECRET_ENV)
    assert rc == 0, out
    token = out.strip().splitlines()[-1]
    rc, out = run_cli(
        "deid-grant", "crashbot", "--project", "CRASH", "--role", "deidentifier",
        "--data-dir", str(srv.data_dir), env=SECRET_ENV,
    )  # fmt: skip
    assert rc == 0, out
    r = httpx.post(
        f"{srv.base_url}/deid/jobs",
        json={"project": "CRASH", "study": source_study, "reason": "crash test"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]
    before: dict[str, str] = {}

    def deid_progress() -> tuple[int, int, bool]:
        run = deid_run(srv, run_id, token)
        before.clear()
        before.update(
            (i["source_sop_instance_uid"], i["target_sop_instance_uid"])
            for i in run["items"]
            if i["status"] in ("stored", "already-present")
        )
        return int(run["stored"]), int(run["stored"]), run["status"] == "done"

    delay, at_kill = kill_mid_job(srv, rng, deid_progress, "de-identification run", DEID_INSTANCES)
    srv.start()
    restarted = time.monotonic()
    run = wait_until(
        lambda: (lambda x: x if x["status"] in ("done", "failed") else None)(deid_run(srv, run_id, token)),
        timeout=180, interval=0.3, what="the de-identification run ended",
    )  # fmt: skip
    resumed = time.monotonic() - restarted
    assert run["status"] == "done" and run["failed"] == 0, run  # type: ignore[index]
    assert run["stored"] + run["already_present"] == DEID_INSTANCES, run  # type: ignore[index]
    items = {i["source_sop_instance_uid"]: i for i in run["items"]}  # type: ignore[index]
    assert items.keys() == sources.keys() and all(
        i["status"] in ("stored", "already-present") for i in items.values()
    )
    after = {s: i["target_sop_instance_uid"] for s, i in items.items()}
    assert all(after[s] == t for s, t in before.items()), "a UID reported before the kill changed after it"
    mapping = dict(
        index_rows(
            srv.data_dir,
            "SELECT m.original, m.replacement FROM deid_mapping m JOIN deid_project p "
            "ON m.project_pk = p.pk WHERE p.name = 'CRASH' AND m.kind = 'uid'",
        )
    )
    assert all(mapping[s] == t for s, t in after.items()), "the project's mapping disagrees with the run"
    target = retrieve_study(srv, str(run["target_study_uid"]))  # type: ignore[index]
    assert len(target) == DEID_INSTANCES and set(target) == set(after.values()), "not each source once"
    for source, pixels in sources.items():
        assert target[after[source]] == pixels, f"the de-identified copy of {source} has other pixel data"
    orphans += only_orphans(srv)
    print(
        f"deid: kill {delay:.2f} s after it started storing, {at_kill} instances stored at the kill, "
        f"done {resumed:.1f} s after the restart"
    )
    # The orphans the kills left (blobs whose rows never committed) go with repair.
    srv.stop()
    check_report(srv, "--repair", "--grace", "0")
    assert check_report(srv) == [], "problems left after dicomhub check --repair"
    figure("job rounds killed and resumed (seed)", f"3: pull, push, de-identification ({seed})")
    figure("orphan blobs found after the job kills (repaired)", orphans)
