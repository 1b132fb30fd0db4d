"""Two ``dicomhub serve`` processes (own data dirs and ports) on one PostgreSQL
database and one blob store act as one archive.

The database is always PostgreSQL (SQLite cannot be shared between nodes). The
blob store is the bucket of the postgres-s3 backend, or a shared ``file://``
folder (as on NFS) on the default backend.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import datagen
import httpx
import pytest

from tests import backends

from .helpers import (
    HOST,
    DicomhubServer,
    ServerPool,
    assert_same_instances,
    find,
    get,
    parse_store_statuses,
    popen_dcmtk,
    read_dir,
    store_ok,
)

pytestmark = pytest.mark.e2e


def _shared_env(base: Path) -> dict[str, str]:
    """One database and one blob store for every node of the archive."""
    env = {"DICOMHUB_DATABASE_URL": backends.postgres().create_database()}
    if backends.BACKEND == backends.POSTGRES_S3:
        storage = backends.backend_env(base / "shared-storage")
        env.update({k: v for k, v in storage.items() if k != "DICOMHUB_DATABASE_URL"})
    else:
        env["DICOMHUB_STORAGE_URL"] = (base / "shared-blobs").resolve().as_uri()
    return env


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DicomhubServer, DicomhubServer]]:
    base = tmp_path_factory.mktemp("nodes")
    env = _shared_env(base)
    pool = ServerPool(base)
    try:
        a = pool.start("node-a", aet="NODEA", env=env)
        b = pool.start("node-b", aet="NODEB", env=env)
        yield a, b
    finally:
        pool.close()


def _index(node: DicomhubServer, sql: str, **params: object) -> list[tuple[object, ...]]:
    from sqlalchemy import text

    from dicomhub.index.engine import connect_engine

    engine = connect_engine(node.env["DICOMHUB_DATABASE_URL"], pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params).all()]
    finally:
        engine.dispose()


def _count(node: DicomhubServer, sql: str) -> int:
    return int(str(_index(node, sql)[0][0]))


def _stored_objects(node: DicomhubServer) -> int:
    """How many objects the shared blob store holds."""
    url = node.env["DICOMHUB_STORAGE_URL"]
    if url.startswith("file://"):
        root = Path(url[len("file://") :])
        # The file store creates empty files ahead of time for the keys it hands out.
        return sum(1 for p in root.rglob("*") if p.is_file() and p.stat().st_size > 0)
    import boto3

    bucket, _, prefix = url[len("s3://") :].partition("/")
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=node.env["AWS_ENDPOINT_URL"],
        region_name=node.env["AWS_REGION"],
        aws_access_key_id=node.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=node.env["AWS_SECRET_ACCESS_KEY"],
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.strip("/") + "/")
    return sum(len(page.get("Contents", [])) for page in pages)


def test_stored_through_one_node_is_found_and_retrieved_through_the_other(
    nodes: tuple[DicomhubServer, DicomhubServer], tmp_path: Path
) -> None:
    a, b = nodes
    series = datagen.write_ct_series(tmp_path / "in", n=4, patient_id="NODES1")
    store_ok(a, tmp_path / "in", expect=4)
    study = str(series[0].StudyInstanceUID)
    # No wait: B answers from the shared index as soon as A acknowledged.
    keys = {"StudyInstanceUID": study, "NumberOfStudyRelatedInstances": None}
    found = find(b, "STUDY", keys, tmp_path / "f")
    assert [str(m.NumberOfStudyRelatedInstances) for m in found] == ["4"]
    res = get(b, "STUDY", {"StudyInstanceUID": study}, tmp_path / "out")
    assert res.returncode == 0, res.output[-2000:]
    assert_same_instances(read_dir(tmp_path / "out"), series)
    # And the other way round, over DICOMweb.
    more = datagen.write_ct_series(tmp_path / "in2", n=2, patient_id="NODES2")
    store_ok(b, tmp_path / "in2", expect=2)
    path = f"/dicomweb/studies/{more[0].StudyInstanceUID}/series/{more[0].SeriesInstanceUID}/instances"
    r = httpx.get(a.base_url + path, timeout=30.0)
    assert r.status_code == 200, r.text
    assert {i["00080018"]["Value"][0] for i in r.json()} == {str(d.SOPInstanceUID) for d in more}


def test_same_instances_sent_to_both_nodes_at_once_end_as_one_row_and_one_object(
    nodes: tuple[DicomhubServer, DicomhubServer], tmp_path: Path
) -> None:
    a, b = nodes
    before_objects = _stored_objects(a)
    before_rows = _count(a, "SELECT count(*) FROM instance")
    series = datagen.write_ct_series(tmp_path / "in", n=12, patient_id="RACE")
    files = sorted((tmp_path / "in").iterdir())
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    for node in (a, b):
        for part in range(2):  # two associations per node, each with every other file
            folder = tmp_path / f"{node.aet}{part}"
            folder.mkdir()
            for f in files[part::2]:
                shutil.copy(f, folder / f.name)
            log = tmp_path / f"{node.aet}{part}.log"
            args = ["-d", "-nh", "+sd", "+r", "-aec", node.aet, HOST, str(node.dimse_port), folder]
            procs.append((popen_dcmtk("storescu", *args, log=log), log))
    for proc, log in procs:
        assert proc.wait(120) == 0, log.read_text(errors="replace")[-3000:]
        statuses = parse_store_statuses(log.read_text(errors="replace"))
        assert len(statuses) == 6 and set(statuses.values()) == {0}, statuses
    uids = {str(d.SOPInstanceUID) for d in series}
    assert _count(a, "SELECT count(*) FROM instance") - before_rows == len(uids)  # one row per UID
    assert _stored_objects(a) - before_objects == len(uids)  # the losers' blobs were removed
    created = _index(
        a, "SELECT uid, count(*) FROM change WHERE change_type = 'created' AND level = 'IMAGE' GROUP BY uid"
    )
    assert {str(u): int(str(n)) for u, n in created if str(u) in uids} == dict.fromkeys(uids, 1)


def test_change_log_is_one_sequence_for_both_nodes(
    nodes: tuple[DicomhubServer, DicomhubServer], tmp_path: Path
) -> None:
    a, b = nodes
    first = datagen.write_ct_series(tmp_path / "a", n=3, patient_id="SEQ-A")
    second = datagen.write_ct_series(tmp_path / "b", n=3, patient_id="SEQ-B")
    store_ok(a, tmp_path / "a", expect=3)
    store_ok(b, tmp_path / "b", expect=3)
    rows = _index(a, "SELECT seq, uid FROM change WHERE level = 'IMAGE'")
    seqs = {str(uid): int(str(seq)) for seq, uid in rows}
    order = [seqs[str(d.SOPInstanceUID)] for d in [*first, *second]]
    assert max(order[:3]) < min(order[3:])  # A's stores, acknowledged first, come first
    for node in nodes:  # the index is the shared one, not a SQLite file per data dir
        assert not (node.data_dir / "index.sqlite").exists()
