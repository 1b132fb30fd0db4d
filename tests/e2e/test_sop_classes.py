"""Storage SOP classes beyond pynetdicom's list: retired ones and private ones.

Legacy objects of retired classes (real pixel data from pydicom's CT_small.dcm,
relabelled) go in with DCMTK ``storescu -R`` (it proposes exactly the classes of
its files), are found with ``findscu`` and come back byte for byte with
``getscu`` and with ``movescu`` to a DCMTK ``storescp``. A private SOP class is
refused by default and accepted with ``--accept-sop-class`` or
``--accept-unknown-sop-classes``, the same way over C-STORE, STOW-RS and
``dicomhub import``; C-MOVE (to ``storescp --promiscuous``) and C-GET (pynetdicom,
the only requestor here that can propose a private class) send it back.
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet  # type: ignore[attr-defined]

from dicomhub.model.structure import dataset_offset

from .helpers import (
    HOST,
    DicomhubServer,
    RetrieveResult,
    ServerPool,
    StoreSCP,
    find,
    move,
    popen_dcmtk,
    read_dir,
    run_cli,
    run_dcmtk,
    store,
    wait_for_port,
)

pytestmark = pytest.mark.e2e

RETIRED = {
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.5": "Nuclear Medicine Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.12.3": "X-Ray Angiographic Bi-Plane Image Storage (Retired)",
}
# Private SOP classes under pydicom's UID root, registered by no standard.
PRIVATE = "1.2.826.0.1.3680043.8.498.16001"
OTHER_PRIVATE = "1.2.826.0.1.3680043.8.498.16002"
SOP_CLASS_NOT_SUPPORTED = 0x0122
DEST_AET, PROMISCUOUS_AET = "SOPDEST", "SOPPROM"
BOUNDARY = "dicomhub-sop-" + uuid.uuid4().hex


# ------------------------------------------------------------------ data


@dataclass
class Legacy:
    """Objects written to ``paths``, all of one study and series."""

    study_uid: str
    series_uid: str
    paths: list[Path]

    def datasets(self) -> list[Dataset]:
        return [pydicom.dcmread(p) for p in self.paths]


def relabelled(sop_class: str, study_uid: str, series_uid: str) -> Dataset:
    """pydicom's CT_small.dcm as an object of ``sop_class``, with a fresh SOP Instance UID."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientID = "SOP-" + study_uid[-8:]
    # Encoded as storescu sends a file (it re-encodes it: sequences and items of
    # explicit length, no trailing padding), so that "byte-identical" can compare
    # the file with what comes back: the data set dicomhub received.
    del ds.DataSetTrailingPadding
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = False
            for item in elem.value:
                item.is_undefined_length_sequence_item = False
    return ds


def write(directory: Path, datasets: Sequence[Dataset]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert pydicom.dcmread(path).SOPClassUID == ds.SOPClassUID  # written as meant
        paths.append(path)
    return paths


def data_set_bytes(data: bytes) -> bytes:
    """The data set of a Part 10 object, without preamble and File Meta."""
    return data[dataset_offset(data) :]


def assert_same_data_sets(received: dict[str, Path], sent: Sequence[Path]) -> None:
    """Every sent object arrived once, with a byte-identical data set."""
    by_uid = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in sent}
    assert set(received) == set(by_uid)
    for uid, path in by_uid.items():
        got = received[uid].read_bytes()
        assert data_set_bytes(got) == data_set_bytes(path.read_bytes()), uid
        assert pydicom.dcmread(received[uid]).file_meta.MediaStorageSOPClassUID == (
            pydicom.dcmread(path).SOPClassUID
        )


def files_by_uid(directory: Path) -> dict[str, Path]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in directory.iterdir()}


# ------------------------------------------------------------------ peers


class BitPreservingStoreSCP(StoreSCP):
    """storescp writing each received data set exactly as it arrived (``+B``);
    with ``promiscuous`` it accepts unknown SOP classes too (``-pm``)."""

    def __init__(self, out_dir: Path, log: Path, aet: str, promiscuous: bool = False) -> None:
        super().__init__(out_dir, log, aet=aet)
        self.promiscuous = promiscuous

    def start(self) -> BitPreservingStoreSCP:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "-v",
            "+B",
            *(["-pm"] if self.promiscuous else []),
            "-aet",
            self.aet,
            "-od",
            str(self.out_dir),
        ]
        self.proc = popen_dcmtk("storescp", *args, str(self.port), log=self.log)
        wait_for_port(self.port, proc=self.proc)
        return self


