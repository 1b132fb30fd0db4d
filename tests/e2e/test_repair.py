"""``dicomhub repair`` and ``POST /admin/repair`` against a real Orthanc (C-GET and WADO-RS).

One dicomhub server and one Orthanc for the module. A study of four
instances is stored in both by DCMTK's storescu, except that Orthanc holds
another object under the third SOP Instance UID (the same UIDs, another
Image Comments). Then blobs are damaged behind dicomhub's back (on the file
store a truncated file and a removed one; on postgres-s3 the S3 objects):

* ``dicomhub check`` reports them, ``repair --dry-run`` lists them with the
  peer to ask and changes nothing;
* ``repair --from`` the DIMSE peer (C-GET) restores the truncated and the
  removed object byte for byte (the blob dicomhub wrote at ingest, and its
  data set digest), and refuses Orthanc's other object: exit 1, a reason, the
  damaged blob left as it was;
* ``POST /admin/repair`` from the DICOMweb peer (WADO-RS) restores a blob
  damaged since, refuses the other object again, and nothing is indexed twice.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from datagen import make_dataset, uid, write_dataset
from pydicom.dataset import Dataset

from tests.backends import backend_env

from .helpers import (
    HOST,
    DicomhubServer,
    ServerPool,
    index_rows,
    read_blob,
    run_cli,
    run_cli_split,
    run_dcmtk,
    split_multipart,
    write_blob,
)
from .orthanc import OrthancServer, orthanc, orthanc_store

pytestmark = pytest.mark.e2e

N = 4
OTHER = 2  # the instance Orthanc holds another object for


class Study:
    def __init__(self, root: Path) -> None:
        study, series = uid(), uid()
        self.datasets: list[Dataset] = [
            make_dataset(study_uid=study, series_uid=series, instance_number=n + 1, seed=n) for n in range(N)
        ]
        self.study_uid = study
        self.sops = [str(ds.SOPInstanceUID) for ds in self.datasets]
        self.hub_dir, self.peer_dir = root / "hub", root / "peer"
        for folder in (self.hub_dir, self.peer_dir):
            folder.mkdir()
        for n, ds in enumerate(self.datasets):
            write_dataset(self.hub_dir / f"{n}.dcm", ds)
            if n == OTHER:
                ds = copy.deepcopy(ds)
                ds.ImageComments = "another object under the same UID"
            write_dataset(self.peer_dir / f"{n}.dcm", ds)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    return Study(tmp_path_factory.mktemp("repair-data"))


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    servers = ServerPool(tmp_path_factory.mktemp("repair-hub"))
    yield servers
    servers.close()


@pytest.fixture(scope="module")
def hub(pool: ServerPool) -> DicomhubServer:
    return pool.create("hub", aet="DICOMHUB")


@pytest.fixture(scope="module")
def peer(
    tmp_path_factory: pytest.TempPathFactory, hub: DicomhubServer, study: Study
) -> Iterator[OrthancServer]:
    # Orthanc answers C-GET only for an AE it knows.
    with orthanc(
        tmp_path_factory.mktemp("repair-orthanc"), modalities={"DICOMHUB": (HOST, hub.dimse_port)}
    ) as o:
        orthanc_store(o, study.peer_dir)
        yield o


@pytest.fixture(scope="module")
def loaded(hub: DicomhubServer, peer: OrthancServer, study: Study) -> DicomhubServer:
    hub.start()
    rc, out = run_dcmtk("storescu", "+sd", "-aec", hub.aet, HOST, str(hub.dimse_port), study.hub_dir)
    assert rc == 0, out
    for args in (
        ("orthanc-dimse", "--ae-title", peer.aet, "--host", HOST, "--port", str(peer.port)),
        ("orthanc-web", "--dicomweb", peer.dicomweb_url),
    ):
        rc, out = cli(hub, "peer", "add", *args, "--roles", "migration-source")
        assert rc == 0, out
    return hub


def cli(hub: DicomhubServer, *args: str) -> tuple[int, str]:
    return run_cli(*args, "--data-dir", str(hub.data_dir))


def blobs(hub: DicomhubServer) -> dict[str, str]:
    """SOP Instance UID -> blob key, from the index."""
    return {
        str(s): str(k) for s, k in index_rows(hub.data_dir, "SELECT sop_instance_uid, blob_key FROM instance")
    }


def delete_blob(data_dir: Path, key: str) -> None:
    url = backend_env(data_dir).get("DICOMHUB_STORAGE_URL", "")
    if url.startswith("s3://"):
        from .helpers import _s3_object

        client, bucket, name = _s3_object(data_dir, key)
        client.delete_object(Bucket=bucket, Key=name)  # type: ignore[attr-defined]
    else:
        (data_dir / "blobs" / key[:2] / key[2] / key).unlink()


def dataset_digest(data: bytes) -> str:
    from dicomhub.model.structure import dataset_offset

    return hashlib.sha256(data[dataset_offset(data) :]).hexdigest()


def test_check_finds_the_damage_and_repair_restores_what_the_peer_proves(
    loaded: DicomhubServer, study: Study
) -> None:
    hub = loaded
    keys = blobs(hub)
    assert sorted(keys) == sorted(study.sops)
    original = {sop: read_blob(hub.data_dir, keys[sop]) for sop in study.sops}
    truncated, removed, other = study.sops[0], study.sops[1], study.sops[OTHER]
    for sop in (truncated, other):
        data = original[sop]
        assert data is not None
        write_blob(hub.data_dir, keys[sop], data[: len(data) // 2])
    delete_blob(hub.data_dir, keys[removed])

    rc, out = cli(hub, "check", "--json")
    assert rc == 1, out
    problems = {p["sop_instance_uid"]: p["kind"] for p in json.loads(out)["storage"]["problems"]}
    assert problems == {truncated: "size-mismatch", removed: "missing", other: "size-mismatch"}

    rc, out = cli(hub, "repair", "--dry-run", "--from", "orthanc-dimse", "--json")
    assert rc == 0, out
    plan = json.loads(out)
    assert {i["sop_instance_uid"]: (i["outcome"], i["source"]) for i in plan["items"]} == {
        sop: ("planned", "orthanc-dimse (C-GET)") for sop in (truncated, removed, other)
    }
    assert blobs(hub) == keys and read_blob(hub.data_dir, keys[removed]) is None

    rc, out = cli(hub, "repair", "--from", "orthanc-dimse", study.study_uid)
    assert rc == 1, out
    assert f"failed: {other}" in out and "refused: its data set differs" in out, out
    after = blobs(hub)
    for sop in (truncated, removed):
        assert after[sop] != keys[sop]
        # Stored by C-STORE: the File Meta dicomhub wrote around the peer's data set
        # gives back the very bytes of the first store.
        assert read_blob(hub.data_dir, after[sop]) == original[sop]
        assert read_blob(hub.data_dir, keys[sop]) is None  # the damaged blob is gone
    # The other object was refused: the damaged blob stays as it was, under its key.
    assert after[other] == keys[other]
    damaged = original[other]
    assert damaged is not None and read_blob(hub.data_dir, keys[other]) == damaged[: len(damaged) // 2]

    # WADO-RS gives the restored object (the same data set as the first store).
    r = httpx.get(
        f"{hub.base_url}/dicomweb/studies/{study.study_uid}/series/{study.datasets[1].SeriesInstanceUID}"
        f"/instances/{removed}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    parts = split_multipart(r.content, r.headers["content-type"])
    restored = original[removed]
    assert restored is not None and [dataset_digest(c) for _h, c in parts] == [dataset_digest(restored)]


def test_admin_repair_over_dicomweb_and_nothing_indexed_twice(loaded: DicomhubServer, study: Study) -> None:
    hub = loaded
    keys = blobs(hub)
    last, other = study.sops[3], study.sops[OTHER]
    data = read_blob(hub.data_dir, keys[last])
    assert data is not None
    write_blob(hub.data_dir, keys[last], data[:-1] + bytes([data[-1] ^ 0xFF]))  # same size, one bit

    r = httpx.post(f"{hub.base_url}/admin/repair", json={"from": "orthanc-web", "studies": 7}, timeout=30)
    assert r.status_code == 400, r.text
    r = httpx.post(f"{hub.base_url}/admin/repair", json={"from": ["nobody"]}, timeout=30)
    assert r.status_code == 404, r.text

    r = httpx.post(f"{hub.base_url}/admin/repair", json={"from": ["orthanc-web"]}, timeout=120)
    assert r.status_code == 200, r.text
    report = r.json()
    outcomes = {i["sop_instance_uid"]: (i["problem"], i["outcome"]) for i in report["items"]}
    assert outcomes == {last: ("digest-mismatch", "repaired"), other: ("size-mismatch", "failed")}
    assert report["ok"] is False and report["checked"] == N
    refused = next(i for i in report["items"] if i["sop_instance_uid"] == other)
    assert refused["reason"].startswith("orthanc-web: refused: its data set differs"), refused
    assert dataset_digest(read_blob(hub.data_dir, blobs(hub)[last]) or b"") == dataset_digest(data)

    rc, out = cli(hub, "check", "--json")
    assert rc == 1, out
    assert [(p["sop_instance_uid"], p["kind"]) for p in json.loads(out)["storage"]["problems"]] == [
        (other, "size-mismatch")
    ]
    rows = index_rows(hub.data_dir, "SELECT count(*), count(DISTINCT sop_instance_uid) FROM instance")
    assert rows == [(N, N)]
    rc, out = cli(hub, "audit", "--json")
    assert rc == 0, out
    events = [e for e in json.loads(out) if (e.get("detail") or {}).get("operation") == "repair"]
    assert [(e["action"], e["detail"]["repaired"], e["detail"]["failed"]) for e in events] == [
        ("store", 1, 1),  # newest first: POST /admin/repair
        ("store", 2, 1),
    ]


def test_repair_from_a_folder_finds_the_copy_by_its_header_not_its_name(
    loaded: DicomhubServer, study: Study, tmp_path: Path
) -> None:
    """The instance the peers could not prove is still damaged; a folder of Part 10
    files (a backup) mends it. Files are known by the SOP Instance UID of their header:
    one named after the damaged instance holds another, the right one is nested under
    a neutral name, beside a file that is no DICOM at all."""
    hub = loaded
    other = study.sops[OTHER]
    keys = blobs(hub)
    damaged = read_blob(hub.data_dir, keys[other])
    wrong, backup = tmp_path / "wrong", tmp_path / "backup"
    wrong.mkdir()
    (wrong / "copy.dcm").write_bytes((study.peer_dir / f"{OTHER}.dcm").read_bytes())  # another object
    (backup / "nested").mkdir(parents=True)
    (backup / f"{other}.dcm").write_bytes((study.hub_dir / "0.dcm").read_bytes())
    (backup / "nested" / "x.bin").write_bytes((study.hub_dir / f"{OTHER}.dcm").read_bytes())
    (backup / "notes.txt").write_text("not DICOM")

    rc, out = cli(hub, "repair", "--from", f"folder:{tmp_path / 'absent'}")
    assert rc != 0 and "not a folder" in out, out
    r = httpx.post(f"{hub.base_url}/admin/repair", json={"from": [f"folder:{backup}"]}, timeout=30)
    assert r.status_code == 404, r.text  # a server-side path is no peer name over HTTP

    rc, out, err = run_cli_split(
        "repair", "--json", "--from", f"folder:{wrong}", study.study_uid, "--data-dir", str(hub.data_dir)
    )
    assert rc == 1, out + err
    [item] = json.loads(out)["items"]
    assert item["outcome"] == "failed" and "refused: its data set differs" in item["reason"], item
    assert blobs(hub)[other] == keys[other] and read_blob(hub.data_dir, keys[other]) == damaged

    rc, out = cli(hub, "repair", "--from", f"folder:{wrong}", "--from", f"folder:{backup}")
    assert rc == 0, out
    assert f"repaired: {other} (size-mismatch" in out and f"from folder:{backup}" in out, out
    restored = read_blob(hub.data_dir, blobs(hub)[other])
    assert restored is not None
    assert dataset_digest(restored) == dataset_digest((study.hub_dir / f"{OTHER}.dcm").read_bytes())
    rc, out = cli(hub, "check")
    assert rc == 0, out
    rows = index_rows(hub.data_dir, "SELECT count(*), count(DISTINCT sop_instance_uid) FROM instance")
    assert rows == [(N, N)]
