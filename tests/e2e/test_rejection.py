"""Rejection notes (IHE IOCM) against a real ``dicomhub serve``: one server for the module.

A study of three CT instances in two series is stored with storescu. A rejection
note (a Key Object Selection document built here with pydicom, rejection title
113001) sent with storescu hides the instances it references from findscu, QIDO-RS,
WADO-RS and getscu, unless ``includerejected=true``; sending one of them again is
refused with 0xA771. A note sent by STOW-RS (dicomweb-client) does the same, and a
note for an instance that is not held is refused. ``dicomhub reject`` and
``POST .../reject`` make and store a note themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datagen
import httpx
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from . import helpers
from .helpers import DicomhubServer, find, get, read_dir, run_cli, store, store_ok

pytestmark = pytest.mark.e2e

KOS = "1.2.840.10008.5.1.4.1.1.88.59"
SUBSEQUENT_OCCURRENCE = 0xA771
NO_SUCH_INSTANCE = 0xA772


@dataclass
class Study:
    uid: str
    a: list[Dataset]  # series A: two instances
    b: Dataset  # series B: one instance
    src: Path


def make_study(server: DicomhubServer, src: Path) -> Study:
    study, series_a = datagen.uid(), datagen.uid()
    pid = "R" + datagen.uid()[-8:]
    a = [
        datagen.write_instance(
            src / f"a{n}.dcm", patient_id=pid, study_uid=study, series_uid=series_a, instance_number=n
        )
        for n in (1, 2)
    ]
    b = datagen.write_instance(src / "b.dcm", patient_id=pid, study_uid=study, series_number=2)
    store_ok(server, src, expect=3)
    return Study(study, a, b, src)


def rejection_note(
    rejected: list[Dataset], code: str = "113001", meaning: str = "Rejected for Quality Reasons"
) -> Dataset:
    """A KOS rejecting ``rejected`` (PS3.3 A.35.4, TID 2010), written out by hand."""
    first = rejected[0]
    ds = Dataset()
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
    ):
        setattr(ds, keyword, first.get(keyword, ""))  # fmt: skip
    ds.SOPClassUID, ds.SOPInstanceUID = KOS, datagen.uid()
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "KO", datagen.uid(), 99, 1
    ds.ContentDate, ds.ContentTime, ds.ValueType = "20261207", "010000", "CONTAINER"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = code, "DCM", meaning
    ds.ConceptNameCodeSequence = Sequence([title])
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "2010"
    ds.ContentTemplateSequence = Sequence([template])
    ds.ContinuityOfContent = "SEPARATE"
    series_items = []
    for series_uid in dict.fromkeys(r.SeriesInstanceUID for r in rejected):
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        refs = []
        for r in rejected:
            if r.SeriesInstanceUID == series_uid:
                ref = Dataset()
                ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = r.SOPClassUID, r.SOPInstanceUID
                refs.append(ref)
        item.ReferencedSOPSequence = Sequence(refs)
        series_items.append(item)
    evidence = Dataset()
    evidence.StudyInstanceUID = first.StudyInstanceUID
    evidence.ReferencedSeriesSequence = Sequence(series_items)
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    content = []
    for r in rejected:
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "IMAGE"
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = r.SOPClassUID, r.SOPInstanceUID
        item.ReferencedSOPSequence = Sequence([ref])
        content.append(item)
    ds.ContentSequence = Sequence(content)
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    return ds


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def qido(server: DicomhubServer, path: str, **params: str) -> list[dict[str, object]]:
    r = httpx.get(server.base_url + "/dicomweb" + path, params=params, timeout=30.0)
    assert r.status_code in (200, 204), r.text
    return [] if r.status_code == 204 else list(r.json())


def uids(matches: list[dict[str, object]], tag: str = "00080018") -> set[str]:
    return {m[tag]["Value"][0] for m in matches}  # type: ignore[index]


def count(match: dict[str, object], tag: str) -> int:
    return int(match[tag]["Value"][0])  # type: ignore[index]


def dicomweb(server: DicomhubServer) -> DICOMwebClient:
    return DICOMwebClient(url=server.base_url + "/dicomweb")


@pytest.fixture(scope="module")
def study(server: DicomhubServer, tmp_path_factory: pytest.TempPathFactory) -> Study:
    return make_study(server, tmp_path_factory.mktemp("study"))


def test_a_note_by_c_store_hides_its_instances_unless_asked(
    server: DicomhubServer, study: Study, tmp_path: Path
) -> None:
    note = rejection_note(study.a)
    store_ok(server, write(note, tmp_path / "note.dcm"), expect=1)
    a_uids = {str(ds.SOPInstanceUID) for ds in study.a}
    visible = {str(study.b.SOPInstanceUID), str(note.SOPInstanceUID)}

    # C-FIND: the instances and the series they filled are gone; the note's series stays.
    series = find(
        server, "SERIES", {"StudyInstanceUID": study.uid, "SeriesInstanceUID": None}, tmp_path / "f1"
    )
    assert {str(d.SeriesInstanceUID) for d in series} == {
        str(study.b.SeriesInstanceUID),
        str(note.SeriesInstanceUID),
    }
    series_a = {"StudyInstanceUID": study.uid, "SeriesInstanceUID": str(study.a[0].SeriesInstanceUID)}
    assert find(server, "IMAGE", {**series_a, "SOPInstanceUID": None}, tmp_path / "f2") == []
    # QIDO-RS: the same, and the counts leave them out; includerejected shows them.
    assert uids(qido(server, f"/studies/{study.uid}/instances")) == visible
    assert uids(qido(server, f"/studies/{study.uid}/instances", includerejected="true")) == visible | a_uids
    (row,) = qido(
        server, "/studies", StudyInstanceUID=study.uid, includefield="NumberOfStudyRelatedInstances"
    )
    assert count(row, "00201208") == 2
    (row,) = qido(server, "/studies", StudyInstanceUID=study.uid, includerejected="true",
                  includefield="NumberOfStudyRelatedInstances")  # fmt: skip
    assert count(row, "00201208") == 4
    assert (
        httpx.get(server.base_url + "/dicomweb/studies", params={"includerejected": "maybe"}).status_code
        == 400
    )
    # WADO-RS: not found, unless asked for.
    metadata = (
        f"{server.base_url}/dicomweb/studies/{study.uid}/series/{study.a[0].SeriesInstanceUID}/metadata"
    )
    assert httpx.get(metadata, timeout=30.0).status_code == 404
    shown = httpx.get(metadata, params={"includerejected": "true"}, timeout=30.0)
    assert shown.status_code == 200 and len(shown.json()) == 2
    # C-GET of the whole study brings the rest only.
    res = get(server, "STUDY", {"StudyInstanceUID": study.uid}, tmp_path / "got")
    received = set(read_dir(tmp_path / "got"))
    assert str(study.b.SOPInstanceUID) in received, res.output[-3000:]
    assert not received & a_uids
    # Sending a rejected instance again is refused with dcm4chee-arc's status.
    again = store(server, study.a[0].filename)
    assert again.statuses == {str(study.a[0].SOPInstanceUID): SUBSEQUENT_OCCURRENCE}, again.output[-3000:]
    # The change log says what was rejected.
    rows = helpers.index_rows(server.data_dir, "SELECT uid FROM change WHERE change_type = 'rejected'")
    assert a_uids <= {str(r[0]) for r in rows}


def test_a_note_by_stow_rs_and_a_note_for_what_is_not_held(
    server: DicomhubServer, study: Study, tmp_path: Path
) -> None:
    client = dicomweb(server)
    # Refused whole (nothing is rejected) when it references an instance not held.
    unknown = datagen.make_dataset(study_uid=study.uid, series_uid=str(study.b.SeriesInstanceUID))
    bad = rejection_note([study.b, unknown])
    with pytest.raises(requests.HTTPError) as refused:
        client.store_instances([bad])
    assert refused.value.response.status_code == 409
    failed = refused.value.response.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [NO_SUCH_INSTANCE]
    assert str(study.b.SOPInstanceUID) in uids(qido(server, f"/studies/{study.uid}/instances"))
    by_dimse = store(server, write(bad, tmp_path / "bad.dcm"))
    assert by_dimse.statuses == {str(bad.SOPInstanceUID): NO_SUCH_INSTANCE}
    # A good note by STOW-RS hides series B; resending B by STOW-RS fails with 0xA771.
    note = rejection_note([study.b], "113037", "Rejected for Patient Safety Reasons")
    response = client.store_instances([note])
    assert "FailedSOPSequence" not in response
    left = uids(qido(server, f"/studies/{study.uid}/instances"))
    assert str(study.b.SOPInstanceUID) not in left and str(note.SOPInstanceUID) in left
    with pytest.raises(requests.HTTPError) as resent:
        client.store_instances([study.b])
    failed = resent.value.response.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [SUBSEQUENT_OCCURRENCE]


def test_reject_by_cli_and_rest(server: DicomhubServer, tmp_path: Path) -> None:
    mine = make_study(server, tmp_path / "mine")
    # REST: one instance, for quality reasons; then there is nothing (not rejected) left there.
    target = f"/studies/{mine.uid}/series/{mine.a[0].SeriesInstanceUID}/instances/{mine.a[0].SOPInstanceUID}"
    r = httpx.post(
        server.base_url + "/dicomweb" + target + "/reject", params={"reason": "quality"}, timeout=30
    )
    assert r.status_code == 201, r.text
    note_uid = r.json()["SOPInstanceUID"]
    again = httpx.post(
        server.base_url + "/dicomweb" + target + "/reject", params={"reason": "quality"}, timeout=30
    )
    assert again.status_code == 404, again.text
    wrong = httpx.post(
        server.base_url + f"/dicomweb/studies/{mine.uid}/reject", params={"reason": "x"}, timeout=30
    )
    assert wrong.status_code == 400
    left = uids(qido(server, f"/studies/{mine.uid}/instances"))
    assert left == {str(mine.a[1].SOPInstanceUID), str(mine.b.SOPInstanceUID), note_uid}
    # CLI: the whole study, for a wrong worklist entry: only the notes are left.
    rc, out = run_cli("reject", mine.uid, "--reason", "worklist", "--data-dir", str(server.data_dir))
    assert rc == 0, out
    left = uids(qido(server, f"/studies/{mine.uid}/instances"))
    assert len(left) == 2 and note_uid in left
    notes = qido(server, f"/studies/{mine.uid}/instances", SOPClassUID=KOS)
    assert uids(notes) == left
    rc, out = run_cli("reject", datagen.uid(), "--reason", "quality", "--data-dir", str(server.data_dir))
    assert rc == 1 and "no study" in out