@pytest.fixture(scope="module")
def dest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    base = tmp_path_factory.mktemp("dest")
    scp = BitPreservingStoreSCP(base / "out", base / "storescp.log", DEST_AET).start()
    yield scp
    scp.stop()


@pytest.fixture(scope="module")
def promiscuous(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    base = tmp_path_factory.mktemp("promiscuous")
    scp = BitPreservingStoreSCP(
        base / "out", base / "storescp.log", PROMISCUOUS_AET, promiscuous=True
    ).start()
    yield scp
    scp.stop()


def _hub(pool: ServerPool, dest: StoreSCP, promiscuous: StoreSCP, *args: str) -> DicomhubServer:
    return pool.start(
        remote_aes={DEST_AET: dest.address, PROMISCUOUS_AET: promiscuous.address},
        args=["--workers", "1", *args],
    )


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool, dest: StoreSCP, promiscuous: StoreSCP) -> DicomhubServer:
    """The defaults: every storage class of the standard, no private one."""
    return _hub(module_servers, dest, promiscuous)


@pytest.fixture(scope="module")
def explicit(module_servers: ServerPool, dest: StoreSCP, promiscuous: StoreSCP) -> DicomhubServer:
    return _hub(module_servers, dest, promiscuous, "--accept-sop-class", PRIVATE)


@pytest.fixture(scope="module")
def unknown(module_servers: ServerPool, dest: StoreSCP, promiscuous: StoreSCP) -> DicomhubServer:
    return _hub(module_servers, dest, promiscuous, "--accept-unknown-sop-classes")


def private_profile(directory: Path, *sop_classes: str) -> list[str]:
    """storescu arguments proposing exactly ``sop_classes`` (which DCMTK does not know)."""
    cfg = directory / "private.cfg"
    contexts = "\n".join(
        f"PresentationContext{n} = {sop}\\Uncompressed" for n, sop in enumerate(sop_classes, 1)
    )
    cfg.write_text(
        "[[TransferSyntaxes]]\n[Uncompressed]\n"
        "TransferSyntax1 = LittleEndianExplicit\nTransferSyntax2 = LittleEndianImplicit\n"
        f"[[PresentationContexts]]\n[PrivateStorage]\n{contexts}\n"
        "[[Profiles]]\n[Private]\nPresentationContexts = PrivateStorage\n"
    )
    return ["-xf", str(cfg), "Private"]


