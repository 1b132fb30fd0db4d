"""Association and DIMSE statistics: `dicomhub associations`, /admin/associations and /metrics.

Driven by DCMTK (echoscu, storescu) and a pynetdicom requestor that proposes
a service dicomhub does not provide, against a server that also refuses an
unknown AE: the statistics must say who connected, what they proposed, what
was accepted or refused and why, and count the operations.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import datagen
import httpx
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from .helpers import HOST, DicomhubServer, ServerPool, echo, metric_samples, run_cli_split, store_ok

pytestmark = pytest.mark.e2e

# A SOP class dicomhub does not provide (Instance Availability Notification).
NOT_PROVIDED = "1.2.840.10008.5.1.4.33"


def wait_for_rows(
    server: DicomhubServer, calling: str, n: int, timeout: float = 10
) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = httpx.get(server.base_url + "/admin/associations", params={"calling_ae": calling}).json()
        if len(rows) >= n or time.monotonic() > deadline:
            return rows  # type: ignore[no-any-return]
        time.sleep(0.2)


@pytest.fixture(scope="module")
def busy(module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory) -> DicomhubServer:
    server = module_servers.start(args=["--known-aes-only"], remote_aes={
        "ECHOER": (HOST, 11112), "STORER": (HOST, 11113), "WLCLIENT": (HOST, 11114), 'Q"UOTE': (HOST, 11115),
    })  # fmt: skip
    for _ in range(2):
        rc, out = echo(server, "ECHOER")
        assert rc == 0, out
    folder = tmp_path_factory.mktemp("stats") / "in"
    for i in range(3):
        datagen.write_instance(folder / f"{i}.dcm", rows=16, cols=16)
    store_ok(server, folder, calling="STORER", expect=3)
    rc, out = echo(server, "STRANGER")
    assert rc != 0 and "Association Rejected" in out
    rc, out = echo(server, 'Q"UOTE')
    assert rc == 0, out
    ae = AE(ae_title="WLCLIENT")
    ae.add_requested_context(Verification)
    ae.add_requested_context(NOT_PROVIDED)
    assoc = ae.associate(HOST, server.dimse_port, ae_title=server.aet)
    assert assoc.is_established
    assoc.send_c_echo()
    assoc.release()
    # An association is logged when the server's side of it ends (after the
    # requestor has closed, PS3.8 Sta13) and then in batches: the requestors
    # above may have exited in another order than their rows arrive, so wait
    # for every one of them, not just the last.
    for calling, n in (("ECHOER", 2), ("STORER", 1), ("STRANGER", 1), ('Q"UOTE', 1), ("WLCLIENT", 1)):
        wait_for_rows(server, calling, n)
    return server


def test_admin_associations_say_what_was_proposed_and_refused(busy: DicomhubServer) -> None:
    (row,) = wait_for_rows(busy, "WLCLIENT", 1)
    assert row["outcome"] == "released" and row["called_ae_title"] == busy.aet
    assert row["accepted_contexts"] == 1 and row["rejected_contexts"] == 1
    contexts = {c[0]: c for c in row["contexts"]}  # type: ignore[union-attr]
    worklist = contexts[NOT_PROVIDED]
    assert worklist[1] == 3  # abstract syntax not supported (PS3.8 Table 9-18)
    assert worklist[2] is None and "1.2.840.10008.1.2" in worklist[3]
    verification = contexts["1.2.840.10008.1.1"]
    assert verification[1] == 0 and verification[2] in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
    assert row["operations"] == {"echo:success": 1}
    (refused,) = wait_for_rows(busy, "STRANGER", 1)
    assert refused["outcome"] == "rejected" and "STRANGER" in str(refused["reason"])


def test_metrics_count_associations_and_operations(busy: DicomhubServer) -> None:
    wait_for_rows(busy, "WLCLIENT", 1)
    r = httpx.get(busy.base_url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    samples = metric_samples(text)
    assert samples['dicomhub_associations_total{calling_ae="ECHOER",outcome="released"}'] == 2
    assert samples['dicomhub_associations_total{calling_ae="STRANGER",outcome="rejected"}'] == 1
    operations = "dicomhub_dimse_operations_total"
    assert samples[operations + '{calling_ae="STORER",operation="store",status="success"}'] == 3
    assert samples[operations + '{calling_ae="ECHOER",operation="echo",status="success"}'] == 2
    assert samples['dicomhub_presentation_contexts_rejected_total{calling_ae="WLCLIENT"}'] == 1
    assert samples['dicomhub_objects{level="instances"}'] == 3
    assert samples['dicomhub_stored_objects_total{outcome="stored"}'] == 3
    # A quote from the wire is escaped, so the exposition stays parseable.
    assert samples['dicomhub_associations_total{calling_ae="Q\\"UOTE",outcome="released"}'] == 1
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name_labels, value = line.rsplit(" ", 1)
            float(value)
            assert name_labels.startswith("dicomhub_")


def test_cli_associations_json(busy: DicomhubServer) -> None:
    wait_for_rows(busy, "WLCLIENT", 1)
    rc, out, err = run_cli_split("associations", "--data-dir", str(busy.data_dir), "--json", "--ae", "STORER")
    assert rc == 0, err
    data = json.loads(out)
    assert [r["calling_ae_title"] for r in data["recent"]] == ["STORER"]
    assert data["recent"][0]["operations"] == {"store:success": 3}
    ops = {
        (o["calling_ae_title"], o["operation"], o["status"]): o["count"] for o in data["totals"]["operations"]
    }
    assert ops[("STORER", "store", "success")] == 3
    rc, out, err = run_cli_split("associations", "--data-dir", str(busy.data_dir))
    assert rc == 0 and "STORER" in out and "WLCLIENT" in out, err


def test_statistics_survive_a_restart(servers: ServerPool, tmp_path: Path) -> None:
    server = servers.start()
    rc, out = echo(server, "BEFORE")
    assert rc == 0, out
    assert len(wait_for_rows(server, "BEFORE", 1)) == 1
    server.restart()
    assert len(wait_for_rows(server, "BEFORE", 1)) == 1
