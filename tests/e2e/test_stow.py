"""STOW-RS against a running ``dicomhub serve``: dicomweb-client and raw httpx."""

from __future__ import annotations

import hashlib
import io
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import datagen
import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomhub.model.structure import dataset_offset

from .helpers import DicomhubServer, ServerPool, index_rows, ls_json, read_blob, study_instance_count

pytestmark = pytest.mark.e2e

BOUNDARY = "dicomhub-test-" + uuid.uuid4().hex
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
CANNOT_UNDERSTAND, DOES_NOT_MATCH, DUPLICATE = 0xC000, 0xA900, 0x0111


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


def multipart(parts: Sequence[bytes], content_type: str = "application/dicom") -> bytes:
    out = b""
    for part in parts:
        out += f"\r\n--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + part
    return out + f"\r\n--{BOUNDARY}--\r\n".encode()


def post(server: DicomhubServer, content: bytes, path: str = "/studies", **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/dicomweb{path}",
        content=content,
        headers={"Content-Type": MULTIPART, **headers},
        timeout=120,
    )


def items(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(body.get(tag, {}).get("Value", []))


def value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value")
    return values[0] if values else None


def referenced(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {value(i, "00081155"): i for i in items(body, "00081199")}


def failed(body: dict[str, Any]) -> list[tuple[str | None, int]]:
    return [(value(i, "00081155"), value(i, "00081197")) for i in items(body, "00081198")]


def client(server: DicomhubServer) -> DICOMwebClient:
    return DICOMwebClient(url=server.base_url + "/dicomweb")


def test_dicomweb_client_store_instances(server: DicomhubServer) -> None:
    study, series = datagen.uid(), datagen.uid()
    datasets = [
        datagen.make_dataset(study_uid=study, series_uid=series, instance_number=n) for n in range(1, 4)
    ]
    response = client(server).store_instances(datasets)
    refs = {str(i.ReferencedSOPInstanceUID): i for i in response.ReferencedSOPSequence}
    assert set(refs) == set(datagen.uids_of(datasets))
    assert "FailedSOPSequence" not in response
    # URLs follow the Host header, which dicomweb-client sends without the port
    base = f"/dicomweb/studies/{study}"
    assert urlsplit(response.RetrieveURL).path == base
    for ds in datasets:
        item = refs[str(ds.SOPInstanceUID)]
        assert item.ReferencedSOPClassUID == ds.SOPClassUID
        assert urlsplit(item.RetrieveURL).path == f"{base}/series/{series}/instances/{ds.SOPInstanceUID}"
    assert study_instance_count(server.data_dir, study) == 3
    # a second store of the same objects is accepted and changes nothing
    again = client(server).store_instances(datasets)
    assert len(again.ReferencedSOPSequence) == 3
    assert study_instance_count(server.data_dir, study) == 3


def test_status_200_json_without_charset(server: DicomhubServer) -> None:
    ds = datagen.make_dataset()
    r = post(server, multipart([encode(ds)]))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    assert list(referenced(r.json())) == [ds.SOPInstanceUID]


def test_boundary_quoted_type_absent_and_preamble(server: DicomhubServer) -> None:
    ds = datagen.make_dataset()
    content = b"preamble to ignore" + multipart([encode(ds)]) + b"epilogue to ignore"
    r = post(server, content, **{"Content-Type": f'multipart/related; boundary="{BOUNDARY}"'})
    assert r.status_code == 200, r.text
    assert list(referenced(r.json())) == [ds.SOPInstanceUID]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        "application/octet-stream",
        f"multipart/form-data; boundary={BOUNDARY}",
        f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
    ],
)
def test_wrong_content_type_is_415(server: DicomhubServer, content_type: str) -> None:
    ds = datagen.make_dataset()
    r = post(server, multipart([encode(ds)]), **{"Content-Type": content_type})
    assert r.status_code == 415, r.text
    assert not [row for row in ls_json(server.data_dir) if row.get("StudyInstanceUID") == ds.StudyInstanceUID]


