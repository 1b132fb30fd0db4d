"""The trash and retention on a real archive (SQLite and PostgreSQL indexes, a folder
blob store, no server): a delete keeps instances and blobs in the trash, a restore
indexes them again with their keys and counts, a restore over UIDs stored again is a
conflict, purges (by hand and after the keep time) remove rows then blobs, access is
the delete's; retention rules take the studies they name, by Study Date or by receipt,
and run once per interval; durations and ``[[retention]]`` tables parse or are refused."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from dicomhub.bootstrap import open_archive
from dicomhub.config import InvalidSettings, load_settings
from dicomhub.errors import ConfigurationError, Conflict, NotFound
from dicomhub.index.schema import rejected_instance
from dicomhub.model.access import Access, Grant, Scope
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.retention import Duration, RetentionBasis, parse_duration, parse_retention_rules
from dicomhub.model.timestamps import utc_now
from dicomhub.services.access import Forbidden
from dicomhub.services.archive import Archive
from dicomhub.services.retention import RetentionService
from dicomhub.services.trash import TrashService
from tests import datagen

CLI = Caller.cli()


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


def _caller(grant: str) -> Caller:
    role, scope = grant.split("@")
    return Caller(
        Channel.HTTP, "bob", "127.0.0.1", principal="bob", access=Access.of([Grant(role, Scope.parse(scope))])
    )


@pytest.fixture
def archive(tmp_path: Path, index_url: str) -> Iterator[Archive]:
    rules = [
        {"name": "old-mr", "older_than": "365d", "modality": "MR"},
        {"name": "stale", "older_than": "1h", "by": "received", "source": "OLDCT"},
        {"name": "research", "older_than": "1d", "label": "research"},
    ]
    settings = load_settings(
        {"data_dir": tmp_path / "data", "database_url": index_url, "trash_keep": "7d", "retention": rules},
        environ={},
    )
    arch = open_archive(settings)
    yield arch
    arch.close()


def _store(archive: Archive, study: str, count: int, caller: Caller = CLI, **kwargs: object) -> list[Dataset]:
    made = [datagen.make_dataset(study_uid=study, instance_number=n + 1, **kwargs) for n in range(count)]  # type: ignore[arg-type]
    for ds in made:
        archive.ingest.store_part10(_encode(ds), caller)
    return made


def _live(archive: Archive) -> dict[str, str]:
    """SOP Instance UID -> blob key of every indexed instance."""
    from sqlalchemy import select

    from dicomhub.index.schema import instance

    with archive.index.engine.connect() as conn:
        return {
            str(u): str(k) for u, k in conn.execute(select(instance.c.sop_instance_uid, instance.c.blob_key))
        }


def _trashed(archive: Archive, study: str) -> dict[str, str]:
    return {e.sop_instance_uid: e.blob_key for e in archive.trash.repository.entries(study)}


def test_delete_keeps_in_the_trash_and_restore_brings_back(archive: Archive) -> None:
    study = datagen.uid()
    ct = _store(archive, study, 2, modality="CT", patient_id="T1", series_uid=datagen.uid())
    mr = _store(archive, study, 1, modality="MR", patient_id="T1")
    before = _live(archive)
    sops = {str(d.SOPInstanceUID) for d in [*ct, *mr]}
    seq = archive.index.last_change()

    result = archive.delete.delete_study(study, CLI, reason="wrong patient")
    assert result.trashed and set(result.instances) == sops
    assert _live(archive) == {}
    assert _trashed(archive, study) == before
    assert all(archive.blobs.exists(k) for k in before.values())
    (listed,) = archive.trash.studies(CLI)
    assert (listed.instances, listed.series, listed.modalities, listed.reasons) == (
        3,
        2,
        ("CT", "MR"),
        ("wrong patient",),
    )
    assert archive.trash.purge_at(listed) == listed.first_deleted_at + dt.timedelta(days=7)

    restored = archive.trash.restore(study, CLI)
    assert set(restored.restored) == sops and not restored.conflicts and not restored.failed
    assert _live(archive) == before
    assert archive.trash.studies(CLI) == []
    counts = archive.index.counts()
    assert (counts["studies"], counts["series"], counts["instances"]) == (1, 2, 3)
    created = {
        c["uid"]
        for c in archive.index.changes(seq)
        if c["change_type"] == "created" and c["level"] == "IMAGE"
    }
    assert created == sops
    with pytest.raises(NotFound):
        archive.trash.restore(study, CLI)


def test_restore_over_a_uid_stored_again_is_a_conflict_and_purge_removes_blobs(archive: Archive) -> None:
    study = datagen.uid()
    (ds,) = _store(archive, study, 1)
    archive.delete.delete_instance(study, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), CLI)
    (old_key,) = _trashed(archive, study).values()
    archive.ingest.store_part10(_encode(ds), CLI)  # stored again
    live = _live(archive)
    with pytest.raises(Conflict, match="stored again"):
        archive.trash.restore(study, CLI)
    assert _live(archive) == live and _trashed(archive, study) == {str(ds.SOPInstanceUID): old_key}

    purged = archive.trash.purge(study, CLI)
    assert (purged.studies, purged.instances) == ((study,), 1)
    assert not archive.blobs.exists(old_key)
    assert archive.blobs.exists(live[str(ds.SOPInstanceUID)])
    with pytest.raises(NotFound):
        archive.trash.purge(study, CLI)


def test_the_background_purge_waits_for_the_keep_time(archive: Archive) -> None:
    first, second = datagen.uid(), datagen.uid()
    _store(archive, first, 1)
    _store(archive, second, 1)
    archive.delete.delete_study(first, CLI)
    archive.delete.delete_study(second, CLI)
    keys = {**_trashed(archive, first), **_trashed(archive, second)}
    clock = [utc_now() + dt.timedelta(seconds=50)]
    purger = TrashService(archive.trash.repository, archive.index, archive.blobs, 60, clock=lambda: clock[0])
    assert purger.step() == 0
    assert all(archive.blobs.exists(k) for k in keys.values())
    clock[0] += dt.timedelta(seconds=11)
    assert purger.step() == 2
    assert not any(archive.blobs.exists(k) for k in keys.values())
    assert archive.trash.studies(CLI) == []


def test_trash_access_is_the_deletes(archive: Archive) -> None:
    a, b = datagen.uid(), datagen.uid()
    _store(archive, a, 1, patient_id="PA")
    _store(archive, b, 1, patient_id="PB")
    archive.access.add_label(a, "A")
    archive.delete.delete_study(a, CLI)
    archive.delete.delete_study(b, CLI)
    curator = _caller("curator@label:A")
    assert [s.study_instance_uid for s in archive.trash.studies(curator)] == [a]
    with pytest.raises(Forbidden):
        archive.trash.studies(_caller("reader@label:A"))
    with pytest.raises(Forbidden):  # it may see the study (label A) but not delete it
        archive.trash.restore(a, _caller("reader@label:A"))
    with pytest.raises(NotFound):
        archive.trash.restore(b, curator)
    with pytest.raises(Forbidden):
        archive.trash.purge_all(curator)
    assert archive.trash.restore(a, curator).restored
    assert archive.trash.purge_all(CLI).studies == (b,)


def test_delete_for_good_without_a_trash(tmp_path: Path, index_url: str) -> None:
    settings = load_settings(
        {"data_dir": tmp_path / "d", "database_url": index_url, "trash_keep": 0}, environ={}
    )
    with open_archive(settings) as archive:
        study = datagen.uid()
        _store(archive, study, 1)
        (key,) = _live(archive).values()
        assert not archive.delete.delete_study(study, CLI).trashed
        assert not archive.blobs.exists(key)
        assert archive.trash.studies(CLI) == []


def test_retention_rules_take_their_studies(archive: Archive) -> None:
    old_mr, old_ct, new_mr, sent, labelled = (datagen.uid() for _ in range(5))
    _store(archive, old_mr, 1, modality="MR", study_date="20100101")
    _store(archive, old_ct, 1, modality="CT", study_date="20100101")
    _store(archive, new_mr, 1, modality="MR", study_date=utc_now().strftime("%Y%m%d"))
    _store(archive, sent, 1, Caller(Channel.DIMSE, "OLDCT"), study_date=utc_now().strftime("%Y%m%d"))
    _store(archive, labelled, 1, study_date="20250101")
    archive.access.add_label(labelled, "research")
    service = archive.retention

    dry = service.run(dry_run=True)
    taken = {r.rule.name: {c.study_instance_uid for c in r.studies} for r in dry.rules}
    assert taken == {"old-mr": {old_mr}, "stale": set(), "research": {labelled}}
    assert archive.index.counts()["studies"] == 5  # a dry run deletes nothing

    later = RetentionService(
        service.repository,
        archive.delete,
        service.rules,
        3600,
        clock=lambda: utc_now() + dt.timedelta(hours=2),
    )
    assert later.step() == 0
    trashed = {s.study_instance_uid: s.reasons for s in archive.trash.studies(CLI)}
    assert trashed == {
        old_mr: ("retention rule old-mr",),
        sent: ("retention rule stale",),
        labelled: ("retention rule research",),
    }
    assert later.repository.last_run() is not None
    _store(archive, datagen.uid(), 1, modality="MR", study_date="20100101")
    assert later.step() == 0  # within the interval of the last run: nothing taken
    assert archive.index.counts()["studies"] == 3


def test_durations_and_retention_tables() -> None:
    assert parse_duration("7d") == 7 * 86400 and parse_duration(90) == 90 and parse_duration("1.5h") == 5400
    assert str(Duration(7 * 86400)) == "7d" and str(Duration(86400)) == "1d" and str(Duration(90)) == "90s"
    for bad in ("-1", "7 days", "", True, -5):
        with pytest.raises(ConfigurationError):
            parse_duration(bad)
    (rule,) = parse_retention_rules([{"name": "r", "older_than": "5y", "by": "received", "modality": "CT"}])
    assert (rule.older_than, rule.by, rule.modality) == (5 * 365 * 86400, RetentionBasis.RECEIVED, "CT")
    for table, words in (
        ({"name": "r"}, "older_than is required"),
        ({"name": "r", "older_than": "1d", "by": "study_time"}, "by must be"),
        ({"name": "r", "older_than": "1d", "action": "archive"}, "action delete or reject"),
        ({"name": "r", "older_than": "1d", "colour": "x"}, "unknown key"),
        ({"name": "bad name", "older_than": "1d"}, "name must be"),
        ({"name": "r", "older_than": 0}, "more than 0"),
    ):
        with pytest.raises(ConfigurationError, match=words):
            parse_retention_rules([table])
    with pytest.raises(ConfigurationError, match="same name"):
        parse_retention_rules([{"name": "r", "older_than": "1d"}, {"name": "r", "older_than": "2d"}])


def test_retention_and_trash_settings_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "dicomhub.toml"
    path.write_text(
        '[dicomhub]\ntrash_keep = "2w"\nretention_interval = "12h"\n\n'
        '[[retention]]\nname = "old"\nolder_than = "10y"\n',
        encoding="utf-8",
    )
    settings = load_settings(config_file=path, environ={})
    assert (settings.trash_keep, settings.retention_interval) == (14 * 86400, 12 * 3600)
    assert [r.name for r in settings.retention] == ["old"]
    assert load_settings(environ={"DICOMHUB_TRASH_KEEP": "0"}).trash_keep == 0
    assert load_settings(environ={}).trash_keep == 7 * 86400
    path.write_text('[[retention]]\nname = "old"\nolder_than = "ten years"\n', encoding="utf-8")
    with pytest.raises(InvalidSettings, match="older_than"):
        load_settings(config_file=path, environ={})


def test_a_reject_rule_rejects_its_studies_for_retention_expiry(tmp_path: Path, index_url: str) -> None:
    rules = [{"name": "expired", "older_than": "365d", "action": "reject", "modality": "CT"}]
    settings = load_settings(
        {"data_dir": tmp_path / "data", "database_url": index_url, "retention": rules}, environ={}
    )
    archive = open_archive(settings)
    try:
        old, new = datagen.uid(), datagen.uid()
        stored = _store(archive, old, 2, modality="CT", study_date="20100101")
        _store(archive, new, 1, modality="CT", study_date=utc_now().strftime("%Y%m%d"))
        (dry,) = archive.retention.run(dry_run=True).rules
        assert [c.study_instance_uid for c in dry.studies] == [old] and dry.rule.action.value == "reject"
        assert archive.index.counts()["instances"] == 3  # a dry run rejects nothing

        (ran,) = archive.retention.run().rules
        assert ran.rejected == [old] and ran.deleted == [] and ran.failed == []
        with archive.index.engine.connect() as conn:
            rows = conn.execute(
                select(rejected_instance.c.sop_instance_uid, rejected_instance.c.code_value).where(
                    rejected_instance.c.study_instance_uid == old
                )
            ).all()
        assert sorted(rows) == sorted((str(d.SOPInstanceUID), "113039") for d in stored)
        (event,) = [e for e in archive.audit.events(old) if e.detail.get("retention") == "expired"]
        assert event.detail["action"] == "reject" and event.detail["rejected"] == "113039"
        # Hidden like every rejected instance (and, for this title, deleted): only the note is left.
        assert archive.wado.instances(CLI, new) and _sops(archive, old) == {event.detail["rejection_note"]}
        # Done once: the next run takes nothing (only the note is left of the study).
        (again,) = archive.retention.run().rules
        assert again.studies == [] and again.rejected == []
    finally:
        archive.close()


def _sops(archive: Archive, study: str) -> set[str]:
    try:
        return {r.sop_instance_uid for r in archive.wado.instances(CLI, study)}
    except NotFound:
        return set()
