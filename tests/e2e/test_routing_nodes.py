"""Routing and events with two ``dicomhub serve`` nodes on one PostgreSQL index and
one S3 store (the postgres-s3 suite only: SQLite cannot be shared between nodes).

One pair of nodes for the module, a route of everything to one DCMTK storescp
(``+uf``: it keeps every copy it gets, so a repeat shows) and a webhook receiver in
the test. In order:

* both nodes alive: a few hundred instances of one study, stored half through each
  node, arrive once each; both nodes forwarded (storescp's log, by calling AE); the
  study is announced stable once and the webhook gets each event once;
* the destination down for a while: what is stored meanwhile arrives, once, when it
  is up again;
* a node killed with ``kill -9`` while it holds claimed items: the other node takes
  them over when their lease (``route_lease = 3``) runs out; everything arrives, and
  only the C-STORE in flight at the kill may come twice.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests import backends, datagen
from tests.e2e.helpers import HOST, DicomhubServer, ServerPool, StoreSCP, descendant_pids, store_ok

from .test_several_nodes import _index, _shared_env

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        backends.BACKEND != backends.POSTGRES_S3,
        reason="several nodes share PostgreSQL: the postgres-s3 suite",
    ),
]

LEASE = 3  # route_lease of the nodes, in seconds


class Receiver:
    """A webhook endpoint on 127.0.0.1 that keeps every POST it gets."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []  # (X-Dicomhub-Delivery, body)
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer._lock:
                    outer.posts.append((str(self.headers["X-Dicomhub-Delivery"]), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self, event: str) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return [p for p in self.posts if p[1]["event"] == event]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Setup:
    def __init__(
        self, a: DicomhubServer, b: DicomhubServer, scp: StoreSCP, hook: Receiver, base: Path
    ) -> None:
        self.a, self.b, self.scp, self.hook, self.base = a, b, scp, hook, base
        self.callers = base / "callers.txt"

    def copies(self) -> Counter[str]:
        """SOP Instance UID -> how many copies storescp holds."""
        return Counter(
            str(pydicom.dcmread(p, stop_before_pixels=True, force=True).SOPInstanceUID)
            for p in self.scp.out_dir.iterdir()
            if p.is_file()
        )

    def sends_by(self) -> Counter[str]:
        """C-STOREs storescp received per calling AE title (its ``--exec-on-reception``)."""
        lines = self.callers.read_text().split() if self.callers.exists() else []
        return Counter(lines)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("routing-nodes")
    # +uf: every copy is kept; each receipt's calling AE title (#a) goes to callers.txt.
    callers = ("--exec-on-reception", f"echo #a >> {base / 'callers.txt'}")
    scp = StoreSCP(base / "scp", base / "scp.log", aet="NODESCP", extra=("+uf", *callers)).start()
    hook = Receiver()
    config = base / "dicomhub.toml"
    config.write_text(
        f"[dicomhub]\nstable_age = 2\nroute_lease = {LEASE}\n\n"
        f'[[peer]]\nname = "scp"\nae_title = "NODESCP"\nhost = "{HOST}"\nport = {scp.port}\n\n'
        '[[route]]\nname = "all"\nto = ["scp"]\nmax_attempts = 50\n\n'
        f'[[webhook]]\nname = "hook"\nurl = "{hook.url}"\nevents = ["stored", "stable_study"]\n'
        'secret = "env:NODES_HOOK_SECRET"\n'
    )
    env = {**_shared_env(base), "NODES_HOOK_SECRET": "two-nodes"}
    pool = ServerPool(base)
    try:
        a = pool.start("node-a", aet="NODEA", env=env, args=["--config", str(config)])
        b = pool.start("node-b", aet="NODEB", env=env, args=["--config", str(config)])
        yield Setup(a, b, scp, hook, base)
    finally:
        pool.close()
        scp.stop()
        hook.close()


def wait_for(what: str, found: Callable[[], Any], timeout: float = 60, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = found()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(every)


def test_with_both_nodes_up_each_item_goes_once_and_each_event_fires_once(
    nodes: Setup, tmp_path: Path
) -> None:
    series = datagen.write_ct_series(tmp_path / "all", 240, rows=8, cols=8, patient_id="TWONODES")
    study = str(series[0].StudyInstanceUID)
    files = sorted((tmp_path / "all").iterdir())
    for node, part in ((nodes.a, 0), (nodes.b, 1)):
        folder = tmp_path / node.aet
        folder.mkdir()
        for f in files[part::2]:
            f.rename(folder / f.name)
    threads = [
        threading.Thread(target=store_ok, args=(node, tmp_path / node.aet), kwargs={"expect": 120})
        for node in (nodes.a, nodes.b)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    uids = {str(ds.SOPInstanceUID) for ds in series}
    assert len(uids) == 240
    wait_for("every instance at storescp", lambda: set(nodes.copies()) == uids, 120)

    def study_log() -> list[tuple[int, str]]:
        """(seq, change type) of the study's announcements and its instances' changes."""
        rows = _index(
            nodes.a,
            "SELECT seq, change_type, level, uid FROM change WHERE uid = :u OR level = 'IMAGE' ORDER BY seq",
            u=study,
        )
        return [
            (int(str(seq)), str(t))
            for seq, t, lvl, u in rows
            if (str(lvl) == "STUDY" and str(u) == study) or str(u) in uids
        ]

    wait_for("the study announced stable after its last store", lambda: study_log()[-1][1] == "stable", 30)
    time.sleep(2.5)  # a repeat (a second node's send or announcement) would show by now
    assert max(nodes.copies().values()) == 1  # one send per item
    per_node = nodes.sends_by()
    assert sum(per_node.values()) == 240 and set(per_node) == {"NODEA", "NODEB"}, per_node
    # On a busy machine a pause of stable_age between two stores announces the study,
    # and the next store makes it unstable again; what must never be is two
    # announcements with no store between them (both nodes announcing one quiet period).
    kinds = [t for _seq, t in study_log()]
    announced = [i for i, kind in enumerate(kinds) if kind == "stable"]
    assert all(kinds[i - 1] != "stable" for i in announced[1:]), kinds
    stable_seqs = [seq for seq, t in study_log() if t == "stable"]
    wait_for(
        "every announcement at the webhook",
        lambda: len(nodes.hook.events("stable_study")) >= len(stable_seqs),
    )
    assert sorted(body["seq"] for _d, body in nodes.hook.events("stable_study")) == stable_seqs
    assert {body["uid"] for _d, body in nodes.hook.events("stable_study")} == {study}
    stored = nodes.hook.events("stored")
    assert {body["uid"] for _d, body in stored} == uids
    deliveries = Counter(d for d, _b in nodes.hook.posts)
    assert len(stored) == 240 and max(deliveries.values()) == 1  # no event delivered twice


def test_a_destination_down_for_a_while_gets_everything_once_it_is_up(nodes: Setup, tmp_path: Path) -> None:
    nodes.scp.stop()
    before = nodes.copies()
    series = datagen.write_ct_series(tmp_path / "down", 20, rows=8, cols=8, patient_id="DOWN")
    store_ok(nodes.a, tmp_path / "down", expect=20)
    failed = "SELECT count(*) FROM route_item WHERE state = 'queued' AND attempts > 0"
    wait_for("failed attempts to the down destination", lambda: int(str(_index(nodes.a, failed)[0][0])) > 0)
    time.sleep(2)
    nodes.scp.start()  # the same port
    uids = {str(ds.SOPInstanceUID) for ds in series}
    wait_for("the queued instances at storescp", lambda: uids <= set(nodes.copies()), 60)
    after = nodes.copies()
    assert after - before == Counter(dict.fromkeys(uids, 1))


def _owner_pid(owner: str) -> int:
    return int(owner.split(":")[1])


def test_a_node_killed_while_forwarding_loses_nothing_and_the_other_takes_over(
    nodes: Setup, tmp_path: Path
) -> None:
    assert nodes.scp.proc is not None
    before = nodes.copies()
    series = datagen.write_ct_series(tmp_path / "kill", 200, rows=8, cols=8, patient_id="KILL")
    uids = {str(ds.SOPInstanceUID) for ds in series}
    received = sum(1 for p in nodes.scp.out_dir.iterdir() if p.is_file())
    # Forwarding begins while the objects are still being stored, so the store runs
    # beside the watch for forwarding: waiting for the store first could see the
    # whole queue sent before the destination is frozen.
    storing = ThreadPoolExecutor(1)
    stored = storing.submit(store_ok, nodes.a, tmp_path / "kill", expect=200)
    # Freeze the destination in the middle of forwarding: the node on its association
    # waits for a C-STORE response, the items its claim holds stay claimed. Files
    # are counted (not read) so that the freeze follows the 20th copy closely.
    wait_for(
        "forwarding under way",
        lambda: sum(1 for p in nodes.scp.out_dir.iterdir() if p.is_file()) >= received + 20,
        every=0.01,
    )
    os.kill(nodes.scp.proc.pid, signal.SIGSTOP)
    try:
        pids = {n: {n.proc.pid, *descendant_pids(n.proc.pid)} for n in (nodes.a, nodes.b) if n.proc}

        def held_by() -> dict[DicomhubServer, set[str]]:
            """Claimed items per node; a node between two batches claims its next one
            and then waits on the frozen destination, so this is polled."""
            claims = _index(
                nodes.a,
                "SELECT owner, sop_instance_uid FROM route_item WHERE owner IS NOT NULL AND state = 'queued'",
            )
            found = {n: {str(s) for o, s in claims if _owner_pid(str(o)) in pids[n]} for n in pids}
            return found if any(found.values()) else {}

        held = wait_for("a node holding claimed items while storescp is frozen", held_by, 20)
        victim = nodes.a if held[nodes.a] else nodes.b
        survivor = nodes.b if victim is nodes.a else nodes.a
        stored.result(timeout=120)  # every object acknowledged before a node is killed
        killed_at = time.monotonic()
        victim.kill9()
    finally:
        os.kill(nodes.scp.proc.pid, signal.SIGCONT)
        storing.shutdown()
    wait_for("every instance after the kill", lambda: uids <= set(nodes.copies()), 90)
    took = time.monotonic() - killed_at
    time.sleep(1.5)
    new = nodes.copies() - before
    twice = {uid for uid, n in new.items() if n > 1}
    # At most the one C-STORE in flight at the kill (received, its response never
    # read) comes twice, and it is one the killed node held.
    assert set(new) == uids and len(twice) <= 1 and twice <= held[victim], (twice, held[victim])
    left = _index(survivor, "SELECT state, count(*) FROM route_item GROUP BY state")
    assert {str(s): int(str(n)) for s, n in left} == {"sent": 460}
    # The survivor took the killed node's items over once their lease had run out,
    # not after the default two minutes.
    assert took < 60, took
