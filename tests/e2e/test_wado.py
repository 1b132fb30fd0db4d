"""WADO-RS and WADO-URI against a real ``dicomhub serve``: data stored with storescu,
read back with dicomweb-client (and raw httpx for headers and error paths)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import datagen
import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset

from dicomhub.model.structure import dataset_offset

from .helpers import DicomhubServer, ServerPool, store_ok

pytestmark = pytest.mark.e2e

N_SLICES = 12
FRAMES = 5
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


@dataclass
class Stored:
    study_uid: str
    series_uid: str
    series: list[Dataset]
    big: Dataset
    multi: Dataset
    implicit: Dataset
    files: dict[str, Path]


def _multiframe(path: Path, study_uid: str) -> Dataset:
    ds = datagen.make_dataset(study_uid=study_uid, rows=32, cols=24, instance_number=1)
    frames = np.stack([np.full((32, 24), 100 * (i + 1), dtype=np.uint16) for i in range(FRAMES)])
    frames[:, 0, 0] = np.arange(FRAMES)  # every frame distinct at its first pixel too
    ds.NumberOfFrames = FRAMES
    ds.PixelData = frames.tobytes()
    datagen.write_dataset(path, ds)
    return ds


@pytest.fixture(scope="module")
def stored(server: DicomhubServer, tmp_path_factory: pytest.TempPathFactory) -> Stored:
    root = tmp_path_factory.mktemp("wado")
    study_uid = datagen.uid()
    series = datagen.write_ct_series(root / "series", N_SLICES, study_uid=study_uid)
    files = {ds.SOPInstanceUID: Path(ds.filename) for ds in series}
    big = datagen.write_instance(
        root / "big" / "big.dcm", study_uid=study_uid, rows=512, cols=512,
        extra={"WindowCenter": "40", "WindowWidth": "400"},
    )  # fmt: skip
    multi = _multiframe(root / "multi" / "multi.dcm", study_uid)
    implicit = datagen.write_instance(root / "implicit" / "imp.dcm", study_uid=study_uid, implicit=True)
    files[big.SOPInstanceUID] = root / "big" / "big.dcm"
    files[multi.SOPInstanceUID] = root / "multi" / "multi.dcm"
    files[implicit.SOPInstanceUID] = root / "implicit" / "imp.dcm"
    # +r0 ... storescu sends each file in its own syntax (explicit or implicit LE).
    store_ok(server, root, expect=N_SLICES + 3)
    return Stored(study_uid, series[0].SeriesInstanceUID, series, big, multi, implicit, files)


def _client(server: DicomhubServer) -> DICOMwebClient:
    return DICOMwebClient(url=server.base_url + "/dicomweb")


def _url(server: DicomhubServer, ds: Dataset, suffix: str = "") -> str:
    return (
        f"{server.base_url}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}{suffix}"
    )


def _body(path: Path) -> bytes:
    data = path.read_bytes()
    return data[dataset_offset(data) :]


def test_retrieve_series_and_instance(server: DicomhubServer, stored: Stored) -> None:
    client = _client(server)
    got = client.retrieve_series(stored.study_uid, stored.series_uid)
    assert sorted(ds.SOPInstanceUID for ds in got) == sorted(ds.SOPInstanceUID for ds in stored.series)
    by_uid = {ds.SOPInstanceUID: ds for ds in stored.series}
    for ds in got:
        original = by_uid[ds.SOPInstanceUID]
        assert ds.PixelData == original.PixelData
        assert ds.StudyInstanceUID == stored.study_uid and ds.SeriesInstanceUID == stored.series_uid
    one = client.retrieve_instance(stored.study_uid, stored.series_uid, stored.series[3].SOPInstanceUID)
    assert one.SOPInstanceUID == stored.series[3].SOPInstanceUID
    assert one.PixelData == stored.series[3].PixelData


def test_retrieve_study_stored_syntax_is_byte_identical(server: DicomhubServer, stored: Stored) -> None:
    client = _client(server)
    got = client.retrieve_study(stored.study_uid, media_types=(("application/dicom", "*"),))
    assert len(got) == N_SLICES + 3
    imp = next(ds for ds in got if ds.SOPInstanceUID == stored.implicit.SOPInstanceUID)
    assert imp.file_meta.TransferSyntaxUID == IMPLICIT
    # Raw parts: the data set bytes are exactly what storescu sent.
    r = httpx.get(
        f"{server.base_url}/dicomweb/studies/{stored.study_uid}/series/{stored.series_uid}"
        f"/instances/{stored.series[0].SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    assert f"transfer-syntax={EXPLICIT}".encode() in r.content
    assert _body(stored.files[stored.series[0].SOPInstanceUID]) in r.content


def test_transfer_syntax_negotiation(server: DicomhubServer, stored: Stored) -> None:
    url = _url(server, stored.implicit)
    r = httpx.get(
        url, headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}'}
    )
    assert r.status_code == 200 and f"transfer-syntax={EXPLICIT}".encode() in r.content
    client = _client(server)
    ds = client.retrieve_instance(
        stored.study_uid, stored.implicit.SeriesInstanceUID, stored.implicit.SOPInstanceUID,
        media_types=(("application/dicom", EXPLICIT),),
    )  # fmt: skip
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT and ds.PixelData == stored.implicit.PixelData
    # JPEG extended is decoded but not encoded in this install: nothing to send, and the reason says so.
    jpeg_extended = "1.2.840.10008.1.2.4.51"
    r = httpx.get(
        url,
        headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={jpeg_extended}'},
    )
    assert r.status_code == 406 and "can be produced" in r.json()["error"]
    # JPEG 2000 can be encoded, but not a 16x16 image (the encoder's resolution levels need 32 px).
    jpeg2000 = "1.2.840.10008.1.2.4.90"
    r = httpx.get(
        url, headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={jpeg2000}'}
    )
    assert r.status_code == 406 and "cannot encode" in r.json()["error"]
    r = httpx.get(url + "/metadata", headers={"Accept": "application/dicom+xml"})
    assert r.status_code == 406


def test_unknown_and_invalid_uids(server: DicomhubServer, stored: Stored) -> None:
    base = server.base_url + "/dicomweb/studies"
    unknown = datagen.uid()
    assert httpx.get(f"{base}/{unknown}").status_code == 404
    assert httpx.get(f"{base}/{unknown}/metadata").status_code == 404
    assert httpx.get(f"{base}/{stored.study_uid}/series/{unknown}").status_code == 404
    assert (
        httpx.get(f"{base}/{stored.study_uid}/series/{stored.series_uid}/instances/{unknown}").status_code
        == 404
    )
    assert httpx.get(f"{base}/1.2.abc").status_code == 400


def test_series_metadata(server: DicomhubServer, stored: Stored) -> None:
    client = _client(server)
    meta = client.retrieve_series_metadata(stored.study_uid, stored.series_uid)
    assert len(meta) == N_SLICES
    by_uid = {ds.SOPInstanceUID: ds for ds in stored.series}
    for item in meta:
        ds = Dataset.from_json(item, bulk_data_uri_handler=lambda _uri: b"")
        original = by_uid[ds.SOPInstanceUID]
        assert ds.PatientName == original.PatientName and ds.InstanceNumber == original.InstanceNumber
        assert ds.Rows == 64 and ds.RequestAttributesSequence[0].RequestedProcedureID == "RP0001"
        # dicomweb-client sends "Host: 127.0.0.1" without the port, and URIs follow the Host
        # header (as they must behind a proxy): compare the path here, the whole URI below.
        path = item["7FE00010"]["BulkDataURI"].split("/dicomweb/", 1)[1]
        uri = _url(server, original, "/bulk/7FE00010")
        assert uri.endswith("/dicomweb/" + path)
        assert item["7FE00010"]["vr"] == "OW"
        # The BulkDataURI gives the pixel data back.
        r = httpx.get(uri, headers={"Accept": "application/octet-stream"})
        assert r.status_code == 200 and r.content == original.PixelData
    assert client.retrieve_bulkdata(uri)[0] == original.PixelData
    raw = httpx.get(
        f"{server.base_url}/dicomweb/studies/{stored.study_uid}/series/{stored.series_uid}/metadata"
    )
    assert {item["7FE00010"]["BulkDataURI"] for item in raw.json()} == {
        _url(server, ds, "/bulk/7FE00010") for ds in stored.series
    }


def test_uris_without_public_base_url_follow_the_request(server: DicomhubServer, stored: Stored) -> None:
    # No public_base_url: the base is the request's. uvicorn takes X-Forwarded-Proto from a
    # trusted proxy (127.0.0.1 by default, as this test client is); X-Forwarded-Host is ignored.
    ds = stored.series[0]
    r = httpx.get(
        _url(server, ds, "/metadata"),
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "elsewhere.example"},
    )
    expected = _url(server, ds, "/bulk/7FE00010").replace("http://", "https://", 1)
    assert r.json()[0]["7FE00010"]["BulkDataURI"] == expected


def test_metadata_bulk_uri_of_a_large_element(server: DicomhubServer, stored: Stored) -> None:
    # A private OB value above the 1024-byte threshold is bulk data in the metadata.
    tmp = Path(server.data_dir).parent / "bulk"
    value = bytes(range(256)) * 8
    ds = datagen.make_dataset(study_uid=stored.study_uid)
    ds.add_new(0x00091010, "LO", "DICOMHUB")
    ds.add_new(0x00091011, "OB", value)
    datagen.write_dataset(tmp / "b.dcm", ds)
    store_ok(server, tmp / "b.dcm", expect=1)
    meta = httpx.get(_url(server, ds, "/metadata")).json()
    uri = meta[0]["00091011"]["BulkDataURI"]
    assert uri == _url(server, ds, "/bulk/00091011")
    assert httpx.get(uri, headers={"Accept": "application/octet-stream"}).content == value
    r = httpx.get(uri, headers={"Accept": "application/octet-stream", "Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == value[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(value)}"
    r = httpx.get(uri, headers={"Accept": "application/octet-stream", "Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == value[-10:]
    r = httpx.get(uri, headers={"Accept": "application/octet-stream", "Range": f"bytes={len(value)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(value)}"


def test_range_on_pixel_data(server: DicomhubServer, stored: Stored) -> None:
    uri = _url(server, stored.big, "/bulk/7FE00010")
    r = httpx.get(uri, headers={"Accept": "application/octet-stream", "Range": "bytes=1000-4999"})
    assert r.status_code == 206 and r.content == stored.big.PixelData[1000:5000]
    assert (
        httpx.get(uri, headers={"Accept": "application/octet-stream", "Range": "bytes=99999999-"}).status_code
        == 416
    )


def test_metadata_etag(server: DicomhubServer, stored: Stored) -> None:
    url = f"{server.base_url}/dicomweb/studies/{stored.study_uid}/series/{stored.series_uid}/metadata"
    r = httpx.get(url)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/dicom+json")
    etag = r.headers["etag"]
    r2 = httpx.get(url, headers={"If-None-Match": etag})
    assert r2.status_code == 304 and r2.headers["etag"] == etag and not r2.content
    assert httpx.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_instance_metadata_reads_stored_values(server: DicomhubServer, stored: Stored) -> None:
    meta = _client(server).retrieve_instance_metadata(
        stored.study_uid, stored.multi.SeriesInstanceUID, stored.multi.SOPInstanceUID
    )
    assert meta["00280008"]["Value"] == [FRAMES]
    assert meta["0020000D"]["Value"] == [stored.study_uid]


def test_frames(server: DicomhubServer, stored: Stored) -> None:
    client = _client(server)
    m = stored.multi
    frame_size = 32 * 24 * 2
    got = client.retrieve_instance_frames(stored.study_uid, m.SeriesInstanceUID, m.SOPInstanceUID, [2, 5])
    assert got == [m.PixelData[frame_size : 2 * frame_size], m.PixelData[4 * frame_size : 5 * frame_size]]
    one = client.retrieve_instance_frames(
        stored.study_uid, stored.implicit.SeriesInstanceUID, stored.implicit.SOPInstanceUID, [1]
    )
    assert one == [stored.implicit.PixelData]
    r = httpx.get(_url(server, m, "/frames/6"))
    assert r.status_code == 404
    assert httpx.get(_url(server, m, "/frames/0")).status_code == 400
    assert httpx.get(_url(server, m, "/frames/a")).status_code == 400
    r = httpx.get(_url(server, m, "/frames/1"), headers={"Accept": 'multipart/related; type="image/jp2"'})
    assert r.status_code == 406
    r = httpx.get(_url(server, m, "/frames/3"), headers={"Accept": "application/octet-stream"})
    assert r.status_code == 200 and r.content == m.PixelData[2 * frame_size : 3 * frame_size]


def _image(data: bytes) -> Image.Image:
    image = Image.open(BytesIO(data))
    image.load()
    return image


def test_rendered(server: DicomhubServer, stored: Stored) -> None:
    client = _client(server)
    b = stored.big
    jpeg = _image(client.retrieve_instance_rendered(stored.study_uid, b.SeriesInstanceUID, b.SOPInstanceUID))
    assert jpeg.format == "JPEG" and jpeg.size == (512, 512)
    r = httpx.get(
        _url(server, b, "/rendered"),
        params={"viewport": "256,128", "window": "1000,2000,LINEAR", "quality": "60"},
        headers={"Accept": "image/png"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert _image(r.content).size == (128, 128)
    thumb = httpx.get(_url(server, b, "/thumbnail"))
    assert thumb.status_code == 200 and _image(thumb.content).size == (128, 128)
    frame = httpx.get(_url(server, stored.multi, "/frames/4/rendered"))
    assert _image(frame.content).size == (24, 32)
    series = httpx.get(
        f"{server.base_url}/dicomweb/studies/{stored.study_uid}/series/{stored.series_uid}/rendered"
    )
    assert series.status_code == 200 and _image(series.content).size == (64, 64)
    series_thumb = httpx.get(
        f"{server.base_url}/dicomweb/studies/{stored.study_uid}/series/{stored.series_uid}/thumbnail"
    )
    assert _image(series_thumb.content).size == (128, 128)
    assert httpx.get(_url(server, b, "/rendered"), headers={"Accept": "image/gif"}).status_code == 406
    assert httpx.get(_url(server, b, "/rendered"), params={"window": "1,0"}).status_code == 400


def test_rendered_window_is_applied(server: DicomhubServer, stored: Stored) -> None:
    b = stored.big
    # Stored values 0..4095 with intercept -1024: a window far above the data is black.
    black = httpx.get(
        _url(server, b, "/rendered"), params={"window": "100000,10"}, headers={"Accept": "image/png"}
    )
    assert np.asarray(_image(black.content)).max() == 0
    white = httpx.get(
        _url(server, b, "/rendered"), params={"window": "-100000,10"}, headers={"Accept": "image/png"}
    )
    assert np.asarray(_image(white.content)).min() == 255


def test_wado_uri(server: DicomhubServer, stored: Stored) -> None:
    url = server.base_url + "/dicomweb/wado"
    ds = stored.series[1]
    uids = {"studyUID": stored.study_uid, "seriesUID": stored.series_uid, "objectUID": ds.SOPInstanceUID}
    r = httpx.get(url, params={"requestType": "WADO", **uids, "contentType": "application/dicom"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    assert r.content[dataset_offset(r.content) :] == _body(stored.files[ds.SOPInstanceUID])
    again = pydicom.dcmread(BytesIO(r.content))
    assert again.SOPInstanceUID == ds.SOPInstanceUID
    r = httpx.get(url, params={"requestType": "WADO", **uids, "contentType": "application/dicom",
                               "transferSyntax": IMPLICIT})  # fmt: skip
    assert pydicom.dcmread(BytesIO(r.content)).file_meta.TransferSyntaxUID == IMPLICIT
    r = httpx.get(url, params={"requestType": "WADO", **uids})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert _image(r.content).size == (64, 64)
    r = httpx.get(url, params={"requestType": "WADO", **uids, "contentType": "image/png", "rows": "32",
                               "windowCenter": "40", "windowWidth": "400"})  # fmt: skip
    assert r.headers["content-type"] == "image/png" and _image(r.content).size == (32, 32)
    assert httpx.get(url, params={**uids}).status_code == 400
    assert httpx.get(url, params={"requestType": "WADO", "studyUID": stored.study_uid}).status_code == 400
    assert httpx.get(url, params={"requestType": "WADO", **uids, "objectUID": "x.1"}).status_code == 400
    assert (
        httpx.get(url, params={"requestType": "WADO", **uids, "objectUID": datagen.uid()}).status_code == 404
    )
    assert (
        httpx.get(url, params={"requestType": "WADO", **uids, "contentType": "text/html"}).status_code == 406
    )


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_retrieve_streams(servers: ServerPool, tmp_path: Path) -> None:
    srv = servers.start("stream")
    n = 80
    series = datagen.write_ct_series(tmp_path / "s", n, rows=512, cols=512)
    store_ok(srv, tmp_path / "s", expect=n)
    study_bytes = sum(len(ds.PixelData) for ds in series)  # ~42 MB
    assert srv.proc is not None
    # One instance first: what the first retrieval of a process sets up once
    # (the object store client's lazily loaded parsers, thread pools) is not
    # the study's bytes, and is not what this bound is about.
    first = series[0]
    warm = httpx.get(
        f"{srv.base_url}/dicomweb/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
        f"/instances/{first.SOPInstanceUID}",
        headers={"Accept-Encoding": "identity"}, timeout=60,
    )  # fmt: skip
    assert warm.status_code == 200
    before = _peak_rss_kib(srv.proc.pid)
    received = 0
    start = time.monotonic()
    with httpx.stream(
        "GET", f"{srv.base_url}/dicomweb/studies/{series[0].StudyInstanceUID}",
        headers={"Accept-Encoding": "identity"}, timeout=60,
    ) as r:  # fmt: skip
        assert r.status_code == 200
        # Stored objects have known sizes: the length is announced up front,
        # and the body is still streamed (the memory check below).
        announced = int(r.headers["content-length"])
        for chunk in r.iter_raw():
            received += len(chunk)
    assert received == announced
    assert received > study_bytes
    grown = (_peak_rss_kib(srv.proc.pid) - before) * 1024
    assert grown < study_bytes / 4, f"server peak RSS grew by {grown} bytes for a {study_bytes}-byte study"
    assert time.monotonic() - start < 30
