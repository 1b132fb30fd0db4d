"""Which SOP classes are storable: the table, the configured extras, and the three
paths that consult it (C-STORE negotiation, ingest for STOW-RS and import)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor
from pynetdicom.sop_class import _STORAGE_CLASSES

from dicomhub.config import load_settings
from dicomhub.conformance import build_statement, render_markdown
from dicomhub.dimse.acse import acceptor_contexts_for
from dicomhub.dimse.contexts import STORAGE_SOP_CLASSES
from dicomhub.dimse.server import association_config
from dicomhub.dimse.status import store_status
from dicomhub.errors import ConfigurationError, SOPClassNotSupported
from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.repository import IndexRepository
from dicomhub.model.caller import Caller
from dicomhub.model.identifiers import is_valid_uid
from dicomhub.model.sopclasses import StorableSOPClasses, storage_sop_class, storage_sop_classes
from dicomhub.services.ingest import IngestService, StoreOutcome
from dicomhub.storage.memory import MemoryBlobStore
from dicomhub.web.dicomweb.stow import failure_reason
from tests import datagen

US_RETIRED = "1.2.840.10008.5.1.4.1.1.6"
NM_RETIRED = "1.2.840.10008.5.1.4.1.1.5"
US_MULTIFRAME_RETIRED = "1.2.840.10008.5.1.4.1.1.3"
XA_BIPLANE_RETIRED = "1.2.840.10008.5.1.4.1.1.12.3"
CT = "1.2.840.10008.5.1.4.1.1.2"
DICOMDIR = "1.2.840.10008.1.3.10"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
VERIFICATION = "1.2.840.10008.1.1"
# A private SOP class under pydicom's UID root: no standard registers it.
PRIVATE = "1.2.826.0.1.3680043.8.498.16001"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


# ------------------------------------------------------------------ the table


def test_table_has_retired_and_current_storage_classes() -> None:
    for uid in (US_RETIRED, NM_RETIRED, US_MULTIFRAME_RETIRED, XA_BIPLANE_RETIRED):
        sop = storage_sop_class(uid)
        assert sop is not None and sop.retired, uid
        assert sop.title.endswith(" (Retired)")
    ct = storage_sop_class(CT)
    assert ct is not None and not ct.retired and ct.name == "CT Image Storage"
    # The current US class shares the retired one's name: only the mark tells them apart.
    us = storage_sop_class("1.2.840.10008.5.1.4.1.1.6.1")
    assert us is not None and us.title == "Ultrasound Image Storage"
    assert storage_sop_class(US_RETIRED).title == "Ultrasound Image Storage (Retired)"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "uid", [DICOMDIR, STORAGE_COMMITMENT, "1.2.840.10008.1.20.2", VERIFICATION, WORKLIST_FIND]
)
def test_table_leaves_out_what_is_not_a_storage_class(uid: str) -> None:
    assert storage_sop_class(uid) is None
    assert uid not in STORAGE_SOP_CLASSES


def test_table_is_a_superset_of_pynetdicoms() -> None:
    ours = {sop.uid for sop in storage_sop_classes()}
    missing = set(_STORAGE_CLASSES.values()) - ours
    assert not missing, sorted(missing)
    assert len(ours) > len(set(_STORAGE_CLASSES.values()))
    assert set(STORAGE_SOP_CLASSES) == ours


def test_table_rows_are_valid_unique_storage_classes() -> None:
    rows = storage_sop_classes()
    assert len({r.uid for r in rows}) == len(rows)
    for row in rows:
        assert is_valid_uid(row.uid), row
        assert "Storage" in row.name, row
        assert not row.name.endswith("(Retired)"), row
    assert sum(r.retired for r in rows) >= 15


# ------------------------------------------------------------------ the policy


def test_default_policy_refuses_private_and_non_storage_classes() -> None:
    policy = StorableSOPClasses()
    assert policy.is_storable(CT) and policy.is_storable(US_RETIRED)
    with pytest.raises(SOPClassNotSupported, match="accept_sop_classes"):
        policy.require_storable(PRIVATE)
    with pytest.raises(SOPClassNotSupported, match="not a storage SOP class"):
        policy.require_storable(DICOMDIR)
    with pytest.raises(SOPClassNotSupported, match="not a valid UID"):
        policy.require_storable("1.2.abc")


def test_explicit_and_unknown_acceptance() -> None:
    explicit = StorableSOPClasses.from_settings([PRIVATE], False)
    assert explicit.is_storable(PRIVATE)
    assert not explicit.is_storable(PRIVATE + ".1")
    unknown = StorableSOPClasses.from_settings([], True)
    assert unknown.is_storable(PRIVATE) and unknown.is_storable(PRIVATE + ".1")
    # Registered UIDs of other services are not "unknown": still refused.
    for uid in (WORKLIST_FIND, VERIFICATION, DICOMDIR, EXPLICIT_VR_LE):
        assert not unknown.is_storable(uid), uid
    # Hostile values from the wire.
    for bad in ("", "1." + "2" * 70, "1.2.3\x00", "1..2", "01.2", "1.2.3 ", "1.2.3.x"):
        assert not unknown.is_storable(bad), bad


@pytest.mark.parametrize("uid", ["1.2.x", "", VERIFICATION, WORKLIST_FIND])
def test_configured_uid_must_be_a_valid_non_standard_class(uid: str) -> None:
    with pytest.raises(ConfigurationError):
        StorableSOPClasses.from_settings([uid], False)


def test_settings_from_flags_environment_and_file(tmp_path: Path) -> None:
    other = "1.2.826.0.1.3680043.8.498.16002"
    flags = load_settings({"accept_sop_classes": [PRIVATE, other]}, environ={})
    assert flags.accept_sop_classes == (PRIVATE, other) and not flags.accept_unknown_sop_classes
    env = load_settings(
        environ={
            "DICOMHUB_ACCEPT_SOP_CLASSES": f"{PRIVATE}, {other}",
            "DICOMHUB_ACCEPT_UNKNOWN_SOP_CLASSES": "1",
        }
    )
    assert env.accept_sop_classes == (PRIVATE, other) and env.accept_unknown_sop_classes
    toml = tmp_path / "dicomhub.toml"
    toml.write_text(f'accept_sop_classes = ["{PRIVATE}"]\naccept_unknown_sop_classes = true\n')
    from_file = load_settings(config_file=toml, environ={})
    assert from_file.accept_sop_classes == (PRIVATE,) and from_file.accept_unknown_sop_classes
    with pytest.raises(ConfigurationError, match="not a valid UID"):
        load_settings(environ={"DICOMHUB_ACCEPT_SOP_CLASSES": "1.2.3.04"})


def test_refusal_statuses() -> None:
    assert store_status(SOPClassNotSupported("x")) == 0x0122
    assert failure_reason(SOPClassNotSupported("x")) == 0x0122


# ------------------------------------------------------------------ negotiation


def _proposed(*uids: str) -> list[PresentationContext]:
    out = []
    for n, uid in enumerate(uids):
        cx = PresentationContext()
        cx.context_id = 2 * n + 1
        cx.abstract_syntax = UID(uid)
        cx.transfer_syntax = [UID(EXPLICIT_VR_LE)]
        out.append(cx)
    return out


def _accepted(settings_overrides: dict[str, object], *uids: str) -> set[str]:
    config = association_config(load_settings(settings_overrides, environ={}))
    proposed = _proposed(*uids)
    results, _roles = negotiate_as_acceptor(proposed, acceptor_contexts_for(config, proposed), {})
    return {str(r.abstract_syntax) for r in results if r.result == 0x00}


def test_negotiation_accepts_retired_classes_by_default_and_private_only_when_configured() -> None:
    # Modality Worklist - FIND is accepted as its own service (never as storage); the
    # DICOMDIR's class stays refused whatever the storage settings say.
    proposal = (US_RETIRED, XA_BIPLANE_RETIRED, PRIVATE, WORKLIST_FIND, DICOMDIR)
    assert _accepted({}, *proposal) == {US_RETIRED, XA_BIPLANE_RETIRED, WORKLIST_FIND}
    assert _accepted({"accept_sop_classes": [PRIVATE]}, *proposal) == {
        US_RETIRED, XA_BIPLANE_RETIRED, PRIVATE, WORKLIST_FIND,
    }  # fmt: skip
    unknown = _accepted({"accept_unknown_sop_classes": True}, *proposal, PRIVATE + ".7")
    assert unknown == {US_RETIRED, XA_BIPLANE_RETIRED, PRIVATE, PRIVATE + ".7", WORKLIST_FIND}


def test_unknown_classes_get_the_scu_role_for_c_get() -> None:
    config = association_config(load_settings({"accept_unknown_sop_classes": True}, environ={}))
    proposed = _proposed(PRIVATE)
    extra = [cx for cx in acceptor_contexts_for(config, proposed) if cx.abstract_syntax == PRIVATE]
    assert len(extra) == 1 and extra[0].scu_role and extra[0].scp_role


# ------------------------------------------------------------------ ingest (import, STOW-RS)


def _part10(sop_class: str) -> bytes:
    ds: Dataset = datagen.make_dataset(rows=8, cols=8)
    ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _ingest(tmp_path: Path, policy: StorableSOPClasses) -> IngestService:
    engine = connect_engine(f"sqlite:///{tmp_path / 'index.sqlite'}")
    migrate(engine, lock_dir=tmp_path)
    return IngestService(IndexRepository(engine), MemoryBlobStore(), storable=policy)


def test_ingest_refuses_a_private_class_by_default_in_both_paths(tmp_path: Path) -> None:
    ingest = _ingest(tmp_path, StorableSOPClasses())
    with pytest.raises(SOPClassNotSupported, match=PRIVATE):
        ingest.store_part10(_part10(PRIVATE), Caller.cli())
    results = ingest.store_many([_part10(PRIVATE), _part10(US_RETIRED)], Caller.cli())
    assert isinstance(results[0], SOPClassNotSupported)
    assert not isinstance(results[1], Exception) and results[1].outcome is StoreOutcome.STORED
    assert isinstance(ingest.blobs, MemoryBlobStore) and len(list(ingest.blobs.iter_keys())) == 1
    stored = ingest.store_part10(_part10(NM_RETIRED), Caller.cli())
    assert stored.outcome is StoreOutcome.STORED and stored.sop_class_uid == NM_RETIRED


@pytest.mark.parametrize(
    "policy", [StorableSOPClasses(frozenset({PRIVATE})), StorableSOPClasses(accept_unknown=True)]
)
def test_ingest_stores_a_private_class_when_accepted(tmp_path: Path, policy: StorableSOPClasses) -> None:
    ingest = _ingest(tmp_path, policy)
    assert ingest.store_part10(_part10(PRIVATE), Caller.cli()).outcome is StoreOutcome.STORED
    (many,) = ingest.store_many([_part10(PRIVATE)], Caller.cli())
    assert not isinstance(many, Exception) and many.outcome is StoreOutcome.STORED
    with pytest.raises(SOPClassNotSupported):
        ingest.store_part10(_part10(WORKLIST_FIND), Caller.cli())


# ------------------------------------------------------------------ conformance


def test_conformance_marks_retired_classes_and_the_unknown_option() -> None:
    settings = load_settings(environ={})
    default = render_markdown(build_statement(settings))
    assert f"| Ultrasound Image Storage (Retired) | `{US_RETIRED}` |" in default
    assert f"| Nuclear Medicine Image Storage (Retired) | `{NM_RETIRED}` |" in default
    assert f"| CT Image Storage | `{CT}` |" in default
    assert f"`{DICOMDIR}`" not in default
    assert "`accept_unknown_sop_classes` (off)" in default
    assert settings.accept_unknown_sop_classes is False
    on = render_markdown(
        build_statement(
            load_settings({"accept_unknown_sop_classes": True, "accept_sop_classes": [PRIVATE]}, environ={})
        )
    )
    assert "`accept_unknown_sop_classes` is on" in on
    assert f"| Private SOP class (accept_sop_classes) | `{PRIVATE}` |" in on