def held(server: DicomhubServer, study_uid: str, series_uid: str, out: Path) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID of what ``findscu`` finds in the series."""
    keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "SOPInstanceUID": None}
    rsps = find(server, "IMAGE", {**keys, "SOPClassUID": None}, out)
    return {str(r.SOPInstanceUID): str(r.SOPClassUID) for r in rsps}


def stow(server: DicomhubServer, datasets: Sequence[Dataset]) -> httpx.Response:
    body = b""
    for ds in datasets:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        body += f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buf.getvalue()
    body += f"\r\n--{BOUNDARY}--\r\n".encode()
    return httpx.post(
        f"{server.base_url}/dicomweb/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
            "Accept": "application/dicom+json",
        },
        timeout=60,
    )


def failure_reasons(body: dict[str, object]) -> dict[str, int]:
    """Referenced SOP Instance UID -> Failure Reason of a STOW-RS response."""
    seq = body.get("00081198", {})
    out = {}
    for item in seq.get("Value", []) if isinstance(seq, dict) else []:
        out[item["00081155"]["Value"][0]] = item["00081197"]["Value"][0]
    return out


def pyn_get(server: DicomhubServer, study_uid: str, sop_classes: Sequence[str], out: Path) -> list[int]:
    """C-GET of a study with pynetdicom, proposing ``sop_classes`` with the SCP role;
    received objects are written to ``out`` as received. Returns the response statuses."""
    out.mkdir(parents=True, exist_ok=True)

    def on_store(event: evt.Event) -> int:
        path = out / f"{event.request.AffectedSOPInstanceUID}.dcm"
        path.write_bytes(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title="PYNGET")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop in sop_classes:
        ae.add_requested_context(sop, [ExplicitVRLittleEndian])
    assoc = ae.associate(
        HOST,
        server.dimse_port,
        ae_title=server.aet,
        ext_neg=[build_role(sop, scp_role=True) for sop in sop_classes],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    try:
        return [
            int(status.Status)
            for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
            if status
        ]
    finally:
        assoc.release()


# ------------------------------------------------------------------ retired classes


@pytest.fixture(scope="module")
def legacy(hub: DicomhubServer, tmp_path_factory: pytest.TempPathFactory) -> Legacy:
    study, series = generate_uid(), generate_uid()
    paths = write(tmp_path_factory.mktemp("legacy"), [relabelled(sop, study, series) for sop in RETIRED])
    res = store(hub, *paths, extra=["-R"])  # -R: propose the files' classes, nothing else
    assert res.returncode == 0, res.output[-3000:]
    assert len(res.statuses) == len(RETIRED) and set(res.statuses.values()) == {0}, res.output[-3000:]
    return Legacy(study, series, paths)


def test_retired_classes_are_found_with_their_classes(
    hub: DicomhubServer, legacy: Legacy, tmp_path: Path
) -> None:
    found = held(hub, legacy.study_uid, legacy.series_uid, tmp_path)
    assert sorted(found.values()) == sorted(RETIRED)
    assert found == {str(ds.SOPInstanceUID): str(ds.SOPClassUID) for ds in legacy.datasets()}


def test_retired_classes_come_back_with_getscu(hub: DicomhubServer, legacy: Legacy, tmp_path: Path) -> None:
    out = tmp_path / "got"
    out.mkdir()
    # +B: written to disk as received (getscu would re-encode sequences otherwise).
    rc, output = run_dcmtk(
        "getscu", "-S", "-d", "+B", "-od", out, "-aet", "GETSCU", "-aec", hub.aet,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={legacy.study_uid}",
        HOST, str(hub.dimse_port),
    )  # fmt: skip
    res = RetrieveResult(rc, output)
    assert res.returncode == 0, res.output[-3000:]
    assert res.final_counts()["completed"] == len(RETIRED), res.output[-3000:]
    assert_same_data_sets(files_by_uid(tmp_path / "got"), legacy.paths)


def test_retired_classes_are_moved_to_storescp(hub: DicomhubServer, legacy: Legacy, dest: StoreSCP) -> None:
    dest.clear()
    res = move(hub, DEST_AET, "STUDY", {"StudyInstanceUID": legacy.study_uid})
    assert res.returncode == 0, res.output[-3000:]
    assert res.final_counts()["completed"] == len(RETIRED) and res.statuses()[-1] == 0, res.output[-3000:]
    assert_same_data_sets(files_by_uid(dest.out_dir), legacy.paths)
    assert {str(ds.SOPClassUID) for ds in read_dir(dest.out_dir).values()} == set(RETIRED)


def test_conformance_lists_the_retired_classes(hub: DicomhubServer) -> None:
    text = httpx.get(f"{hub.base_url}/conformance", headers={"Accept": "text/markdown"}, timeout=30).text
    for uid, name in RETIRED.items():
        assert f"| {name} | `{uid}` |" in text
    assert "`accept_unknown_sop_classes` (off)" in text


# ------------------------------------------------------------------ private classes


@dataclass
class Case:
    server: DicomhubServer
    import_args: list[str]
    import_env: dict[str, str]


def _private(tmp_path: Path, n: int, sop_class: str = PRIVATE) -> tuple[str, str, list[Dataset], list[Path]]:
    study, series = generate_uid(), generate_uid()
    datasets = [relabelled(sop_class, study, series) for _ in range(n)]
    return study, series, datasets, write(tmp_path / "in", datasets)


def test_private_class_is_refused_by_default_everywhere(hub: DicomhubServer, tmp_path: Path) -> None:
    study, series, datasets, paths = _private(tmp_path, 3)
    # C-STORE: not accepted at negotiation.
    res = store(hub, paths[0], extra=private_profile(tmp_path, PRIVATE))
    assert res.returncode != 0 and "No Acceptable Presentation Contexts" in res.output, res.output[-3000:]
    # STOW-RS: failure reason 0x0122, nothing stored.
    rsp = stow(hub, [datasets[1]])
    assert rsp.status_code == 409, rsp.text
    assert failure_reasons(rsp.json()) == {str(datasets[1].SOPInstanceUID): SOP_CLASS_NOT_SUPPORTED}
    # import: rejected with the reason, non-zero exit.
    rc, out = run_cli("import", "--quiet", "--data-dir", str(hub.data_dir), str(paths[2]))
    assert rc != 0, out
    assert f"rejected: {paths[2]}: SOP class {PRIVATE} is not a storage SOP class" in out, out
    assert "accept_sop_classes" in out
    assert held(hub, study, series, tmp_path / "find") == {}


@pytest.fixture(params=["explicit", "unknown"])
def case(request: pytest.FixtureRequest) -> Case:
    if request.param == "explicit":
        return Case(request.getfixturevalue("explicit"), ["--accept-sop-class", PRIVATE], {})
    return Case(request.getfixturevalue("unknown"), [], {"DICOMHUB_ACCEPT_UNKNOWN_SOP_CLASSES": "1"})


def test_private_class_is_accepted_when_configured(case: Case, promiscuous: StoreSCP, tmp_path: Path) -> None:
    server = case.server
    study, series, datasets, paths = _private(tmp_path, 3)
    res = store(server, paths[0], extra=private_profile(tmp_path, PRIVATE))
    assert res.returncode == 0 and res.statuses == {str(datasets[0].SOPInstanceUID): 0}, res.output[-3000:]
    stored = DICOMwebClient(url=server.base_url + "/dicomweb").store_instances([datasets[1]])
    assert str(stored.ReferencedSOPSequence[0].ReferencedSOPClassUID) == PRIVATE
    rc, out = run_cli(
        "import",
        "--quiet",
        "--data-dir",
        str(server.data_dir),
        *case.import_args,
        str(paths[2]),
        env=case.import_env,
    )
    assert rc == 0 and "rejected:" not in out, out
    assert re.search(r"stored\s*│\s*1 │", out), out
    expected = {str(ds.SOPInstanceUID): PRIVATE for ds in datasets}
    assert held(server, study, series, tmp_path / "find") == expected

    # C-MOVE: dicomhub proposes the private class to the destination itself.
    promiscuous.clear()
    moved = move(server, PROMISCUOUS_AET, "STUDY", {"StudyInstanceUID": study})
    assert moved.final_counts()["completed"] == 3 and moved.statuses()[-1] == 0, moved.output[-3000:]
    assert_same_data_sets(files_by_uid(promiscuous.out_dir), paths)

    # C-GET: accepted with the SCU role for the class the requestor proposes.
    statuses = pyn_get(server, study, [PRIVATE], tmp_path / "got")
    assert statuses[-1] == 0, [hex(s) for s in statuses]
    assert_same_data_sets(files_by_uid(tmp_path / "got"), paths)


def test_only_the_configured_private_class_is_accepted(explicit: DicomhubServer, tmp_path: Path) -> None:
    _study, _series, datasets, paths = _private(tmp_path, 2, OTHER_PRIVATE)
    res = store(explicit, paths[0], extra=private_profile(tmp_path, OTHER_PRIVATE))
    assert res.returncode != 0 and "No Acceptable Presentation Contexts" in res.output, res.output[-3000:]
    rsp = stow(explicit, [datasets[1]])
    assert failure_reasons(rsp.json()) == {str(datasets[1].SOPInstanceUID): SOP_CLASS_NOT_SUPPORTED}


def test_unknown_mode_still_refuses_registered_non_storage_classes(
    unknown: DicomhubServer, tmp_path: Path
) -> None:
    """Modality Worklist FIND is registered, not unknown: no storage context for it."""
    worklist = "1.2.840.10008.5.1.4.31"
    ds = relabelled(worklist, generate_uid(), generate_uid())
    rsp = stow(unknown, [ds])
    assert failure_reasons(rsp.json()) == {str(ds.SOPInstanceUID): SOP_CLASS_NOT_SUPPORTED}
    assert (
        "`accept_unknown_sop_classes` is on"
        in httpx.get(f"{unknown.base_url}/conformance", headers={"Accept": "text/markdown"}, timeout=30).text
    )
