"""Reconciliation of inventories, and the migration tables (real SQLite index)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from dicomhub.bootstrap import open_archive
from dicomhub.config import Settings
from dicomhub.errors import Conflict, DicomhubError, InvalidRequest, NotFound
from dicomhub.index.schema import migration_job
from dicomhub.migrate.runner import Migrator
from dicomhub.model.caller import Caller
from dicomhub.model.migration import (
    Difference,
    Inventory,
    InventoryInstance,
    InventorySeries,
    InventoryStudy,
    JobState,
    RemoteArchive,
    RemoteKind,
    reconcile,
)
from dicomhub.services.archive import Archive
from tests import datagen


def inventory(*studies: tuple[str, str, dict[str, list[str]]]) -> Inventory:
    inv = Inventory()
    for uid, patient_id, series in studies:
        study = InventoryStudy(uid, patient_id, "DOE^JANE", "20240101", "A1")
        for series_uid, sops in series.items():
            study.series[series_uid] = InventorySeries(
                series_uid, "CT", {s: InventoryInstance(s, "1.2", f"sha-{s}") for s in sops}
            )
        inv.studies[uid] = study
    return inv


def test_reconcile_reports_each_kind_of_difference() -> None:
    source = inventory(
        ("1", "P", {"1.1": ["a", "b"]}),
        ("2", "P", {"2.1": ["c"]}),
        ("3", "P", {"3.1": ["d", "e"]}),
        ("4", "P", {"4.1": ["f"]}),
        ("5", "P", {"5.1": ["g"]}),
    )
    target = inventory(
        ("1", "P", {"1.1": ["a", "b"]}),  # the same
        ("3", "P", {"3.1": ["d"], "3.2": ["x"]}),  # an instance gone, a series more
        ("4", "Q", {"4.1": ["f"]}),  # another PatientID
        ("5", "P", {"5.1": ["g"]}),
        ("6", "P", {"6.1": ["h"]}),  # only in the target
    )
    target.studies["5"].series["5.1"].instances["g"] = InventoryInstance("g", "1.2", "other")
    target.studies["1"].patient_name = "DOE^JANE^^^"  # the same person name
    report = reconcile(source, target)
    by_uid = {s.study_instance_uid: s for s in report.studies}
    assert by_uid["1"].clean and by_uid["1"].status == "both"
    assert by_uid["2"].differences == [Difference.MISSING_IN_TARGET]
    assert by_uid["6"].differences == [Difference.MISSING_IN_SOURCE]
    assert by_uid["3"].differences == [Difference.SERIES_COUNT, Difference.INSTANCE_COUNT]
    assert by_uid["3"].instances_only_in_source == ["e"]
    assert by_uid["3"].series_only_in_target == ["3.2"]
    assert by_uid["4"].attributes == {"PatientID": ("P", "Q")}
    assert by_uid["5"].differences == [Difference.CONTENT] and by_uid["5"].content_differs == ["g"]
    assert not report.clean
    assert report.counts()["both"] == 1
    assert [s["study_instance_uid"] for s in report.as_json()["studies"]] == ["2", "3", "4", "5", "6"]
    # A selection compares only its studies.
    assert reconcile(source, target, only=["1"]).clean


def test_content_is_compared_only_where_both_sides_give_a_digest() -> None:
    source = inventory(("1", "P", {"1.1": ["a"]}))
    source.studies["1"].series["1.1"].instances["a"] = InventoryInstance("a", "1.2", "")
    assert reconcile(source, inventory(("1", "P", {"1.1": ["a"]}))).clean


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    opened = open_archive(Settings(data_dir=tmp_path / "data"))
    yield opened  # type: ignore[misc]
    opened.close()


def test_remotes_are_validated_and_unique(archive: Archive) -> None:
    service = archive.migration
    service.add_remote(RemoteArchive("pacs", RemoteKind.DIMSE, ae_title="PACS", host="127.0.0.1", port=104))
    with pytest.raises(Conflict):
        service.add_remote(RemoteArchive("pacs", RemoteKind.FOLDER, path="/x"))
    with pytest.raises(InvalidRequest):
        service.add_remote(RemoteArchive("../x", RemoteKind.FOLDER, path="/x"))
    with pytest.raises(InvalidRequest):
        service.add_remote(RemoteArchive("web", RemoteKind.DICOMWEB, url="file:///etc/passwd"))
    with pytest.raises(InvalidRequest):
        service.add_remote(RemoteArchive("x", RemoteKind.DIMSE, ae_title="A" * 17, host="h", port=1))
    assert [r.name for r in service.remotes()] == ["pacs"]
    service.remove_remote("pacs")
    with pytest.raises(NotFound):
        service.remote("pacs")


def test_folder_inventory_round_trip_and_reconcile_with_the_archive(archive: Archive, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    datasets = datagen.write_ct_series(folder, 3, rows=8, cols=8)
    archive.migration.add_remote(RemoteArchive("files", RemoteKind.FOLDER, path=str(folder)))
    migrator = Migrator(archive, Settings(data_dir=tmp_path / "data"))
    inv = migrator.inventory("files")
    assert inv.instance_count == 3 and all(
        i.content_sha256
        for s in inv.studies.values()
        for se in s.series.values()
        for i in se.instances.values()
    )
    report = archive.migration.reconcile("files")
    assert [s.status for s in report.studies] == ["missing-in-target"]
    for path in sorted(folder.iterdir())[:2]:
        archive.ingest.store_part10_file(path, Caller.cli())
    report = archive.migration.reconcile("files")
    assert report.studies[0].instances_only_in_source == [str(datasets[2].SOPInstanceUID)]

    owner = "cli:test:1"
    job_id, resumed = migrator.start("files", {}, 2, owner)
    assert not resumed
    assert migrator.run(job_id, owner).value == "done"
    job = archive.migration.job(job_id)
    assert job["reconcile_clean"] is True and job["progress"]["series_done"] == 1
    assert archive.migration.reconcile("files").clean


def test_jobs_are_claimed_once_and_taken_over_when_abandoned(archive: Archive, tmp_path: Path) -> None:
    service = archive.migration
    service.add_remote(RemoteArchive("files", RemoteKind.FOLDER, path=str(tmp_path)))
    job_id = service.create_job("files", {"since": "20200101", "modality": "CT"}, 2)
    with pytest.raises(Conflict):
        service.create_job("files", {}, 2)
    with pytest.raises(InvalidRequest):
        service.create_job("files", {"since": "2020-01-01"}, 2)
    repo = service.repo
    now = dt.datetime.now(dt.UTC)
    assert repo.claim_job(None, "server:a:1", now - dt.timedelta(seconds=15)) == job_id
    assert repo.claim_job(None, "server:b:2", now - dt.timedelta(seconds=15)) is None  # heartbeat fresh
    assert repo.claim_job(None, "server:b:2", now + dt.timedelta(seconds=1), owners_like="cli:%") is None
    assert repo.claim_job(None, "server:b:2", now + dt.timedelta(seconds=1), owners_like="server:%") == job_id
    assert service.stop(job_id)["state"] == "stopping"
    with pytest.raises(Conflict):
        service.resume(job_id)  # still stopping: its runner has not stopped yet
    repo.set_job_state(job_id, JobState.STOPPED)
    assert service.resume(job_id)["state"] == "pending"
    assert service.stop(job_id)["state"] == "stopped"  # a pending job stops at once
    assert json.loads(json.dumps(service.jobs()))[0]["selection"] == {"modality": "CT", "since": "20200101"}
    # A runner that stopped beating (killed) leaves a job that can be resumed.
    repo.claim_job(job_id, "cli:gone:1", now + dt.timedelta(days=1))
    with pytest.raises(Conflict):
        service.resume(job_id)
    with repo.engine.begin() as conn:
        conn.execute(
            migration_job.update().values(heartbeat_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
        )
    assert service.resume(job_id)["state"] == "pending"


def test_push_and_deid_steps_are_validated(archive: Archive, tmp_path: Path) -> None:
    service = archive.migration
    service.add_remote(RemoteArchive("files", RemoteKind.FOLDER, path=str(tmp_path)))
    with pytest.raises(InvalidRequest, match="folder"):
        service.create_job("files", {}, 2, direction="push")
    with pytest.raises(InvalidRequest, match="direction"):
        service.create_job("files", {}, 2, direction="sideways")
    with pytest.raises(InvalidRequest, match="reason"):
        service.create_job("files", {}, 2, transform={"project": "P", "reason": " "})
    with pytest.raises(InvalidRequest, match="unknown deid keys"):
        service.create_job("files", {}, 2, transform={"project": "P", "reason": "r", "run": 1})
    assert service.jobs() == []


def test_deidentifying_pull_from_a_folder_reconciles_in_the_mapped_space(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMHUB_DEID_SECRET", "a-unit-test-secret-of-enough-length-42")
    folder = tmp_path / "folder"
    datasets = datagen.write_ct_series(folder, 3, rows=8, cols=8)
    archive.migration.add_remote(RemoteArchive("files", RemoteKind.FOLDER, path=str(folder)))
    migrator = Migrator(archive, Settings(data_dir=tmp_path / "data"))
    owner = "cli:test:1"
    steps = {"project": "UNIT", "reason": "unit test", "options": [], "actor": "tester"}
    job_id, _ = migrator.start("files", {}, 1, owner, transform=steps)
    assert migrator.run(job_id, owner).value == "done"
    _pk, key = archive.deid.project_key("UNIT")
    held = archive.migration.repo.local_inventory()
    assert set(held.studies) == {key.uid(str(datasets[0].StudyInstanceUID))}
    (study,) = held.studies.values()
    assert study.patient_id != str(datasets[0].PatientID)
    assert {sop for s in study.series.values() for sop in s.instances} == {
        key.uid(str(ds.SOPInstanceUID)) for ds in datasets
    }
    # Compared as they are, source and target differ; mapped through the project, they match.
    assert not archive.migration.reconcile("files").clean
    assert archive.migration.reconcile(
        "files", map_source=lambda inv: archive.deid.mapped_inventory("UNIT", [], inv)
    ).clean
    run = archive.deid.run(archive.migration.job(job_id)["transform"]["run"])
    assert (run["kind"], run["actor"], run["reason"], run["status"], run["stored"]) == (
        "migration", "tester", "unit test", "done", 3,
    )  # fmt: skip
    # An unfinished job is resumed only as it was created (here: without the step).
    archive.migration.create_job("files", {}, 1)
    with pytest.raises(DicomhubError, match="without de-identification"):
        migrator.start("files", {}, 1, owner, transform=steps)


def test_stow_rs_bodies_and_failed_sop_sequences() -> None:
    from dicomhub.migrate.targets import _failed, _multipart

    body = b"".join(_multipart(b"XyZ", [b"one", b"two"]))
    assert body == (
        b"--XyZ\r\nContent-Type: application/dicom\r\n\r\none\r\n"
        b"--XyZ\r\nContent-Type: application/dicom\r\n\r\ntwo\r\n--XyZ--\r\n"
    )
    answer = {
        "00081198": {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": ["1.2.3"]}, "00081197": {"vr": "US", "Value": [0xC122]}},
            {"00081155": {"vr": "UI", "Value": ["1.2.4"]}},
        ]},
    }  # fmt: skip
    assert _failed(answer) == {"1.2.3": 0xC122, "1.2.4": 0xC000}
    assert _failed({}) == {} and _failed([]) == {}
