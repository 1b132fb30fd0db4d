"""Push migrations (dicomhub -> a real Orthanc over C-STORE and STOW-RS) and
migrations with de-identification on the way, each ending with a clean reconcile.

One corpus of 48 generated instances (8 studies of 4 patients, a CT and an MR
series of 3 instances each) is imported once into a dicomhub data dir; one CT
series is stored RLE Lossless. The *target* Orthanc accepts only the two
uncompressed syntaxes over DIMSE, so the RLE objects must be sent transcoded
(and the job says so); over STOW-RS they go as stored. The *source* Orthanc
holds the corpus for the de-identifying pull.
"""

from __future__ import annotations

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
from datagen import study_corpus, write_dataset
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless

from tests.backends import backend_env
from tests.deid_server_data import SECRET

from .helpers import HOST, ServerPool, clean_env, dicomhub_command, index_rows, read_blob, run_cli
from .orthanc import OrthancServer, orthanc, orthanc_rest

pytestmark = pytest.mark.e2e

STUDIES, PATIENTS, SERIES_SIZE = 8, 4, 3
SECRET_ENV = {"DICOMHUB_DEID_SECRET": SECRET}
UNCOMPRESSED = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]


class Corpus:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.datasets: dict[str, Dataset] = {}  # SOP Instance UID -> as written
        self.rle: set[str] = set()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    c = Corpus(tmp_path_factory.mktemp("push-corpus"))
    for s, modality, i, ds in study_corpus(STUDIES, PATIENTS, SERIES_SIZE, prefix="Push", year=2022):
        if s == 0 and modality == "CT":
            ds.compress(RLELossless)
            c.rle.add(str(ds.SOPInstanceUID))
        write_dataset(c.root / f"s{s}" / f"{modality}{i}.dcm", ds)
        c.datasets[str(ds.SOPInstanceUID)] = ds
    return c


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory: pytest.TempPathFactory, corpus: Corpus) -> Path:
    """A dicomhub data dir holding the corpus (no server: the CLI works on the data dir)."""
    data_dir = tmp_path_factory.mktemp("push-hub") / "data"
    rc, out = cli(data_dir, "import", str(corpus.root), "--quiet")
    assert rc == 0, out
    return data_dir


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with orthanc(
        tmp_path_factory.mktemp("orthanc-target"), config={"AcceptedTransferSyntaxes": UNCOMPRESSED}
    ) as server:
        yield server


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, corpus: Corpus) -> Iterator[OrthancServer]:
    with orthanc(tmp_path_factory.mktemp("orthanc-source"), aet="SOURCE") as server:
        # Over REST: storescu would try to convert the RLE objects to what it proposes.
        for path in sorted(corpus.root.rglob("*.dcm")):
            orthanc_rest(server, "POST", "/instances", content=path.read_bytes())
        yield server


def cli(data_dir: Path, *args: str, timeout: float = 240.0, secret: bool = False) -> tuple[int, str]:
    return run_cli(*args, "--data-dir", str(data_dir), timeout=timeout, env=SECRET_ENV if secret else None)


def emptied(server: OrthancServer) -> OrthancServer:
    for patient in orthanc_rest(server, "GET", "/patients"):
        orthanc_rest(server, "DELETE", f"/patients/{patient}")
    assert orthanc_rest(server, "GET", "/instances") == []
    return server


def held(server: OrthancServer) -> dict[str, Dataset]:
    """Every object Orthanc holds, fetched back whole, by SOP Instance UID."""
    out = {}
    for instance in orthanc_rest(server, "GET", "/instances"):
        r = httpx.get(f"http://{HOST}:{server.http_port}/instances/{instance}/file", timeout=60)
        r.raise_for_status()
        ds = dcmread(io.BytesIO(r.content))
        out[str(ds.SOPInstanceUID)] = ds
    return out


def add_remote(data_dir: Path, name: str, server: OrthancServer, web: bool = False) -> None:
    where = ["--dicomweb", server.dicomweb_url] if web else ["--dimse", f"{server.aet}@{HOST}:{server.port}"]
    rc, out = cli(data_dir, "remote", "add", name, *where)
    assert rc == 0, out


def assert_same_pixels(got: dict[str, Dataset], corpus: Corpus) -> None:
    assert sorted(got) == sorted(corpus.datasets), "gaps or extra objects on the target"
    for sop, ds in got.items():
        assert_same_pixel_data(ds, corpus.datasets[sop])


