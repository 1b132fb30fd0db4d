"""Linking stored studies to orders through the services, on each index dialect:
at ingest (order first), when the order is placed (study first), and by hand."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select

from dicomhub.bootstrap import open_archive
from dicomhub.config import load_settings
from dicomhub.errors import NotFound
from dicomhub.index import engine as engines
from dicomhub.index.links import StudyLinkWrite
from dicomhub.index.schema import study_order_link
from dicomhub.model.access import Access, Grant, Scope
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.links import MatchedBy, StudyKeys
from dicomhub.model.orders import Order, PatientRef, RequestedProcedure, ScheduledProcedureStep, StepStatus
from dicomhub.services.access import Forbidden
from dicomhub.services.archive import Archive
from dicomhub.services.links import requested_procedure_id
from dicomhub.services.orders import OrderKey
from tests import datagen

CLI = Caller.cli()
READER = Caller(
    Channel.HTTP, "r", "127.0.0.1", principal="r", access=Access.of([Grant("reader", Scope.parse("archive"))])
)


@pytest.fixture
def archive(tmp_path: Path, index_url: str) -> Iterator[Archive]:
    arch = open_archive(load_settings({"data_dir": tmp_path / "data", "database_url": index_url}, environ={}))
    yield arch
    arch.close()


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


def _store(archive: Archive, **kwargs: object) -> str:
    ds: Dataset = datagen.make_dataset(**kwargs)  # type: ignore[arg-type]
    archive.ingest.store_part10(_bytes(ds), CLI)
    return str(ds.StudyInstanceUID)


def _place(archive: Archive, accession: str, procedure_id: str = "", study_uid: str = "") -> Order:
    order = Order(
        accession,
        PatientRef("P1"),
        procedures=(
            RequestedProcedure(
                procedure_id or accession,
                study_instance_uid=study_uid,
                steps=(ScheduledProcedureStep(f"S{accession}", modality="CT"),),
            ),
        ),
    )
    return archive.orders.place_order(order, CLI)


def _linked(archive: Archive, accession: str) -> dict[str, MatchedBy]:
    found = archive.links.linked_studies(OrderKey(accession_number=accession), CLI)
    return {s.study_instance_uid: s.matched_by for s in found}


def _unmatched(archive: Archive) -> set[str]:
    found, total = archive.links.unmatched(CLI, limit=1000)
    assert total == len(found)
    return {s.study_instance_uid for s in found}


def test_order_first_links_at_ingest_once_per_study(archive: Archive) -> None:
    _place(archive, "A1")
    uid = datagen.uid()
    for n in (1, 2, 3):
        _store(archive, study_uid=uid, accession="A1", instance_number=n, sop_uid=datagen.uid())
    assert _linked(archive, "A1") == {uid: MatchedBy.ACCESSION_NUMBER}
    # Linking does not perform the order.
    assert archive.orders.order(OrderKey(accession_number="A1"), CLI).status is StepStatus.SCHEDULED
    assert uid not in _unmatched(archive)


def test_study_first_links_when_the_order_is_placed(archive: Archive) -> None:
    by_rp = _store(archive, accession="OTHER", requested_procedure_id="RPX")
    by_uid_study = datagen.uid()
    _store(archive, study_uid=by_uid_study, accession="", requested_procedure_id=None)
    stray = _store(archive, accession="NOPE", requested_procedure_id="RPNONE")
    assert {by_rp, by_uid_study, stray} <= _unmatched(archive)
    _place(archive, "B1", procedure_id="RPX")
    _place(archive, "B2", study_uid=by_uid_study)
    assert _linked(archive, "B1") == {by_rp: MatchedBy.REQUESTED_PROCEDURE_ID}
    assert _linked(archive, "B2") == {by_uid_study: MatchedBy.STUDY_INSTANCE_UID}
    assert _unmatched(archive) == {stray}


def test_a_procedure_id_two_orders_share_links_nothing(archive: Archive) -> None:
    _place(archive, "C1", procedure_id="RPSAME")
    _place(archive, "C2", procedure_id="RPSAME")
    uid = _store(archive, accession="NONE", requested_procedure_id="RPSAME")
    assert _linked(archive, "C1") == {} and _linked(archive, "C2") == {}
    assert uid in _unmatched(archive)


def test_link_by_hand_moves_a_study_and_is_refused_without_schedule(archive: Archive) -> None:
    _place(archive, "D1")
    _place(archive, "D2")
    uid = _store(archive, accession="D1")
    assert _linked(archive, "D1") == {uid: MatchedBy.ACCESSION_NUMBER}
    with pytest.raises(Forbidden):
        archive.links.link_by_hand(uid, OrderKey(accession_number="D2"), READER)
    archive.links.unmatched(READER)  # reading is allowed to a reader at the archive scope
    with pytest.raises(NotFound, match="no study"):
        archive.links.link_by_hand("1.2.3.4", OrderKey(accession_number="D2"), CLI)
    with pytest.raises(NotFound):
        archive.links.link_by_hand(uid, OrderKey(accession_number="NOSUCH"), CLI)
    archive.links.link_by_hand(uid, OrderKey(accession_number="D2"), CLI)
    assert _linked(archive, "D1") == {} and _linked(archive, "D2") == {uid: MatchedBy.MANUAL}
    # A later placement naming the study does not take it back from a manual link.
    _place(archive, "D3", study_uid=uid)
    assert _linked(archive, "D2") == {uid: MatchedBy.MANUAL}


def test_a_spooled_object_is_read_from_its_blob(archive: Archive, tmp_path: Path) -> None:
    # Large DIMSE objects (and STOW-RS batches) are not kept in memory by ingest: the
    # Request Attributes Sequence is read from the head of the stored blob.
    ds = datagen.make_dataset(accession="NOPE2", requested_procedure_id="RPSPOOL")
    spooled = tmp_path / "spooled.bin"
    with spooled.open("wb") as fh:
        out = DicomFileLike(fh)
        out.is_little_endian, out.is_implicit_VR = True, False
        write_dataset(out, ds)  # the data set alone, as a C-STORE delivers it
    archive.ingest.store_received_file(
        spooled, ExplicitVRLittleEndian, str(ds.SOPClassUID), str(ds.SOPInstanceUID), CLI
    )
    _place(archive, "E1", procedure_id="RPSPOOL")
    assert _linked(archive, "E1") == {str(ds.StudyInstanceUID): MatchedBy.REQUESTED_PROCEDURE_ID}


def test_requested_procedure_id_reads_a_head_cut_short() -> None:
    ds = datagen.make_dataset(requested_procedure_id="RPHEAD", rows=64, cols=64)
    data = _bytes(ds)
    assert requested_procedure_id(data) == "RPHEAD"
    # Cut inside the pixel data: the sequence before it is still read.
    assert requested_procedure_id(data[: len(data) - 1000]) == "RPHEAD"
    assert requested_procedure_id(data[:200]) == ""
    assert requested_procedure_id(b"") == ""


def test_requested_procedure_id_skips_the_parse_only_when_the_tag_is_absent() -> None:
    with_sequence = _bytes(datagen.make_dataset(requested_procedure_id="RPGATE", rows=8, cols=8))
    assert requested_procedure_id(with_sequence, ExplicitVRLittleEndian) == "RPGATE"
    without = _bytes(datagen.make_dataset(requested_procedure_id=None, rows=8, cols=8))
    assert b"\x40\x00\x75\x02" not in without
    assert requested_procedure_id(without, ExplicitVRLittleEndian) == ""
    # A deflated data set hides the tag's bytes: it is always parsed.
    assert requested_procedure_id(with_sequence, "1.2.840.10008.1.2.1.99") == "RPGATE"


def test_order_first_links_at_ingest_by_requested_procedure_id(archive: Archive) -> None:
    _place(archive, "F1", procedure_id="RPF")
    uid = _store(archive, accession="OTHER-F", requested_procedure_id="RPF")
    assert _linked(archive, "F1") == {uid: MatchedBy.REQUESTED_PROCEDURE_ID}


def test_the_link_row_of_an_ingest_is_inserted_kept_or_linked(archive: Archive) -> None:
    """StudyLinkWrite (one statement in the instance's transaction): a new row is
    inserted; an existing row is kept, unless it is unmatched and the write has an order."""
    _place(archive, "G1")
    _place(archive, "G2")
    (g1,) = archive.links.repo.candidate_orders(StudyKeys("9.9.9", "G1"))
    (g2,) = archive.links.repo.candidate_orders(StudyKeys("9.9.9", "G2"))
    keys = StudyKeys(datagen.uid(), "", "RPG")

    def write(order_pk: int | None, matched_by: MatchedBy | None) -> tuple[object, ...]:
        with engines.write(archive.index.engine) as conn:
            StudyLinkWrite(keys, order_pk, matched_by, "ingest").write(conn)
        with engines.read(archive.index.engine) as conn:
            rows = conn.execute(
                select(
                    study_order_link.c.order_pk,
                    study_order_link.c.matched_by,
                    study_order_link.c.requested_procedure_id,
                ).where(study_order_link.c.study_instance_uid == keys.study_instance_uid)
            ).all()
        (row,) = rows
        return tuple(row)

    assert write(None, None) == (None, "", "RPG")
    assert write(None, None) == (None, "", "RPG")  # kept
    assert write(g1.order_pk, MatchedBy.REQUESTED_PROCEDURE_ID) == (g1.order_pk, "procedure", "RPG")
    assert write(g2.order_pk, MatchedBy.ACCESSION_NUMBER) == (g1.order_pk, "procedure", "RPG")
    assert write(None, None) == (g1.order_pk, "procedure", "RPG")