@pytest.mark.parametrize("cut", ["truncated", "no-boundary", "no-parts", "bad-header"])
def test_malformed_body_is_400_and_stores_nothing(server: DicomhubServer, cut: str) -> None:
    ds = datagen.make_dataset()
    good = multipart([encode(ds), encode(datagen.make_dataset(study_uid=ds.StudyInstanceUID))])
    content = {
        "truncated": good[: len(good) - 200],
        "no-boundary": encode(ds),
        "no-parts": f"--{BOUNDARY}--\r\n".encode(),
        "bad-header": good.replace(b"Content-Type: application/dicom", b"not a header line", 1),
    }[cut]
    r = post(server, content)
    assert r.status_code == 400, r.text
    assert study_instance_count(server.data_dir, ds.StudyInstanceUID) == 0


def test_part_that_is_not_dicom_fails_and_the_others_are_stored(server: DicomhubServer) -> None:
    study = datagen.uid()
    good = [datagen.make_dataset(study_uid=study, instance_number=n) for n in (1, 2)]
    truncated = encode(datagen.make_dataset(study_uid=study, rows=64, cols=64))
    parts = [encode(good[0]), b"this is not DICOM at all" * 10, encode(good[1]), truncated[:-1000]]
    r = post(server, multipart(parts))
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(referenced(body)) == set(datagen.uids_of(good))
    reasons = failed(body)
    assert len(reasons) == 2
    assert all(reason == CANNOT_UNDERSTAND for _uid, reason in reasons)
    assert reasons[0][0] is None  # nothing to name for garbage
    assert "Warning" in r.headers and "DICM" in r.headers["Warning"]
    assert study_instance_count(server.data_dir, study) == 2


def test_part_of_another_media_type_fails(server: DicomhubServer) -> None:
    ds = datagen.make_dataset()
    content = multipart([encode(ds)]).replace(b"application/dicom", b"image/jpeg", 1)
    r = post(server, content)
    assert r.status_code == 409, r.text
    assert failed(r.json()) == [(ds.SOPInstanceUID, CANNOT_UNDERSTAND)]


def test_store_into_a_study_refuses_instances_of_other_studies(server: DicomhubServer) -> None:
    study = datagen.uid()
    mine = datagen.make_dataset(study_uid=study)
    other = datagen.make_dataset()
    r = post(server, multipart([encode(mine), encode(other)]), f"/studies/{study}")
    assert r.status_code == 202, r.text
    body = r.json()
    assert list(referenced(body)) == [mine.SOPInstanceUID]
    assert failed(body) == [(other.SOPInstanceUID, DOES_NOT_MATCH)]
    assert value(body, "00081190") == f"{server.base_url}/dicomweb/studies/{study}"
    assert study_instance_count(server.data_dir, study) == 1
    assert study_instance_count(server.data_dir, other.StudyInstanceUID) == 0
    # only instances of another study: nothing stored, 409
    r = post(server, multipart([encode(other)]), f"/studies/{study}")
    assert r.status_code == 409
    assert failed(r.json()) == [(other.SOPInstanceUID, DOES_NOT_MATCH)]
    # an invalid study UID in the path
    assert post(server, multipart([encode(mine)]), "/studies/1..2").status_code == 400


def test_duplicate_with_other_content_fails(server: DicomhubServer) -> None:
    first = datagen.make_dataset(seed=1)
    second = datagen.make_dataset(
        study_uid=first.StudyInstanceUID,
        series_uid=first.SeriesInstanceUID,
        sop_uid=first.SOPInstanceUID,
        seed=2,
    )
    assert post(server, multipart([encode(first)])).status_code == 200
    r = post(server, multipart([encode(second)]))
    assert r.status_code == 409, r.text
    assert failed(r.json()) == [(first.SOPInstanceUID, DUPLICATE)]
    # dicomweb-client raises on 409
    with pytest.raises(requests.HTTPError):
        client(server).store_instances([second])
    # the same content again is no failure
    assert post(server, multipart([encode(first)])).status_code == 200


