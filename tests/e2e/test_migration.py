"""Migration and reconciliation against a real Orthanc (DIMSE and DICOMweb).

One Orthanc (with its DICOMweb plugin and ``LimitFindResults`` low enough that
a single C-FIND cannot list the archive) is loaded once for the module with
300 generated instances: 30 studies of 10 patients over 30 study dates, each
with a CT series and an MR series of 5 instances. Then:

* a migration queued over HTTP and run by the server's background worker,
  C-MOVE to dicomhub's own AE (Orthanc knows DICOMHUB), ends with a clean
  reconcile and identical pixel data;
* a migration from a peer that refuses C-MOVE (Orthanc does not know the AE
  title asked for) falls back to C-GET, and is killed in the middle and
  resumed: no duplicate, no gap;
* a migration over DICOMweb (QIDO-RS, WADO-RS);
* planted differences (an instance missing in dicomhub, a changed PatientID,
  an extra series) are each reported exactly, as JSON and CSV.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from datagen import make_dataset, study_corpus, uid, write_dataset
from pydicom import dcmread
from sqlalchemy.exc import SQLAlchemyError

from tests.backends import backend_env

from .helpers import (
    HOST,
    DicomhubServer,
    ServerPool,
    clean_env,
    dicomhub_command,
    index_rows,
    read_blob,
    run_cli,
)
from .orthanc import OrthancServer, orthanc, orthanc_store

pytestmark = pytest.mark.e2e

STUDIES, PATIENTS, SERIES_SIZE = 30, 10, 5
FIND_LIMIT = 8  # Orthanc's LimitFindResults: 30 studies need several date windows


class Corpus:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, Path] = {}  # SOP Instance UID -> file
        self.studies: dict[str, list[str]] = {}  # Study Instance UID -> SOP Instance UIDs
        self.pixels: dict[str, bytes] = {}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    c = Corpus(tmp_path_factory.mktemp("corpus"))
    for s, modality, i, ds in study_corpus(STUDIES, PATIENTS, SERIES_SIZE, prefix="Pat", year=2021):
        path = c.root / f"s{s:02d}" / f"{modality}{i}.dcm"
        path.parent.mkdir(exist_ok=True)
        write_dataset(path, ds)
        sop = str(ds.SOPInstanceUID)
        c.files[sop] = path
        c.studies.setdefault(str(ds.StudyInstanceUID), []).append(sop)
        c.pixels[sop] = bytes(ds.PixelData)
    return c


@pytest.fixture(scope="module")
def hub_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory.mktemp("hubs"))
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def hub(hub_pool: ServerPool) -> DicomhubServer:
    """Created (ports known, so Orthanc can know it) but started by the test that needs it."""
    return hub_pool.create("hub", aet="DICOMHUB")


@pytest.fixture(scope="module")
def peer(
    tmp_path_factory: pytest.TempPathFactory, corpus: Corpus, hub: DicomhubServer
) -> Iterator[OrthancServer]:
    with orthanc(
        tmp_path_factory.mktemp("orthanc"),
        modalities={"DICOMHUB": (HOST, hub.dimse_port)},
        config={"LimitFindResults": FIND_LIMIT, "LimitFindInstances": 0},
    ) as server:
        orthanc_store(server, corpus.root)
        yield server


def cli(data_dir: Path, *args: str, timeout: float = 240.0) -> tuple[int, str]:
    return run_cli(*args, "--data-dir", str(data_dir), timeout=timeout)


def add_dimse_remote(data_dir: Path, peer: OrthancServer, *extra: str) -> None:
    rc, out = cli(
        data_dir, "remote", "add", "orthanc", "--dimse", f"{peer.aet}@{HOST}:{peer.port}",
        "--find-limit", str(FIND_LIMIT), *extra,
    )  # fmt: skip
    assert rc == 0, out


def reconcile_json(data_dir: Path, name: str = "orthanc") -> tuple[int, dict[str, object]]:
    rc, out = cli(data_dir, "reconcile", name, "--json")
    assert rc in (0, 1), out
    return rc, json.loads(out)


def stored_instances(data_dir: Path) -> list[tuple[str, str]]:
    """(SOP Instance UID, blob key) of every indexed instance, read straight from the index."""
    rows = index_rows(data_dir, "SELECT sop_instance_uid, blob_key FROM instance")
    return [(str(sop), str(key)) for sop, key in rows]


def assert_identical_pixels(data_dir: Path, corpus: Corpus) -> None:
    rows = stored_instances(data_dir)
    assert sorted(sop for sop, _ in rows) == sorted(corpus.files)
    for sop, key in rows:
        data = read_blob(data_dir, key)
        assert data is not None, f"blob of {sop} missing"
        ds = dcmread(io.BytesIO(data))
        assert bytes(ds.PixelData) == corpus.pixels[sop], f"pixel data of {sop} differs"


def test_http_job_moves_everything_with_a_clean_reconcile(
    hub: DicomhubServer, peer: OrthancServer, corpus: Corpus
) -> None:
    hub.start()
    add_dimse_remote(hub.data_dir, peer, "--retrieve", "move")
    rc, out = cli(hub.data_dir, "inventory", "orthanc")
    assert rc == 0, out
    assert f"{STUDIES} studies, {2 * STUDIES} series, {len(corpus.files)} instances" in out
    windows = int(out.split(" date windows")[0].rsplit("found in ", 1)[1])
    assert windows > 1, f"LimitFindResults {FIND_LIMIT} must force several windows: {out}"

    r = httpx.post(f"{hub.base_url}/migrations", json={"remote": "orthanc", "parallel": 3}, timeout=30)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    r = httpx.post(f"{hub.base_url}/migrations", json={"remote": "orthanc"}, timeout=30)
    assert r.status_code == 409, "a second job from the same remote while one is unfinished"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = httpx.get(f"{hub.base_url}/migrations/{job_id}", timeout=30).json()
        if job["state"] in ("done", "failed", "stopped"):
            break
        time.sleep(0.5)
    assert job["state"] == "done", job
    assert job["reconcile_clean"] is True
    assert job["progress"]["series_done"] == job["progress"]["series"] == 2 * STUDIES
    assert job["owner"].startswith("server:")
    assert [j["id"] for j in httpx.get(f"{hub.base_url}/migrations", timeout=30).json()] == [job_id]
    assert httpx.get(f"{hub.base_url}/migrations/999", timeout=30).status_code == 404

    rc, report = reconcile_json(hub.data_dir)
    assert rc == 0 and report["clean"] is True, report
    assert report["counts"]["both"] == STUDIES  # type: ignore[index]
    assert_identical_pixels(hub.data_dir, corpus)


def _migrate_popen(data_dir: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*dicomhub_command(), "migrate", "orthanc", "--data-dir", str(data_dir), "--quiet", *args],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=clean_env(backend_env(data_dir)),
        start_new_session=True,
    )


def test_refused_cmove_falls_back_to_cget_and_a_killed_migration_resumes(
    tmp_path: Path, peer: OrthancServer, corpus: Corpus
) -> None:
    data_dir = tmp_path / "data"
    add_dimse_remote(data_dir, peer)  # retrieve auto: C-MOVE first
    log = tmp_path / "migrate.log"
    # Orthanc does not know AE title NOTKNOWN: it refuses the C-MOVE (0xA801).
    proc = _migrate_popen(data_dir, log, "--aet", "NOTKNOWN", "--parallel", "1")
    try:
        deadline = time.monotonic() + 120
        count = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                count = len(stored_instances(data_dir))
            except SQLAlchemyError:
                count = 0  # the index is busy being written; look again
            if count >= 40:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"migrate ended before it could be killed:\n{log.read_text()}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    at_kill = len(stored_instances(data_dir))
    assert 0 < at_kill < len(corpus.files), at_kill

    rc, out = cli(data_dir, "migrate", "orthanc", "--aet", "NOTKNOWN", "--quiet")
    assert rc == 0, out + log.read_text()
    assert "refuses C-MOVE to NOTKNOWN" in log.read_text(), log.read_text()
    assert "resuming migration job" in out, out
    rows = stored_instances(data_dir)
    assert len(rows) == len({sop for sop, _ in rows}) == len(corpus.files), "duplicates or gaps"
    rc, out = cli(data_dir, "conflicts", "--json")
    assert rc == 0 and json.loads(out) == [], out
    rc, report = reconcile_json(data_dir)
    assert rc == 0 and report["clean"] is True, report
    assert_identical_pixels(data_dir, corpus)


def test_dicomweb_migration(tmp_path: Path, peer: OrthancServer, corpus: Corpus) -> None:
    data_dir = tmp_path / "data"
    rc, out = cli(
        data_dir, "remote", "add", "web", "--dicomweb", peer.dicomweb_url, "--find-limit", str(FIND_LIMIT)
    )
    assert rc == 0, out
    rc, out = cli(data_dir, "migrate", "web", "--parallel", "2", "--quiet")
    assert rc == 0, out
    assert f"{2 * STUDIES}/{2 * STUDIES} series" in out and "final reconcile clean" in out, out
    rc, report = reconcile_json(data_dir, "web")
    assert rc == 0 and report["clean"] is True, report
    assert_identical_pixels(data_dir, corpus)


def test_planted_differences_are_each_reported_exactly(
    tmp_path: Path, peer: OrthancServer, corpus: Corpus
) -> None:
    data_dir = tmp_path / "data"
    load = tmp_path / "load"
    study_uids = sorted(corpus.studies)
    gone_study, renamed_study, extended_study = study_uids[0], study_uids[1], study_uids[2]
    gone_sop = sorted(corpus.studies[gone_study])[0]
    for sop, path in corpus.files.items():
        if sop == gone_sop:
            continue  # an instance missing in dicomhub
        ds = dcmread(path)
        if str(ds.StudyInstanceUID) == renamed_study:
            ds.PatientID = "CHANGED"
        write_dataset(load / f"{sop}.dcm", ds)
    template = dcmread(corpus.files[corpus.studies[extended_study][0]])
    extra_series = uid()
    extra_sops = []
    for i in range(2):  # a series only dicomhub has
        ds = make_dataset(
            modality="CT", patient_id=str(template.PatientID), patient_name=str(template.PatientName),
            study_uid=extended_study, study_date=str(template.StudyDate),
            accession=str(template.AccessionNumber), series_uid=extra_series, series_number=9,
            instance_number=i + 1,
        )  # fmt: skip
        extra_sops.append(str(ds.SOPInstanceUID))
        write_dataset(load / f"extra{i}.dcm", ds)
    rc, out = cli(data_dir, "import", str(load), "--quiet")
    assert rc == 0, out
    add_dimse_remote(data_dir, peer)
    rc, out = cli(data_dir, "inventory", "orthanc")
    assert rc == 0, out

    rc, report = reconcile_json(data_dir)
    assert rc == 1 and report["clean"] is False
    problems = {s["study_instance_uid"]: s for s in report["studies"]}  # type: ignore[attr-defined]
    assert set(problems) == {gone_study, renamed_study, extended_study}, problems

    gone = problems[gone_study]
    assert gone["differences"] == ["instance-count-differs"]
    assert gone["instances_only_in_source"] == [gone_sop] and gone["instances_only_in_target"] == []
    assert (gone["source_instances"], gone["target_instances"]) == (10, 9)

    renamed = problems[renamed_study]
    assert renamed["differences"] == ["attributes-differ"]
    assert list(renamed["attributes"]) == ["PatientID"]
    assert renamed["attributes"]["PatientID"]["target"] == "CHANGED"

    extended = problems[extended_study]
    assert extended["differences"] == ["series-count-differs", "instance-count-differs"]
    assert extended["series_only_in_target"] == [extra_series] and extended["series_only_in_source"] == []
    assert extended["instances_only_in_target"] == sorted(extra_sops)
    assert (extended["source_series"], extended["target_series"]) == (2, 3)

    rc, out = cli(data_dir, "reconcile", "orthanc", "--csv")
    assert rc == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["study_instance_uid"]: r["status"] for r in rows} == {
        gone_study: "instance-count-differs",
        renamed_study: "attributes-differ",
        extended_study: "series-count-differs, instance-count-differs",
    }
    rc, out = cli(data_dir, "reconcile", "orthanc")
    assert rc == 1 and "3 studies differ" in out, out
