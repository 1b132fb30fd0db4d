"""DICOMweb and DIMSE see the same archive: STOW-RS -> C-FIND/C-GET, C-STORE -> QIDO-RS/WADO-RS.

Bytes are compared from the start of the data set: the File Meta group is
each writer's own (dicomhub writes its own for objects received over DIMSE,
DCMTK its own for files it receives).
"""

from __future__ import annotations

import io
from pathlib import Path

import datagen
import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from dicomhub.model.structure import dataset_offset
from dicomhub.web.dicomweb.upload import MultipartParser, PartData, PartEnd, parse_media_type

from .helpers import HOST, DicomhubServer, find, run_dcmtk, store_ok

pytestmark = pytest.mark.e2e

BOUNDARY = "dicomhub-interop-boundary"


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


def data_set_bytes(part10: bytes) -> bytes:
    return part10[dataset_offset(part10) :]


def split_multipart(response: httpx.Response) -> list[bytes]:
    media_type, params = parse_media_type(response.headers["content-type"])
    assert media_type == "multipart/related", response.headers["content-type"]
    parser = MultipartParser(params["boundary"].encode())
    parts: list[bytes] = []
    current = b""
    for event in parser.feed(response.content):
        if isinstance(event, PartData):
            current += event.data
        elif isinstance(event, PartEnd):
            parts.append(current)
            current = b""
    parser.close()
    return parts


def dicomweb_available(server: DicomhubServer) -> None:
    r = httpx.get(f"{server.base_url}/dicomweb/studies", params={"limit": 1}, timeout=10)
    if r.status_code in (404, 405):
        pytest.fail(f"QIDO-RS is not served yet (GET /dicomweb/studies -> {r.status_code})")


def test_stow_instance_is_found_by_cfind_and_retrieved_by_cget(
    server: DicomhubServer, tmp_path: Path
) -> None:
    ds = datagen.make_dataset(rows=64, cols=64, patient_id="STOW-INTEROP")
    sent = encode(ds)
    body = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + sent
        + f"\r\n--{BOUNDARY}--".encode()
    )
    r = httpx.post(
        f"{server.base_url}/dicomweb/studies",
        content=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'},
        timeout=60,
    )
    assert r.status_code == 200, r.text

    matches = find(
        server,
        "IMAGE",
        {
            "StudyInstanceUID": ds.StudyInstanceUID,
            "SeriesInstanceUID": ds.SeriesInstanceUID,
            "SOPInstanceUID": None,
        },
        tmp_path / "find",
    )
    assert [str(m.SOPInstanceUID) for m in matches] == [ds.SOPInstanceUID]

    out = tmp_path / "get"
    out.mkdir()
    rc, log = run_dcmtk(
        "getscu", "-S", "+B", "-od", out, "-aet", "GETSCU", "-aec", server.aet,
        "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
        "-k", f"SeriesInstanceUID={ds.SeriesInstanceUID}", "-k", f"SOPInstanceUID={ds.SOPInstanceUID}",
        HOST, str(server.dimse_port),
    )  # fmt: skip
    assert rc == 0, log[-4000:]
    [received] = [p for p in out.iterdir() if p.is_file()]
    assert data_set_bytes(received.read_bytes()) == data_set_bytes(sent)


def test_cstore_instance_is_found_by_qido_and_retrieved_by_wado(
    server: DicomhubServer, tmp_path: Path
) -> None:
    path = tmp_path / "one.dcm"
    ds = datagen.write_instance(path, rows=64, cols=64, patient_id="DIMSE-INTEROP")
    store_ok(server, path, expect=1)
    dicomweb_available(server)

    client = DICOMwebClient(url=server.base_url + "/dicomweb")
    studies = client.search_for_studies(search_filters={"PatientID": "DIMSE-INTEROP"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [ds.StudyInstanceUID]
    instances = client.search_for_instances(
        study_instance_uid=ds.StudyInstanceUID, series_instance_uid=ds.SeriesInstanceUID
    )
    assert [i["00080018"]["Value"][0] for i in instances] == [ds.SOPInstanceUID]

    url = (
        f"{server.base_url}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    r = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert r.status_code == 200, r.text[:1000]
    [part] = split_multipart(r)
    assert data_set_bytes(part) == data_set_bytes(path.read_bytes())

    retrieved = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert retrieved.SOPInstanceUID == ds.SOPInstanceUID
    assert bytes(retrieved.PixelData) == bytes(ds.PixelData)