def assert_same_pixel_data(ds: Dataset, mine: Dataset) -> None:
    """Byte for byte in the same transfer syntax; else the same values once decoded."""
    if ds.file_meta.TransferSyntaxUID == mine.file_meta.TransferSyntaxUID:
        assert bytes(ds.PixelData) == bytes(mine.PixelData), f"pixel data of {mine.SOPInstanceUID} differs"
    else:
        assert (ds.pixel_array == mine.pixel_array).all(), f"pixel values of {mine.SOPInstanceUID} differ"


def test_push_over_cstore_transcodes_what_the_peer_refuses(
    hub_dir: Path, target: OrthancServer, corpus: Corpus
) -> None:
    emptied(target)
    add_remote(hub_dir, "pacs", target)
    rc, out = cli(hub_dir, "migrate", "--to", "pacs", "--parallel", "2", "--quiet")
    assert rc == 0, out
    assert f"{2 * STUDIES}/{2 * STUDIES} series" in out and "final reconcile clean" in out, out
    assert f"{len(corpus.rle)} objects sent in another transfer syntax than stored" in out, out
    got = held(target)
    assert_same_pixels(got, corpus)
    for sop in corpus.rle:
        assert got[sop].file_meta.TransferSyntaxUID in UNCOMPRESSED
    rc, report = reconcile_json(hub_dir, "pacs", "--push")
    assert rc == 0 and report["clean"] is True and report["source"] == "dicomhub", report
    # Nothing missing: a second push sends nothing and is clean again.
    rc, out = cli(hub_dir, "migrate", "--to", "pacs", "--quiet")
    assert rc == 0 and "0/0 series" in out and "final reconcile clean" in out, out


def reconcile_json(data_dir: Path, name: str, *extra: str) -> tuple[int, dict[str, object]]:
    rc, out = cli(data_dir, "reconcile", name, "--json", *extra)
    assert rc in (0, 1), out
    return rc, json.loads(out)


def test_push_over_stow_rs_sends_objects_as_stored(
    hub_dir: Path, target: OrthancServer, corpus: Corpus
) -> None:
    emptied(target)
    add_remote(hub_dir, "web", target, web=True)
    rc, out = cli(hub_dir, "migrate", "--to", "web", "--quiet")
    assert rc == 0, out
    assert "final reconcile clean" in out and "another transfer syntax" not in out, out
    got = held(target)
    assert_same_pixels(got, corpus)
    for sop in corpus.rle:
        assert got[sop].file_meta.TransferSyntaxUID == RLELossless


def test_killed_push_resumes_without_duplicates_or_gaps(
    tmp_path: Path, hub_dir: Path, target: OrthancServer, corpus: Corpus
) -> None:
    emptied(target)
    add_remote(hub_dir, "killed", target)
    log = tmp_path / "migrate.log"
    proc = subprocess.Popen(
        [*dicomhub_command(), "migrate", "--to", "killed", "--data-dir", str(hub_dir), "--quiet",
         "--parallel", "1"],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=clean_env(backend_env(hub_dir)),
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        count = 0
        while time.monotonic() < deadline and proc.poll() is None:
            count = int(orthanc_rest(target, "GET", "/statistics")["CountInstances"])
            # Kill at the first object the target holds: the push checks what arrived study by
            # study on its storage association, fast enough to finish the corpus within a
            # few polls of a loaded machine.
            if count >= 1:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"migrate ended before it could be killed:\n{log.read_text()}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    at_kill = int(orthanc_rest(target, "GET", "/statistics")["CountInstances"])
    assert 0 < at_kill < len(corpus.datasets), at_kill

    rc, out = cli(hub_dir, "migrate", "--to", "killed", "--quiet")
    assert rc == 0, out + log.read_text()
    assert "resuming migration job" in out and "final reconcile clean" in out, out
    assert int(orthanc_rest(target, "GET", "/statistics")["CountInstances"]) == len(corpus.datasets)
    assert_same_pixels(held(target), corpus)


def offline_deid(tmp_path: Path, corpus: Corpus, project: str, *options: str) -> dict[str, Dataset]:
    """``dicomhub deid`` of the corpus with the same secret: what the migration must give."""
    out_dir = tmp_path / "offline"
    rc, out = run_cli(
        "deid", str(corpus.root), "--out", str(out_dir), "--project", project,
        *(arg for option in options for arg in ("--option", option)),
        env=SECRET_ENV,
    )  # fmt: skip
    assert rc == 0, out
    found = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, out_dir.rglob("*.dcm"))}
    assert len(found) == len(corpus.datasets)
    return found


