"""Routing: rule parsing and matching, and the outbound queue on a real SQLite index with
a scripted sender: enqueue from the change log, claims and leases, retries with
backoff, the dead letter and a manual retry."""

from __future__ import annotations

import datetime as dt
import io
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import insert, update

from dicomhub.errors import ConfigurationError, DicomhubError
from dicomhub.index import engine as engines
from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.repository import IndexRepository
from dicomhub.index.routing import RouteRepository
from dicomhub.index.schema import rejected_instance, route_item, worker_cursor
from dicomhub.index.stability import StabilityRepository
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.identifiers import Level
from dicomhub.model.ingest import InstanceOrigin, OriginKind
from dicomhub.model.policy import DuplicatePolicy
from dicomhub.model.records import InstanceRow
from dicomhub.model.routing import Route, backoff, parse_routes
from dicomhub.model.timestamps import utc_now
from dicomhub.services.ingest import IngestService
from dicomhub.services.routing import RoutingService, Sender
from dicomhub.storage.memory import MemoryBlobStore
from tests import datagen


def route(**table: Any) -> Route:
    return parse_routes([{"name": "r", "to": ["pacs"], **table}])[0]


# ---------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("when", "facts", "expected"),
    [
        ({}, {}, True),
        ({"Modality": "CT"}, {"Modality": {"CT"}}, True),
        ({"Modality": "CT"}, {"Modality": {"MR"}}, False),
        ({"Modality": "CT"}, {}, False),  # absent is no match
        ({"Modality": "ct"}, {"Modality": {"CT"}}, False),  # case-sensitive, as C-FIND
        ({"StudyDescription": "HEAD*"}, {"StudyDescription": {"HEAD CT"}}, True),
        ({"StudyDescription": "HEAD*"}, {"StudyDescription": {"A HEAD"}}, False),
        ({"calling_ae": "CT?"}, {"calling_ae": {"CT1"}}, True),
        ({"calling_ae": "CT?"}, {"calling_ae": {"CT12"}}, False),
        ({"StudyDescription": "a.b"}, {"StudyDescription": {"axb"}}, False),  # only * and ? are special
        ({"label": "research"}, {"label": {"teaching", "research"}}, True),
        ({"Modality": ["CT", "MR"]}, {"Modality": {"MR"}}, True),
        ({"Modality": "CT", "calling_ae": "CT1"}, {"Modality": {"CT"}, "calling_ae": {"MR1"}}, False),
        ({"sop_class": "1.2.840.10008.5.1.4.1.1.2"}, {"sop_class": {"1.2.840.10008.5.1.4.1.1.2"}}, True),
    ],
)
def test_rule_matching(when: dict[str, Any], facts: dict[str, set[str]], expected: bool) -> None:
    assert route(when=when).matches(facts) is expected


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"name": "r", "to": ["pacs"], "unknown": 1}, "unknown key 'unknown'"),
        ({"name": "r", "to": ["pacs"], "when": {"Colour": "red"}}, "unknown condition 'Colour'"),
        ({"name": "r", "to": ["pacs"], "on": "deleted"}, "on must be one of"),
        ({"name": "r", "to": []}, "at least one destination"),
        ({"name": "r", "to": ["folder:relative"]}, "folder:ABSOLUTE-PATH"),
        ({"name": "r", "to": ["a", "a"]}, "listed twice"),
        ({"name": "bad name", "to": ["a"]}, "name must be"),
        ({"name": "r", "to": ["a"], "max_attempts": 0}, "max_attempts"),
        ({"name": "r", "to": ["a"], "when": {"Modality": ""}}, "when.Modality"),
    ],
)
def test_bad_route_tables_are_refused_with_the_reason(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_routes([table])


def test_route_names_are_unique_and_backoff_doubles() -> None:
    with pytest.raises(ConfigurationError, match="same name"):
        parse_routes([{"name": "a", "to": ["x"]}, {"name": "a", "to": ["y"]}])
    assert [backoff(n) for n in (1, 2, 3, 10, 20)] == [1, 2, 4, 300, 300]


def test_routes_load_from_the_configuration_file_and_a_bad_syntax_stops_it(tmp_path: Path) -> None:
    from dicomhub.config import load_settings

    good = tmp_path / "good.toml"
    good.write_text('[[route]]\nname = "ct"\nwhen = { Modality = "CT" }\nto = ["pacs", "folder:/tmp/x"]\n')
    settings = load_settings(config_file=good, environ={})
    assert [r.name for r in settings.routes] == ["ct"] and settings.routes[0].to == ("pacs", "folder:/tmp/x")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[route]]\nname = "ct"\nto = ["pacs"]\ntransfer_syntax = "1.2.3.4.nonsense"\n')
    with pytest.raises(ConfigurationError, match="route"):
        load_settings(config_file=bad, environ={})


