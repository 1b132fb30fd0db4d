"""Access control on a real archive (SQLite and PostgreSQL indexes, no server):
grants turned into SQL filters (results, counts, paging), tokens, labels, the
store check and ingest label rules, the audit log, and migration 0009."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from pydicom.dataset import Dataset

from dicomhub.bootstrap import open_archive
from dicomhub.config import load_settings
from dicomhub.errors import InvalidRequest, NotFound
from dicomhub.index.engine import _alembic_config, connect_engine, migrate
from dicomhub.model.access import Access, Action, Grant, Scope, StudyFacts
from dicomhub.model.audit import AuditAction, AuditedStudy, AuditEvent, AuditOutcome
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.query import query_from_identifier
from dicomhub.services.access import Forbidden
from dicomhub.services.archive import Archive
from tests import datagen

CLI = Caller.cli()


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


def _caller(*grants: str, ae: str = "") -> Caller:
    parsed = [Grant(g.split("@")[0], Scope.parse(g.split("@")[1])) for g in grants]
    channel = Channel.DIMSE if ae else Channel.HTTP
    return Caller(channel, ae or "bob", "127.0.0.1", principal="bob", access=Access.of(parsed))


@pytest.fixture
def archive(tmp_path: Path, index_url: str) -> Archive:
    settings = load_settings(
        {
            "data_dir": tmp_path / "data",
            "database_url": index_url,
            "label_rules": ["CARDIO=calling_ae:CATHLAB", "MRI=Modality:MR"],
        },
        environ={},
    )
    arch = open_archive(settings)
    yield arch  # type: ignore[misc]
    arch.close()


@pytest.fixture
def three_studies(archive: Archive) -> list[str]:
    """P1 has studies A (label A) and B (no label), P2 has study C (label C)."""
    uids = [datagen.uid() for _ in range(3)]
    for uid, pid in zip(uids, ("P1", "P1", "P2"), strict=True):
        for n in range(2):
            archive.ingest.store_part10(
                _encode(datagen.make_dataset(study_uid=uid, patient_id=pid, instance_number=n + 1)), CLI
            )
    archive.access.add_label(uids[0], "A")
    archive.access.add_label(uids[2], "C")
    return uids


def _find(archive: Archive, caller: Caller, level: str, **keys: object) -> list[Dataset]:
    ident = Dataset()
    for k, v in keys.items():
        setattr(ident, k, v)
    query = query_from_identifier(ident, level)
    return [m.to_dataset() for m in archive.search.search(query, caller)]


def _paged(archive: Archive, caller: Caller, limit: int, offset: int) -> list[str]:
    ident = Dataset()
    ident.StudyInstanceUID = ""
    query = query_from_identifier(ident, "STUDY")
    query = type(query)(
        level=query.level,
        conditions=query.conditions,
        return_keys=query.return_keys,
        limit=limit,
        offset=offset,
    )
    return [str(m.to_dataset().StudyInstanceUID) for m in archive.search.search(query, caller)]


def test_queries_see_only_permitted_studies_with_correct_counts_and_paging(
    archive: Archive, three_studies: list[str]
) -> None:
    a, b, c = three_studies
    everyone = {str(d.StudyInstanceUID) for d in _find(archive, CLI, "STUDY", StudyInstanceUID="")}
    assert everyone == {a, b, c}

    label_a = _caller("reader@label:A")
    assert [str(d.StudyInstanceUID) for d in _find(archive, label_a, "STUDY", StudyInstanceUID="")] == [a]
    (p1,) = _find(archive, label_a, "PATIENT", PatientID="", NumberOfPatientRelatedStudies="")
    assert (p1.PatientID, int(p1.NumberOfPatientRelatedStudies)) == ("P1", 1)
    assert len(_find(archive, label_a, "IMAGE", StudyInstanceUID=a, SOPInstanceUID="")) == 2
    assert _find(archive, label_a, "IMAGE", StudyInstanceUID=b, SOPInstanceUID="") == []

    patient_1 = _caller("reader@patient:P1", "reader@study:" + c)
    paged = [_paged(archive, patient_1, 1, offset) for offset in range(4)]
    assert paged == [[a], [b], [c], []]
    patients = _find(archive, patient_1, "PATIENT", PatientID="", NumberOfPatientRelatedInstances="")
    assert sorted((str(p.PatientID), int(p.NumberOfPatientRelatedInstances)) for p in patients) == [
        ("P1", 4),
        ("P2", 2),
    ]

    uploader = _caller("uploader@archive")  # STORE only: no query, no retrieve
    assert _find(archive, uploader, "STUDY", StudyInstanceUID="") == []
    with pytest.raises(NotFound):
        archive.wado.instances(uploader, a)
    with pytest.raises(NotFound):  # another study's frames: as if it did not exist
        archive.wado.instances(label_a, c)
    assert len(archive.wado.instances(label_a, a)) == 2
    # QUERY does not give RETRIEVE.
    assert (
        archive.search.instances(query_from_identifier(_uid_ident(a), "STUDY"), _caller("reader@label:C"))
        == []
    )


def _uid_ident(study: str) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = study
    return ds


def test_unrestricted_callers_build_the_sql_they_always_did(archive: Archive) -> None:
    from dicomhub.index.compile import scope_clause
    from dicomhub.model.identifiers import Level
    from dicomhub.services.search import _permitted

    assert _permitted(CLI, Action.QUERY) is None
    assert _permitted(_caller("admin@archive"), Action.QUERY) is None
    assert scope_clause(Level.STUDY, None) is None
    assert _permitted(_caller("reader@label:A"), Action.QUERY) is not None


def test_delete_needs_delete_and_hides_invisible_studies(archive: Archive, three_studies: list[str]) -> None:
    a, _b, c = three_studies
    with pytest.raises(Forbidden):
        archive.delete.delete_study(a, _caller("reader@label:A"))
    with pytest.raises(NotFound):
        archive.delete.delete_study(c, _caller("curator@label:A"))
    result = archive.delete.delete_study(a, _caller("curator@label:A"))
    assert result.studies == (a,)


def test_store_is_checked_against_the_stored_study_or_the_new_objects_facts(
    archive: Archive, three_studies: list[str]
) -> None:
    a, _b, _c = three_studies
    into_a = datagen.make_dataset(study_uid=a, patient_id="P1")
    with pytest.raises(Forbidden):
        archive.ingest.store_part10(_encode(into_a), _caller("uploader@patient:P2"))
    archive.ingest.store_part10(_encode(into_a), _caller("uploader@label:A"))
    new_mr = datagen.make_dataset(modality="MR", patient_id="P9")
    with pytest.raises(Forbidden):
        archive.ingest.store_part10(_encode(new_mr), _caller("reader@archive"))
    # A new study is judged on the labels the ingest rules would give it.
    archive.ingest.store_part10(_encode(new_mr), _caller("uploader@label:MRI"))
    assert archive.access.labels_of(str(new_mr.StudyInstanceUID)) == ["MRI"]
    from_cathlab = datagen.make_dataset(patient_id="P8")
    archive.ingest.store_part10(_encode(from_cathlab), Caller(Channel.DIMSE, "CATHLAB", "127.0.0.1"))
    assert archive.access.labels_of(str(from_cathlab.StudyInstanceUID)) == ["CARDIO"]
    labels = {item["label"]: item["studies"] for item in archive.access.labels()}
    assert labels == {"A": 1, "C": 1, "MRI": 1, "CARDIO": 1}


def test_tokens_expire_and_are_revoked_and_unknown_principals_have_no_grants(archive: Archive) -> None:
    access = archive.access
    token_id, token = access.create_token("carol", "ci", expires_in_days=1)
    assert access.authenticate_http(f"Bearer {token}") == "carol"
    access._clock = lambda: dt.datetime.now(dt.UTC) + dt.timedelta(days=2)  # type: ignore[method-assign]
    assert access.authenticate(f"Bearer {token}").reason == "expired"
    access._clock = lambda: dt.datetime.now(dt.UTC)  # type: ignore[method-assign]
    assert access.revoke_tokens("carol", token_id) == 1
    assert access.authenticate(f"Bearer {token}").reason == "revoked"
    assert access.authenticate(None).reason == "missing"
    assert access.authenticate("Bearer dh_nothing").reason == "invalid"
    assert access.authenticate("Basic abc").reason == "invalid"
    assert access.access_for("nobody") == Access()
    assert access.grant("carol", "reader", "label:A", "admin")
    assert not access.grant("carol", "reader", "label:A", "admin")
    assert access.access_for("carol").permits(Action.QUERY, StudyFacts("1.2", "", frozenset({"A"})))
    with pytest.raises(InvalidRequest):
        access.grant("carol", "reader", "label:bad label", "admin")
    with pytest.raises(InvalidRequest):
        access.grant("carol", "superuser", "archive", "admin")
    assert access.revoke_grant("carol", "reader", "label:A")
    assert access.access_for("carol") == Access()


def test_audit_events_are_queryable_by_study_principal_and_action(archive: Archive) -> None:
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    bob = _caller("reader@archive")
    archive.audit.record(
        AuditEvent(
            AuditAction.RETRIEVE,
            AuditOutcome.SUCCESS,
            bob,
            (AuditedStudy("1.2.3", "P1", ("1.2.3.4",), 2),),
            {"route": "/studies/1.2.3"},
        )
    )
    archive.audit.record(AuditEvent(AuditAction.QUERY, AuditOutcome.SUCCESS, CLI))
    (record,) = archive.audit.events(study_instance_uid="1.2.3")
    assert (record.principal, record.channel, record.action) == ("bob", "http", AuditAction.RETRIEVE)
    assert record.studies == (AuditedStudy("1.2.3", "P1", ("1.2.3.4",), 2),)
    assert record.detail == {"route": "/studies/1.2.3"}
    assert record.at >= before
    assert [r.action for r in archive.audit.events(principal=Caller.cli().who)] == [AuditAction.QUERY]
    assert len(archive.audit.events(action=AuditAction.QUERY, since=before)) == 1
    assert archive.audit.events(until=before) == []


def test_migration_0009_moves_deid_grants_to_project_scopes_and_keeps_old_audit_entries(
    tmp_path: Path, index_url: str
) -> None:
    engine = connect_engine(index_url)
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0008")
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO principal (pk, name, created_at) VALUES (1, 'alice', :t)"), {"t": now}
        )
        conn.execute(
            sa.text(
                "INSERT INTO role_grant (principal_pk, role, scope, granted_by, granted_at)"
                " VALUES (1, 'reidentifier', 'P1', 'root', :t)"
            ),
            {"t": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO audit_event (at, actor, source_address, action, project, study_uid,"
                " detail_json, outcome) VALUES (:t, 'alice', '10.0.0.1', 'reidentify', 'P1', '1.2.3',"
                " '{\"values\": 2}', 'forbidden')"
            ),
            {"t": now},
        )
    migrate(engine, lock_dir=tmp_path)
    engine.dispose()
    arch = open_archive(load_settings({"data_dir": tmp_path / "data", "database_url": index_url}, environ={}))
    try:
        assert arch.access.grants("alice")[0]["scope"] == "project:P1"
        assert arch.governance.has_grant("alice", "reidentifier", "P1")
        (record,) = arch.audit.events(study_instance_uid="1.2.3")
        assert (record.action, record.outcome, record.principal) == (
            AuditAction.REIDENTIFY,
            AuditOutcome.SERIOUS_FAILURE,
            "alice",
        )
        assert json.loads(json.dumps(record.detail)) == {
            "values": 2,
            "event": "reidentify",
            "result": "forbidden",
            "project": "P1",
        }
        arch.audit.record(AuditEvent(AuditAction.QUERY, AuditOutcome.SUCCESS, CLI))
        assert arch.audit.events(limit=1)[0].id == record.id + 1
    finally:
        arch.close()
