"""Server-side de-identification on a real archive (SQLite index, file blobs), no server process:
runs, the governed mapping, burned-in policies, resumption, tokens, grants and the audit log."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select

from dicomhub.bootstrap import open_archive
from dicomhub.config import ConfigurationError, DeidExport, MaskRegion, load_settings
from dicomhub.deid import Profile
from dicomhub.errors import Conflict, DeidentificationError, InvalidRequest, NotFound
from dicomhub.index import engine as engines
from dicomhub.index.schema import api_token, deid_run
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.query import query_from_identifier
from dicomhub.services.archive import Archive
from dicomhub.services.deidentify import SecretChanged
from dicomhub.services.governance import Forbidden, Unauthenticated
from tests import deid_server_data as data

CLI = Caller.cli()
ALICE = Caller(Channel.HTTP, "alice", "127.0.0.9")


def _open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secret: str | None = data.SECRET, **kw: object
) -> Archive:
    if secret is None:
        monkeypatch.delenv("DICOMHUB_DEID_SECRET", raising=False)
    else:
        monkeypatch.setenv("DICOMHUB_DEID_SECRET", secret)
    return open_archive(load_settings({"data_dir": tmp_path / "data", **kw}, environ={}))


@pytest.fixture
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Archive:
    arch = _open(tmp_path, monkeypatch)
    yield arch  # type: ignore[misc]
    arch.close()


def _store(archive: Archive, study: data.Study) -> None:
    for ds in study.datasets:
        archive.ingest.store_part10(data.encode(ds), CLI)


def _stored(archive: Archive, sop_instance_uid: str) -> Dataset:
    row = archive.index.get_instance(sop_instance_uid)
    assert row is not None, sop_instance_uid
    return dcmread(io.BytesIO(archive.blobs.read(row.blob_key)))


def _run(archive: Archive, study: data.Study, **kw: object) -> dict[str, object]:
    run = archive.deid.start_run(
        "P1", "a research export", CLI, study_uid=study.study_uid, owner="test", **kw
    )  # type: ignore[arg-type]
    return archive.deid.run_now(int(run["id"]), "test")


def test_a_study_becomes_a_new_linked_study_with_nothing_identifying(archive: Archive) -> None:
    study = data.make_study(capture=True)
    _store(archive, study)
    run = _run(archive, study)

    assert run["status"] == "done"
    assert (run["total"], run["stored"], run["refused"], run["failed"]) == (8, 7, 1, 0)
    assert run["source_study_uid"] == study.study_uid
    target = str(run["target_study_uid"])
    assert target.startswith("2.25.") and target != study.study_uid
    items = {i["source_sop_instance_uid"]: i for i in run["items"]}  # type: ignore[attr-defined]
    assert items[str(study.capture.SOPInstanceUID)]["status"] == "refused"  # type: ignore[union-attr]
    assert "burned-in" in items[str(study.capture.SOPInstanceUID)]["detail"]  # type: ignore[union-attr]

    new_uids = set()
    new_series = set()
    outputs = []
    for source, item in items.items():
        if item["status"] != "stored":
            continue
        ds = _stored(archive, item["target_sop_instance_uid"])
        outputs.append(ds)
        new_uids.add(str(ds.SOPInstanceUID))
        new_series.add(str(ds.SeriesInstanceUID))
        assert ds.StudyInstanceUID == target
        assert ds.PatientIdentityRemoved == "YES"
        values = data.all_values(ds)
        assert not values & study.uids, f"an original UID survives in {source}"
        for identifier in data.IDENTIFIERS:
            assert not any(identifier in v for v in values), f"{identifier} survives in {source}"
    # One Frame of Reference in, one out: the images still share it.
    assert len({str(d.FrameOfReferenceUID) for d in outputs if "FrameOfReferenceUID" in d}) == 1
    (sr,) = [d for d in outputs if d.Modality == "SR"]
    cited = data.referenced_uids(sr)
    assert cited and cited <= new_uids | new_series, "the SR cites objects of the new study only"
    assert len(cited & new_uids) == 6

    # The mapping holds the originals; the run's source study is still there, unchanged.
    pk, _key = archive.deid.project_key("P1")
    assert archive.deid.repo.mapping_count(pk) >= 8
    assert _stored(archive, str(study.images[0].SOPInstanceUID)).PatientID == data.PATIENT_ID


def test_a_second_run_finds_every_object_already_present(archive: Archive) -> None:
    study = data.make_study()
    _store(archive, study)
    first = _run(archive, study)
    pk, _key = archive.deid.project_key("P1")
    mappings = archive.deid.repo.mapping_count(pk)
    second = _run(archive, study)
    assert (second["stored"], second["already_present"]) == (0, first["stored"])
    assert second["target_study_uid"] == first["target_study_uid"]
    assert archive.deid.repo.mapping_count(pk) == mappings
    assert archive.index.counts()["instances"] == 2 * len(study.datasets)


def test_a_run_left_running_by_a_dead_server_is_taken_over_and_finishes(archive: Archive) -> None:
    study = data.make_study()
    _store(archive, study)
    run = archive.deid.start_run("P1", "resume", CLI, study_uid=study.study_uid)
    run_id = int(run["id"])
    # A server process claimed it, stored two objects and died before recording them.
    assert archive.deid.repo.claim_run("server:1") == run_id
    _pk, key = archive.deid.project_key("P1")
    # What the worker does with a batch, without the transaction that records it.
    outcomes = [
        archive.deid._prepare(str(d.SOPInstanceUID), Profile(), key, "refuse", ()) for d in study.images[:2]
    ]
    archive.deid._store_batch(outcomes)
    assert [o.status for o in outcomes] == ["stored", "stored"]
    assert archive.deid.repo.claim_run("server:2") is None  # not without a stale-owner takeover
    assert archive.deid.repo.claim_run("server:2", stale_owner_prefix="server:") == run_id
    while archive.deid._step_run(run_id):
        pass
    done = archive.deid.run(run_id)
    assert done["status"] == "done"
    assert (done["stored"], done["already_present"]) == (len(study.datasets) - 2, 2)
    assert archive.index.counts()["instances"] == 2 * len(study.datasets)


def test_a_series_run_takes_only_that_series(archive: Archive) -> None:
    study = data.make_study()
    _store(archive, study)
    run = archive.deid.start_run(
        "P1", "one series", CLI, study_uid=study.study_uid, series_uid=study.series_uids[1]
    )
    assert run["total"] == 3 and run["source_series_uid"] == study.series_uids[1]
    other = data.make_study(images_per_series=1)
    _store(archive, other)
    with pytest.raises(InvalidRequest, match="is not in study"):
        archive.deid.start_run("P1", "x", CLI, study_uid=study.study_uid, series_uid=other.series_uids[0])


def test_run_refusals(archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = data.make_study(images_per_series=1)
    _store(archive, study)
    with pytest.raises(InvalidRequest, match="reason"):
        archive.deid.start_run("P1", " ", CLI, study_uid=study.study_uid)
    with pytest.raises(NotFound):
        archive.deid.start_run("P1", "why", CLI, study_uid=data.make_study().study_uid)
    with pytest.raises(InvalidRequest):
        archive.deid.start_run("P1", "why", CLI, study_uid="../../etc/passwd")
    with pytest.raises(DeidentificationError, match="unknown de-identification option"):
        archive.deid.start_run("P1", "why", CLI, study_uid=study.study_uid, options=["retain-everything"])
    with pytest.raises(InvalidRequest, match="mask regions"):
        archive.deid.start_run("P1", "why", CLI, study_uid=study.study_uid, burned_in="mask")
    assert archive.deid.runs() == []


def test_a_changed_or_missing_secret_is_refused_and_never_stored(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = data.make_study(images_per_series=1)
    _store(archive, study)
    _run(archive, study)
    other = _open(tmp_path, monkeypatch, secret="another-secret-also-long-enough-42")
    with pytest.raises(SecretChanged, match="not the one project 'P1' was created with") as refused:
        other.deid.start_run("P1", "why", CLI, study_uid=study.study_uid)
    assert data.SECRET not in str(refused.value)
    none = _open(tmp_path, monkeypatch, secret=None)
    with pytest.raises(DeidentificationError, match="no de-identification secret"):
        none.deid.start_run("P1", "why", CLI, study_uid=study.study_uid)
    other.close()
    none.close()
    index = (tmp_path / "data" / "index.sqlite").read_bytes()
    for suffix in ("-wal", "-shm"):
        extra = tmp_path / "data" / f"index.sqlite{suffix}"
        if extra.exists():
            index += extra.read_bytes()
    assert data.SECRET.encode() not in index


def test_the_mask_policy_blanks_the_regions_and_declares_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _open(tmp_path, monkeypatch, deid_burned_in="mask", deid_mask=["2,3,4,5"])
    study = data.make_study(images_per_series=1, capture=True)
    _store(archive, study)
    run = _run(archive, study)
    assert run["refused"] == 0 and run["failed"] == 0
    (item,) = [i for i in run["items"] if i["source_sop_instance_uid"] == study.capture.SOPInstanceUID]  # type: ignore[attr-defined,union-attr]
    assert item["status"] == "stored" and item["detail"].startswith("masked 1 region")
    masked = _stored(archive, item["target_sop_instance_uid"])
    assert masked.BurnedInAnnotation == "NO"
    pixels = masked.pixel_array
    assert (pixels[3:8, 2:6] == 0).all()
    outside = np.ones_like(pixels, dtype=bool)
    outside[3:8, 2:6] = False
    assert (pixels[outside] == 1000).all()
    # Images without a burned-in risk are not touched.
    (image_item,) = [
        i for i in run["items"] if i["source_sop_instance_uid"] == study.images[0].SOPInstanceUID
    ]  # type: ignore[attr-defined,union-attr]
    image = _stored(archive, image_item["target_sop_instance_uid"])
    assert bytes(image.PixelData) == bytes(study.images[0].PixelData)
    archive.close()


def test_allow_policy_stores_the_capture_and_says_so(archive: Archive) -> None:
    study = data.make_study(images_per_series=1, capture=True)
    _store(archive, study)
    run = _run(archive, study, burned_in="allow")
    assert run["stored"] == len(study.datasets)
    details = [i["detail"] or "" for i in run["items"]]  # type: ignore[attr-defined]
    assert any(d.startswith("allowed with burned-in risk") for d in details)


def test_preview_lists_actions_and_stores_nothing(archive: Archive) -> None:
    study = data.make_study(images_per_series=1)
    _store(archive, study)
    before = archive.index.counts()["instances"]
    report = archive.deid.preview("P1", str(study.images[0].SOPInstanceUID), [], ALICE)
    assert report["sop_instance_uid"].startswith("2.25.")
    tags = {a["tag"] for a in report["actions"] if "[" not in a["path"]}
    assert {"(0010,0010)", "(0010,0020)", "(0020,000D)"} <= tags
    assert archive.index.counts()["instances"] == before
    (event,) = archive.governance.audit_events(actor="alice")
    assert event["action"] == "deid-preview"


def test_reidentification_needs_the_grant_and_every_attempt_is_audited(archive: Archive) -> None:
    study = data.make_study(images_per_series=1)
    _store(archive, study)
    run = _run(archive, study)
    target = str(run["target_study_uid"])
    events = len(archive.governance.audit_events())

    with pytest.raises(Unauthenticated):
        archive.deid.reidentify("P1", [target], None, ALICE)
    with pytest.raises(Forbidden):
        archive.deid.reidentify("P1", [target], "alice", ALICE)
    archive.governance.grant("alice", "reidentifier", "P2", "admin")
    with pytest.raises(Forbidden):  # a grant on another project is no grant on this one
        archive.deid.reidentify("P1", [target], "alice", ALICE)
    archive.governance.grant("alice", "reidentifier", "P1", "admin")
    found = archive.deid.reidentify("P1", [target, "2.25.1"], "alice", ALICE)
    assert found[target] == [{"kind": "uid", "original": study.study_uid}]
    assert found["2.25.1"] == []

    log = archive.governance.audit_events()
    assert len(log) == events + 4
    attempts = [e for e in log if e["action"] == "reidentify"]
    assert [e["outcome"] for e in reversed(attempts)] == [
        "unauthenticated",
        "forbidden",
        "forbidden",
        "allowed",
    ]
    assert all(e["source_address"] == "127.0.0.9" and e["project"] == "P1" for e in attempts)
    assert study.study_uid not in str(attempts), "the audit log records what was asked, not the originals"


def test_tokens_are_stored_as_digests_and_can_be_revoked(archive: Archive) -> None:
    token_id, token = archive.governance.create_token("svc-research", "ci")
    assert archive.governance.principal_of(f"Bearer {token}") == "svc-research"
    assert archive.governance.principal_of(f"bearer   {token}") == "svc-research"
    for bad in (None, "", token, f"Basic {token}", f"Bearer {token}x", "Bearer dh_"):
        assert archive.governance.principal_of(bad) is None
    with engines.read(archive.deid.repo.engine) as conn:
        stored = conn.execute(select(api_token.c.token_sha256)).scalars().all()
    assert token not in stored and len(stored) == 1
    assert archive.governance.revoke_tokens("svc-research", token_id) == 1
    assert archive.governance.principal_of(f"Bearer {token}") is None
    assert archive.governance.tokens("svc-research")[0]["revoked_at"] is not None
    with pytest.raises(InvalidRequest):
        archive.governance.create_token("  ")
    with pytest.raises(InvalidRequest):
        archive.governance.grant("alice", "superuser", "P1", "admin")


def test_export_items_announce_replacement_uids_and_record_the_export(archive: Archive) -> None:
    study = data.make_study(images_per_series=1, capture=True)
    _store(archive, study)
    query = query_from_identifier(_ident(StudyInstanceUID=study.study_uid), "STUDY")
    rows = archive.retrieve.instances(query, CLI)
    items = archive.deid.export_items("P1", [], "PEER", rows, ALICE)
    sent = 0
    for item in items:
        if item.sop_class_uid == study.capture.SOPClassUID:  # type: ignore[union-attr]
            with pytest.raises(InvalidRequest, match="burned-in"):
                item.read()
            continue
        raw = item.read()
        assert data.PATIENT_ID.encode() not in raw and data.ACCESSION.encode() not in raw
        sent += 1
    runs = archive.deid.runs()
    assert runs[0]["kind"] == "export" and runs[0]["destination"] == "PEER"
    assert runs[0]["status"] == "done" and (runs[0]["stored"], runs[0]["refused"]) == (sent, 1)
    (event,) = [e for e in archive.governance.audit_events() if e["action"] == "deid-export"]
    assert event["actor"] == "alice" and event["detail"]["destination"] == "PEER"


def _ident(**keys: str) -> Dataset:
    ds = Dataset()
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def test_settings_for_the_server_side() -> None:
    s = load_settings(
        {
            "deid_export": ["RESEARCH=P1:retain-uids,clean-descriptors", "TEACH=P2"],
            "deid_mask": ["0,0,10,20"],
        },
        environ={},
    )
    assert s.deid_export_for("RESEARCH") == DeidExport("RESEARCH", "P1", ("retain-uids", "clean-descriptors"))
    assert s.deid_export_for("TEACH") == DeidExport("TEACH", "P2", ())
    assert s.deid_export_for("OTHER") is None
    assert s.deid_mask == (MaskRegion(0, 0, 10, 20),)
    env = load_settings(
        environ={"DICOMHUB_DEID_EXPORT": "A=P1:retain-uids;B=P2", "DICOMHUB_DEID_BURNED_IN": "allow"}
    )
    assert [p.ae_title for p in env.deid_export] == ["A", "B"] and env.deid_burned_in == "allow"
    for bad in (
        {"deid_export": ["NOPROJECT"]},
        {"deid_export": ["A=P1:retain-everything"]},
        {"deid_mask": ["1,2,3"]},
        {"deid_burned_in": "blur"},
    ):
        with pytest.raises(ConfigurationError):
            load_settings(bad, environ={})
    with pytest.raises(ConfigurationError, match="region"):
        load_settings({"deid_burned_in": "mask"}, environ={})


def test_run_rows_keep_the_who_when_why(archive: Archive) -> None:
    study = data.make_study(images_per_series=1)
    _store(archive, study)
    archive.deid.start_run("P1", "teaching file", ALICE, study_uid=study.study_uid, options=["retain-uids"])
    with engines.read(archive.deid.repo.engine) as conn:
        row = conn.execute(select(deid_run)).mappings().one()
    assert (row["actor"], row["source_address"], row["reason"]) == ("alice", "127.0.0.9", "teaching file")
    assert "retain_uids" in row["options"] and row["created_at"] is not None


def test_a_mapping_keeps_its_first_run_and_projects_are_separate(archive: Archive) -> None:
    repo = archive.deid.repo
    p1, _ = repo.ensure_project("P1", "f1")
    p2, _ = repo.ensure_project("P2", "f2")
    assert repo.ensure_project("P1", "changed") == (p1, "f1")  # the first fingerprint stays
    repo.add_mappings(p1, None, [("uid", "1.2.3", "2.25.9"), ("patient_id", "PID", "X1")])
    # Again with an overlap (another run, another process): no error, nothing doubled.
    repo.add_mappings(p1, None, [("uid", "1.2.3", "2.25.9"), ("uid", "1.2.4", "2.25.10")])
    repo.add_mappings(p2, None, [("uid", "1.2.3", "2.25.77")])
    assert repo.mapping_count(p1) == 3 and repo.mapping_count(p2) == 1
    assert repo.originals(p1, ["2.25.9", "X1", "2.25.77"]) == {
        "2.25.9": [("uid", "1.2.3")],
        "X1": [("patient_id", "PID")],
        "2.25.77": [],
    }


def test_only_the_process_a_run_was_started_for_runs_it_now(archive: Archive) -> None:
    study = data.make_study(images_per_series=1)
    _store(archive, study)
    pending = archive.deid.start_run("P1", "for the server", CLI, study_uid=study.study_uid)
    assert pending["status"] == "pending"
    with pytest.raises(Conflict):
        archive.deid.run_now(int(pending["id"]), "cli:1")
    mine = archive.deid.start_run("P1", "here", CLI, study_uid=study.study_uid, owner="cli:2")
    assert mine["status"] == "running" and mine["started_at"] is not None
    assert archive.deid.repo.claim_run("server:3") == pending["id"]  # a server takes the pending one only
    assert archive.deid.repo.claim_run("server:3") is None
    assert archive.deid.run_now(int(mine["id"]), "cli:2")["status"] == "done"