def test_deidentifying_pull_stores_the_projects_deterministic_uids(
    tmp_path: Path, source: OrthancServer, corpus: Corpus
) -> None:
    data_dir = tmp_path / "data"
    add_remote(data_dir, "src", source)
    rc, out = cli(data_dir, "migrate", "src", "--deid", "TRIAL", "--reason", "research copy", "--quiet",
                  secret=True)  # fmt: skip
    assert rc == 0, out
    assert "final reconcile clean" in out and "de-identified for project TRIAL" in out, out
    expected = offline_deid(tmp_path, corpus, "TRIAL")
    rows = index_rows(data_dir, "SELECT sop_instance_uid, blob_key FROM instance")
    assert sorted(str(sop) for sop, _ in rows) == sorted(expected), "not the offline tool's UIDs"
    for sop, key in rows:
        data = read_blob(data_dir, str(key))
        assert data is not None
        ds, offline = dcmread(io.BytesIO(data)), expected[str(sop)]
        assert ds.PatientIdentityRemoved == "YES"
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "PatientID", "PatientName"):
            assert ds.get(keyword) == offline.get(keyword), keyword
        assert_same_pixel_data(ds, offline)
    mapping = dict(
        index_rows(
            data_dir,
            "SELECT m.original, m.replacement FROM deid_mapping m JOIN deid_project p "
            "ON m.project_pk = p.pk WHERE p.name = 'TRIAL' AND m.kind = 'uid'",
        )
    )
    for original, ds in corpus.datasets.items():
        assert mapping[original] in expected, f"{original} not mapped to its stored replacement"
        assert mapping[ds.StudyInstanceUID] == expected[mapping[original]].StudyInstanceUID
    runs = index_rows(data_dir, "SELECT kind, actor, reason, status, stored FROM deid_run")
    assert [(k, r, s, n) for k, _a, r, s, n in runs] == [
        ("migration", "research copy", "done", len(corpus.datasets))
    ], runs
    assert runs[0][1], "the run records who"

    rc, out = cli(data_dir, "migrate", "src", "--deid", "TRIAL", "--reason", "again", "--quiet", secret=True)
    assert rc == 0 and "0/0 series" in out and "final reconcile clean" in out, out
    assert len(index_rows(data_dir, "SELECT sop_instance_uid FROM instance")) == len(corpus.datasets)


def test_deidentifying_push_leaves_only_deidentified_objects_on_the_target(
    tmp_path: Path, hub_dir: Path, target: OrthancServer, corpus: Corpus
) -> None:
    emptied(target)
    add_remote(hub_dir, "research", target, web=True)
    rc, out = cli(hub_dir, "migrate", "--to", "research", "--deid", "PUSHED", "--reason", "share",
                  "--deid-option", "retain-long-modified-dates", "--quiet", secret=True)  # fmt: skip
    assert rc == 0, out
    assert "final reconcile clean" in out, out
    got = held(target)
    expected = offline_deid(tmp_path, corpus, "PUSHED", "retain-long-modified-dates")
    assert sorted(got) == sorted(expected)
    identifying = {str(v) for ds in corpus.datasets.values() for v in (ds.PatientID, ds.PatientName)}
    originals = set(corpus.datasets) | {str(ds.StudyInstanceUID) for ds in corpus.datasets.values()}
    for sop, ds in got.items():
        assert ds.PatientIdentityRemoved == "YES"
        assert str(ds.PatientID) not in identifying and str(ds.PatientName) not in identifying
        assert sop not in originals and str(ds.StudyInstanceUID) not in originals
        assert ds.StudyDate == expected[sop].StudyDate != ""  # shifted, not removed


def test_push_job_queued_over_http_is_run_by_the_server(
    tmp_path: Path, hub_dir: Path, target: OrthancServer, corpus: Corpus
) -> None:
    emptied(target)
    add_remote(hub_dir, "queued", target)
    pool = ServerPool(tmp_path)
    try:
        hub = pool.start("hub", data_dir=hub_dir)
        r = httpx.post(f"{hub.base_url}/migrations", json={"remote": "x", "target": "queued"}, timeout=30)
        assert r.status_code == 400, r.text
        r = httpx.post(f"{hub.base_url}/migrations", json={"target": "queued", "parallel": 2}, timeout=30)
        assert r.status_code == 201, r.text
        job = r.json()
        assert job["direction"] == "push" and job["transform"] is None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and job["state"] not in ("done", "failed", "stopped"):
            time.sleep(0.5)
            job = httpx.get(f"{hub.base_url}/migrations/{job['id']}", timeout=30).json()
        assert job["state"] == "done" and job["reconcile_clean"] is True, job
        assert job["owner"].startswith("server:")
        assert job["notes"] and "another transfer syntax" in job["notes"], job
    finally:
        pool.close()
    assert_same_pixels(held(target), corpus)