# ---------------------------------------------------------------- the queue


class Peer:
    dicomweb_url, host, port, folder = "", "127.0.0.1", 104, ""


class Peers:
    def get(self, name: str) -> Peer | None:
        return Peer() if name in ("pacs", "other") else None


class Recorder:
    """A sender that records what it sent and fails as scripted."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.down = False
        self.refuse: set[str] = set()
        self.opened = 0

    def __call__(self, destination: str, rule: Route) -> Sender:
        self.opened += 1
        recorder = self

        class _Sender:
            batch = 10

            def send(self, rows: Sequence[InstanceRow]) -> dict[str, str]:
                if recorder.down:
                    raise DicomhubError("connection refused")
                errors = {
                    r.sop_instance_uid: "status 0xA700" for r in rows if r.sop_instance_uid in recorder.refuse
                }
                recorder.sent += [r.sop_instance_uid for r in rows if r.sop_instance_uid not in errors]
                return errors

            def close(self) -> None:
                pass

        return _Sender()


class Setup:
    def __init__(self, tmp: Path, *routes: Route, url: str = "") -> None:
        engine = connect_engine(url or f"sqlite:///{tmp / 'index.sqlite'}")
        migrate(engine, lock_dir=tmp)
        self.index = IndexRepository(engine)
        self.ingest = IngestService(self.index, MemoryBlobStore(), DuplicatePolicy.KEEP)
        self.queue = RouteRepository(engine)
        self.sender = Recorder()
        self.service = RoutingService(routes, self.index, self.queue, Peers(), self.sender)
        self.service.begin()

    def store(self, calling_ae: str = "CT1", **kwargs: Any) -> Dataset:
        ds = datagen.make_dataset(rows=8, cols=8, **kwargs)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        origin = InstanceOrigin(OriginKind.C_STORE, calling_ae_title=calling_ae, called_ae_title="DICOMHUB")
        self.ingest.store_part10(buf.getvalue(), Caller(Channel.DIMSE, calling_ae), origin=origin)
        return ds

    def due_now(self) -> None:
        """Make every waiting item due (the backoff passed)."""
        with engines.write(self.queue.engine) as conn:
            conn.execute(update(route_item).values(not_before=utc_now() - dt.timedelta(seconds=1)))


def test_stored_instances_are_queued_by_rule_and_sent_once(tmp_path: Path) -> None:
    s = Setup(tmp_path, route(when={"Modality": "CT", "calling_ae": "CT*"}, to=["pacs", "other"]))
    ct = s.store(modality="CT")
    mr = s.store(modality="MR")
    other_ae = s.store(modality="CT", calling_ae="XR1")
    assert s.service.enqueue_step() > 0
    assert s.service.forward_step() == 1 and s.service.forward_step() == 1 and s.service.forward_step() == 0
    assert s.sender.sent == [ct.SOPInstanceUID, ct.SOPInstanceUID]
    assert mr.SOPInstanceUID not in s.sender.sent and other_ae.SOPInstanceUID not in s.sender.sent
    depth = {(d["destination"], d["state"]): d["count"] for d in s.service.depth()}
    assert depth == {("pacs", "sent"): 1, ("other", "sent"): 1}
    # The change log read again (a crash before the cursor moved) queues nothing twice.
    with engines.write(s.queue.engine) as conn:
        conn.execute(update(worker_cursor).where(worker_cursor.c.name == "route-enqueue").values(position=0))
    s.service.enqueue_step()
    assert s.service.forward_step() == 0 and len(s.sender.sent) == 2


def test_a_new_rule_starts_now_not_with_the_history(tmp_path: Path) -> None:
    s = Setup(tmp_path)  # no rules: stores go by
    s.store()
    s.service = RoutingService([route()], s.index, s.queue, Peers(), s.sender)
    s.service.begin()
    assert s.service.enqueue_step() == 0 and s.service.depth() == []


def test_stable_rules_queue_the_whole_study_when_it_is_stable(tmp_path: Path) -> None:
    s = Setup(tmp_path, route(on="stable", when={"Modality": "MR"}))
    study = datagen.uid()
    a = s.store(modality="MR", study_uid=study)
    b = s.store(modality="MR", study_uid=study)
    s.service.enqueue_step()
    assert s.service.depth() == []  # stored is not stable
    later = utc_now() + dt.timedelta(days=1)
    assert ("STUDY", study) in StabilityRepository(s.queue.engine).announce(later, later)
    s.service.enqueue_step()
    assert s.service.forward_step() == 2
    assert sorted(s.sender.sent) == sorted([a.SOPInstanceUID, b.SOPInstanceUID])
    assert s.sender.opened == 1  # one batch, one association, for the study


def test_failures_back_off_then_go_dead_and_a_manual_retry_requeues(tmp_path: Path) -> None:
    s = Setup(tmp_path, route(max_attempts=2))
    ds = s.store()
    s.service.enqueue_step()
    s.sender.down = True
    assert s.service.forward_step() == 0  # failed once, waits its backoff
    assert s.service.forward_step() == 0  # not due yet: not tried again
    [item] = s.service.items("queued")
    assert item["attempts"] == 1 and "connection refused" in item["last_error"]
    s.due_now()
    assert s.service.forward_step() == 1  # the second failure: dead
    [dead] = s.service.items("dead")
    assert dead["attempts"] == 2 and s.sender.sent == []
    s.due_now()
    assert s.service.forward_step() == 0  # dead items are not tried
    s.sender.down = False
    assert s.service.retry(dead_only=True) == 1
    assert s.service.forward_step() == 1 and s.sender.sent == [ds.SOPInstanceUID]
    assert s.service.items("dead") == [] and len(s.service.items("sent")) == 1
    with pytest.raises(DicomhubError, match="no route"):
        s.service.retry("nope")


def test_one_refused_instance_fails_alone(tmp_path: Path) -> None:
    s = Setup(tmp_path, route())
    study = datagen.uid()
    good, bad = s.store(study_uid=study), s.store(study_uid=study)
    s.sender.refuse = {bad.SOPInstanceUID}
    s.service.enqueue_step()
    assert s.service.forward_step() == 1
    assert s.sender.sent == [good.SOPInstanceUID]
    [waiting] = s.service.items("queued")
    assert waiting["sop_instance_uid"] == bad.SOPInstanceUID and "0xA700" in waiting["last_error"]


def test_a_claimed_item_is_not_claimed_again_until_its_lease_ends(tmp_path: Path) -> None:
    s = Setup(tmp_path, route())
    s.store()
    s.service.enqueue_step()
    now = utc_now()
    first = s.queue.claim("node-a", now, 60, 10)
    assert len(first) == 1
    assert s.queue.claim("node-b", now, 60, 10) == []  # leased to node-a
    # node-a died: after the lease, node-b takes the item, and node-a's late outcome is ignored.
    later = now + dt.timedelta(seconds=61)
    again = s.queue.claim("node-b", later, 60, 10)
    assert [i["pk"] for i in again] == [i["pk"] for i in first]
    s.queue.mark_sent([int(first[0]["pk"])], "node-a", later)
    assert s.service.items("sent") == []
    s.queue.mark_sent([int(first[0]["pk"])], "node-b", later)
    assert len(s.service.items("sent")) == 1


def test_a_node_sending_slowly_keeps_its_lease_so_no_other_node_sends_again(tmp_path: Path) -> None:
    """A send that outlasts the lease (a slow peer, a loaded machine) is not taken over
    by another node while the sending node lives: the lease is renewed as it sends."""
    s = Setup(tmp_path, route())
    s.store()
    s.service.enqueue_step()
    slow = threading.Event()
    recorder = s.sender

    def open_slow(destination: str, rule: Route) -> Sender:
        sender = recorder(destination, rule)
        real = sender.send

        def send(rows: Sequence[InstanceRow]) -> dict[str, str]:
            slow.set()
            time.sleep(1.5)  # five leases of 0.3 s
            return real(rows)

        sender.send = send  # type: ignore[method-assign]
        return sender

    node_a = RoutingService(s.service.routes, s.index, s.queue, Peers(), open_slow, lease=0.3)
    forwarding = threading.Thread(target=node_a.forward_step)
    forwarding.start()
    assert slow.wait(10)
    time.sleep(0.9)  # three leases
    taken = s.queue.claim("node-b", utc_now(), 60, 10)
    forwarding.join()
    assert taken == [] and len(recorder.sent) == 1
    assert len(s.service.items("sent")) == 1


def test_two_nodes_claiming_at_once_get_disjoint_items(tmp_path: Path, index_url: str) -> None:
    # On PostgreSQL the claims are FOR UPDATE SKIP LOCKED; on SQLite write transactions are serial.
    s = Setup(tmp_path, route(), url=index_url)
    study = datagen.uid()
    for _ in range(6):
        s.store(study_uid=study)
    s.service.enqueue_step()
    now = utc_now()
    with ThreadPoolExecutor(3) as pool:
        claims = list(pool.map(lambda owner: s.queue.claim(owner, now, 60, 2), ["a", "b", "c"]))
    pks = [int(item["pk"]) for claim in claims for item in claim]
    assert len(pks) == 6 and len(set(pks)) == 6  # each item claimed by exactly one node
    assert s.queue.claim("d", now, 60, 10) == []


def test_route_test_counts_matching_instances_and_an_unknown_peer_stops_begin(tmp_path: Path) -> None:
    s = Setup(tmp_path, route(when={"Modality": "CT"}))
    study = datagen.uid()
    s.store(modality="CT", study_uid=study)
    s.store(modality="CT", study_uid=study, series_uid=datagen.uid())
    found = s.service.test(study)
    assert found["instances"] == 2 and found["routes"][0]["matched"] == 2
    with pytest.raises(DicomhubError, match="no study"):
        s.service.test(datagen.uid())
    unknown = RoutingService([route(to=["nowhere"])], s.index, s.queue, Peers(), s.sender)
    with pytest.raises(ConfigurationError, match="no peer 'nowhere'"):
        unknown.begin()


def test_items_whose_instance_was_rejected_or_deleted_since_are_skipped_not_sent(tmp_path: Path) -> None:
    s = Setup(tmp_path, route())
    study = datagen.uid()
    kept, rejected, deleted = (s.store(study_uid=study) for _ in range(3))
    s.service.enqueue_step()
    now = utc_now()
    with engines.write(s.queue.engine) as conn:
        conn.execute(
            insert(rejected_instance).values(
                sop_instance_uid=rejected.SOPInstanceUID, series_instance_uid=rejected.SeriesInstanceUID,
                study_instance_uid=study, sop_class_uid=rejected.SOPClassUID, code_value="113001",
                coding_scheme="DCM", rejection_note_uid=datagen.uid(), rejected_by="TEST", at=now,
            )
        )  # fmt: skip
    s.index.delete_entity(Level.IMAGE, study, str(deleted.SeriesInstanceUID), str(deleted.SOPInstanceUID))
    assert s.service.forward_step() == 3
    assert s.sender.sent == [kept.SOPInstanceUID]
    reasons = {i["sop_instance_uid"]: i["last_error"] for i in s.service.items("skipped")}
    assert "rejected" in reasons[rejected.SOPInstanceUID] and "deleted" in reasons[deleted.SOPInstanceUID]
    assert len(reasons) == 2 and [i["sop_instance_uid"] for i in s.service.items("sent")] == [
        kept.SOPInstanceUID
    ]
    # Skipped is final: a retry of failed items does not send them.
    assert s.service.retry() == 0 and s.service.forward_step() == 0


def test_sent_items_are_marked_a_batch_at_a_time_with_their_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Setup(tmp_path, route())
    study = datagen.uid()
    stored = [s.store(study_uid=study) for _ in range(12)]
    s.sender.refuse = {stored[5].SOPInstanceUID}
    s.service.enqueue_step()
    settles: list[dict[str, Any]] = []
    real = s.queue.settle

    def settle(owner: str, now: dt.datetime, **outcome: Any) -> int:
        settles.append(outcome)
        return real(owner, now, **outcome)

    monkeypatch.setattr(s.queue, "settle", settle)
    assert s.service.forward_step() == 11  # the Recorder takes 10 a send: two sends
    # At most one write per send (a failure flushes at once; else 16 items or 0.2 s, or
    # the end of the batch), not one per instance.
    outcomes = [(len(o.get("sent", ())), len(o.get("failures", ()))) for o in settles]
    assert 1 <= len(outcomes) <= 2 and [sum(n) for n in zip(*outcomes, strict=True)] == [11, 1], outcomes
    assert len(s.service.items("sent")) == 11
    [waiting] = s.service.items("queued")
    assert waiting["sop_instance_uid"] == stored[5].SOPInstanceUID and waiting["attempts"] == 1


def test_a_deidentifying_rule_is_checked_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dicomhub.bootstrap import open_archive
    from dicomhub.config import load_settings

    made: list[bool] = []

    def check(secret: str | None, **table: Any) -> None:
        # The archive reads the secret from the process environment, as serve does.
        if secret is None:
            monkeypatch.delenv("DICOMHUB_DEID_SECRET", raising=False)
        else:
            monkeypatch.setenv("DICOMHUB_DEID_SECRET", secret)
        rule = {"name": "anon", "to": [f"folder:{tmp_path}/out"], "deidentify": "proj", **table}
        settings = load_settings({"data_dir": tmp_path / "data", "routes": [rule]}, environ={})
        with open_archive(settings) as archive:
            try:
                archive.routing.check()
            finally:
                made.append(archive.deid.repo.project("proj") is not None)

    secret = "a-routing-secret-0123456789abcdef"
    with pytest.raises(ConfigurationError, match=r"\[\[route\]\] anon: deidentify 'proj': .*SECRET"):
        check(None)
    with pytest.raises(ConfigurationError, match="unknown de-identification option 'nope'"):
        check(secret, deidentify_options=["nope"])
    check(secret, deidentify_options=["retain-uids"])
    assert made == [False, False, False]  # checking makes no project
    with open_archive(load_settings({"data_dir": tmp_path / "data"}, environ={})) as archive:
        archive.deid.project_key("proj")  # made with this secret
    with pytest.raises(ConfigurationError, match="not the one project 'proj' was created with"):
        check("another-secret-0123456789abcdefgh")
    with pytest.raises(ConfigurationError, match="deidentify_options needs deidentify"):
        parse_routes([{"name": "r", "to": ["a"], "deidentify_options": ["retain-uids"]}])


def test_a_project_destination_deidentifies_into_the_archive_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicomhub.bootstrap import open_archive
    from dicomhub.config import load_settings
    from dicomhub.migrate.outbound import sender_factory

    monkeypatch.setenv("DICOMHUB_DEID_SECRET", "a-routing-secret-0123456789abcdef")
    rule = {"name": "anon", "to": ["project:trial"], "when": {"Modality": "CT"}}
    settings = load_settings({"data_dir": tmp_path / "data", "routes": [rule]}, environ={})
    with open_archive(settings) as archive:
        routing = archive.routing
        routing.begin()
        routing.use_senders(sender_factory(archive, settings))
        study = datagen.uid()
        sources = [datagen.make_dataset(study_uid=study, instance_number=n + 1) for n in range(2)]
        for ds in sources:
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            archive.ingest.store_part10(buf.getvalue(), Caller(Channel.DIMSE, "CT1"))
        routing.enqueue_step()
        assert routing.forward_step() == 2  # handed to one run of the project
        [run] = archive.deid.runs()
        assert (run["project"], run["kind"], run["total"], run["status"]) == (
            "trial",
            "archive",
            2,
            "pending",
        )
        assert run["source_study_uid"] == study and run["reason"] == "route anon"
        assert archive.deid.repo.claim_run("test-owner", stale_owner_prefix="none") == run["id"]
        done = archive.deid.run_now(run["id"], "test-owner")
        assert done["status"] == "done" and done["stored"] == 2
        made = {i["target_sop_instance_uid"] for i in done["items"]}
        assert made.isdisjoint(str(ds.SOPInstanceUID) for ds in sources)
        # The new study is CT too, so the rule matches it: skipped, not de-identified again.
        routing.enqueue_step()
        assert routing.forward_step() == 2
        skipped = {i["sop_instance_uid"]: i["last_error"] for i in routing.items("skipped")}
        assert set(skipped) == made and all("de-identification run" in e for e in skipped.values())
        assert len(archive.deid.runs()) == 1


def test_a_deidentifying_rule_writes_a_folder_under_the_replacement_uids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pydicom

    from dicomhub.bootstrap import open_archive
    from dicomhub.config import load_settings
    from dicomhub.migrate.outbound import sender_factory

    monkeypatch.setenv("DICOMHUB_DEID_SECRET", "a-routing-secret-0123456789abcdef")
    out = tmp_path / "out"
    rule = {"name": "anon", "to": [f"folder:{out}"], "deidentify": "trial", "transfer_syntax": "rle"}
    settings = load_settings({"data_dir": tmp_path / "data", "routes": [rule]}, environ={})
    with open_archive(settings) as archive:
        archive.routing.begin()
        archive.routing.use_senders(sender_factory(archive, settings))
        ds = datagen.make_dataset(patient_id="FOLDER-PID", patient_name="Folder^Patient")
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        archive.ingest.store_part10(buf.getvalue(), Caller(Channel.DIMSE, "CT1"))
        archive.routing.enqueue_step()
        assert archive.routing.forward_step() == 1
        [written] = list(out.iterdir())
        got = pydicom.dcmread(written)
        assert written.name == f"{got.SOPInstanceUID}.dcm" and got.SOPInstanceUID != ds.SOPInstanceUID
        assert got.PatientID != "FOLDER-PID" and "Folder" not in str(got.PatientName)
        assert str(got.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.5"  # de-identified, then transcoded
        [run] = archive.deid.runs()
        assert run["kind"] == "export" and run["reason"] == f"route anon to folder:{out}"
        assert run["status"] == "done" and run["stored"] == 1


def test_a_send_by_hand_queues_a_study_without_rules_and_sends_it_again_when_asked(tmp_path: Path) -> None:
    s = Setup(tmp_path)  # no rules at all: the forwarder still sends what is asked for
    study = datagen.uid()
    first, second = s.store(study_uid=study), s.store(study_uid=study, modality="MR")
    s.store()  # another study: not sent
    with pytest.raises(DicomhubError, match="no peer 'nowhere'"):
        s.service.send_study(study, "nowhere")
    with pytest.raises(DicomhubError, match="no study"):
        s.service.send_study(datagen.uid(), "pacs")
    assert s.service.send_study(study, "pacs")["queued"] == 2
    s.sender.down = True
    assert s.service.forward_step() == 0
    [failed] = s.service.sends(study)
    assert (failed["queued"], failed["sent"], failed["last_error"]) == (2, 0, "connection refused")
    s.sender.down = False
    s.due_now()
    assert s.service.forward_step() == 2
    assert sorted(s.sender.sent) == sorted([first.SOPInstanceUID, second.SOPInstanceUID])
    [done] = s.service.sends(study)
    assert (done["to"], done["queued"], done["sent"]) == ("pacs", 0, 2)
    # Asked again: the same items are due again (not deduplicated away), and go again.
    assert s.service.send_study(study, "pacs")["queued"] == 2
    assert s.service.forward_step() == 2 and len(s.sender.sent) == 4
    assert {d["route"] for d in s.service.depth()} == {"(send)"}