def test_digests_are_computed_after_the_answer(server: DicomhubServer) -> None:
    """STOW-RS answers before the data set digests (and, on a file store, the blobs'
    SHA-256) are computed; the background process fills them in from the stored blobs
    soon after, and they match the blobs and data sets."""
    objects = [encode(datagen.make_dataset()) for _ in range(3)]
    assert post(server, multipart(objects)).status_code == 200
    expected = {
        str(dcmread(io.BytesIO(d)).SOPInstanceUID): hashlib.sha256(d[dataset_offset(d) :]).hexdigest()
        for d in objects
    }
    sql = "SELECT content_sha256, sha256, blob_key FROM instance WHERE sop_instance_uid = :uid"
    deadline = time.monotonic() + 60
    while True:
        rows = {uid: index_rows(server.data_dir, sql, uid=uid)[0] for uid in expected}
        if {uid: r[0] for uid, r in rows.items()} == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {uid: r[0] for uid, r in rows.items()} == expected
    for _content, blob_sha256, key in rows.values():
        blob = read_blob(server.data_dir, str(key))
        assert blob is not None and blob_sha256 == hashlib.sha256(blob).hexdigest()


def test_xml_response(server: DicomhubServer) -> None:
    good = datagen.make_dataset()
    r = post(server, multipart([encode(good), b"garbage"]), Accept="application/dicom+xml")
    assert r.status_code == 202
    assert r.headers["content-type"] == "application/dicom+xml"
    ns = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
    root = ET.fromstring(r.content)
    ref = root.find("d:DicomAttribute[@tag='00081199']/d:Item", ns)
    assert ref is not None
    uid = ref.find("d:DicomAttribute[@keyword='ReferencedSOPInstanceUID']/d:Value", ns)
    assert uid is not None and uid.text == good.SOPInstanceUID
    reason = root.find(
        "d:DicomAttribute[@tag='00081198']/d:Item/d:DicomAttribute[@tag='00081197']/d:Value", ns
    )
    assert reason is not None and int(reason.text or "") == CANNOT_UNDERSTAND
    assert post(server, multipart([encode(good)]), Accept="text/html").status_code == 406


# ------------------------------------------------------------------ a large upload

PART_ROWS, PART_COLS = 1024, 1536  # 3 MiB of pixel data per part
LARGE_PARTS = 100


def _vm(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def test_large_upload_is_streamed(servers: ServerPool) -> None:
    hub = servers.start()
    assert hub.proc is not None
    study, series = datagen.uid(), datagen.uid()
    # warm up the code paths (imports, thread pool) before measuring
    warm = datagen.make_dataset(study_uid=study, series_uid=series, rows=PART_ROWS, cols=PART_COLS)
    assert post(hub, multipart([encode(warm)])).status_code == 200
    before = _vm(hub.proc.pid, "VmHWM")
    sent = 0

    def generate() -> Iterator[bytes]:
        nonlocal sent
        for n in range(LARGE_PARTS):
            ds = datagen.make_dataset(
                study_uid=study, series_uid=series, instance_number=n + 2, rows=PART_ROWS, cols=PART_COLS
            )
            chunk = f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + encode(ds)
            sent += len(chunk)
            yield chunk
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    r = httpx.post(
        f"{hub.base_url}/dicomweb/studies/{study}",
        content=generate(),
        headers={"Content-Type": MULTIPART},
        timeout=600,
    )
    assert r.status_code == 200, r.text[:2000]
    assert len(referenced(r.json())) == LARGE_PARTS
    after = _vm(hub.proc.pid, "VmHWM")
    assert sent > 300 * 1024 * 1024
    # The server's peak resident size grew by far less than the body.
    assert after - before < sent // 4, (
        f"VmHWM grew from {before >> 20} to {after >> 20} MiB for {sent >> 20} MiB"
    )
    # And stayed well under the body in absolute terms. The bound is mostly the HTTP
    # process's baseline (about 160 MiB on PostgreSQL + S3, whose psycopg and boto3 add
    # about 40 MiB, with the print, FHIR and UI modules): the growth check above is the
    # streaming check, this one says the body was never held whole.
    assert after < sent * 3 // 4, f"VmHWM {after >> 20} MiB for a {sent >> 20} MiB body"
    assert study_instance_count(hub.data_dir, study) == LARGE_PARTS + 1
    assert not list((hub.data_dir / "tmp").glob("stow-*/*"))  # spool files removed
