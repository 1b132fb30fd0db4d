"""What web viewers ask for, asked the way they ask it, of a real ``dicomhub serve``.

The requests reproduce OHIF's DICOMweb data source and cornerstone3D's WADO-RS
image loader (their request patterns, not their code):

- frames: ``GET .../frames/{n}``, one frame per request, with
  ``Accept: multipart/related; type=application/octet-stream; transfer-syntax=*``
  (cornerstone3D's constant, unquoted), the quoted form OHIF builds when
  ``omitQuotationForMultipartRequest`` is off, or a single part
  ``application/octet-stream; transfer-syntax=*``. The loader takes the first
  part, reads the transfer syntax from that part's ``Content-Type`` and decodes
  the bytes itself; here the test decodes them with pydicom and compares them
  with the stored object's pixels;
- the study list: QIDO-RS with ``includefield`` of tags in hex, the patient ID
  keyed by its tag, ``fuzzymatching=false``, ``limit=101&offset=0``;
- series metadata with ``Accept: application/dicom+json``, then the absolute
  BulkDataURIs it holds, single part (no Accept: ``singlepart: 'bulkdata'``)
  or ``multipart/related; type="application/octet-stream"``;
- thumbnails: ``Accept: image/jpeg`` (fetch), the bulk data pattern above on
  the thumbnail URL, ``?accept=image/jpeg`` in an ``<img>`` URL, study level;
- video and PDF: ``.../instances/{instance}/rendered`` with no Accept of its own.

The server runs with ``--public-base-url``, as behind a reverse proxy: every
absolute URL it hands out must start with that base.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from io import BytesIO

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import generate_uid

from .helpers import DicomhubServer, ServerPool, split_multipart

pytestmark = pytest.mark.e2e

PUBLIC = "https://pacs.example.org/dicom-web"
EXPLICIT = "1.2.840.10008.1.2.1"
CORNERSTONE = "multipart/related; type=application/octet-stream; transfer-syntax=*"
OHIF_QUOTED = 'multipart/related; type="application/octet-stream"; transfer-syntax="*"'
SINGLE_PART = "application/octet-stream; transfer-syntax=*"
BULK_MULTIPART = 'multipart/related; type="application/octet-stream"'
BROWSER_IMG = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"

#: pydicom's test files, one per stored syntax (and multi-frame where there is one).
FILES = {
    "rle": "MR_small_RLE.dcm",
    "rle-multiframe": "emri_small_RLE.dcm",
    "jpeg-ls": "MR_small_jpeg_ls_lossless.dcm",
    "jpeg-ls-multiframe": "emri_small_jpeg_ls_lossless.dcm",
    "jpeg-lossless": "JPEG-LL.dcm",
    "jpeg-lossless-rgb": "SC_rgb_jpeg_gdcm.dcm",
    "jpeg-baseline-ybr": "SC_rgb_jpeg_lossy_gdcm.dcm",
    "j2k": "JPEG2000.dcm",
    "j2k-lossless-multiframe": "emri_small_jpeg_2k_lossless.dcm",
    "explicit": "MR_small.dcm",
    "implicit": "MR_small_implicit.dcm",
    "big-endian": "MR_small_bigendian.dcm",
    "big-endian-multiframe": "emri_small_big_endian.dcm",
}
NATIVE = ("explicit", "implicit", "big-endian", "big-endian-multiframe")
COMPRESSED = tuple(name for name in FILES if name not in NATIVE)

_PIXEL_MODULE = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "PlanarConfiguration",
)


@dataclass
class Study:
    server: DicomhubServer
    study_uid: str
    datasets: dict[str, Dataset]  # as stored, by FILES key
    stow_response: dict[str, object]


VIDEO_STREAM = bytes(range(256)) * 100  # stands in for an H.264 stream: stored, never decoded
#: A private OW value added to the big-endian object, above the 1024-byte bulk data threshold.
PRIVATE_WORDS = np.arange(1024, dtype=np.uint16)
PDF = b"%PDF-1.4\n" + b"%" * 3000 + b"\n%%EOF\n"


def _video(study_uid: str) -> Dataset:
    """A video instance (MPEG-4 AVC/H.264) whose stream is split over four fragments."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
    ds.Modality = "XC"
    ds.StudyInstanceUID = study_uid
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.FrameTime = 64, 64, 30, 33.3
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_PARTIAL_420", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([VIDEO_STREAM], fragments_per_frame=4)
    ds["PixelData"].VR = "OB"
    return ds


def _pdf(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.Modality = "DOC"
    ds.StudyInstanceUID = study_uid
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = PDF
    return ds


def _part10(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def study(module_servers: ServerPool) -> Study:
    server = module_servers.start(args=["--public-base-url", PUBLIC + "/"])
    study_uid = generate_uid()
    datasets: dict[str, Dataset] = {}
    boundary = "viewer-test-boundary"
    body = b""
    sources = {name: pydicom.dcmread(get_testdata_file(filename)) for name, filename in FILES.items()}
    sources["video"], sources["pdf"] = _video(study_uid), _pdf(study_uid)
    sources["big-endian"].add_new(0x00091010, "LO", "DICOMHUB TEST")
    sources["big-endian"].add_new(0x00091011, "OW", PRIVATE_WORDS.astype(">u2").tobytes())
    for name, ds in sources.items():
        # Several test files share their UIDs: each becomes its own series of one study.
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = "VIEWER-1"
        ds.SeriesDescription = name
        data = _part10(ds)
        datasets[name] = pydicom.dcmread(BytesIO(data))
        # Sent in the file's own syntax (big endian included): the server keeps it as received.
        assert datasets[name].file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    r = httpx.post(
        f"{server.base_url}/dicomweb/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return Study(server, study_uid, datasets, r.json())


def _instance_url(study: Study, ds: Dataset, suffix: str = "") -> str:
    return (
        f"{study.server.base_url}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}{suffix}"
    )


def _local(study: Study, url: str) -> str:
    """A URL the server handed out, sent where the reverse proxy would send it."""
    assert url.startswith(PUBLIC + "/"), url
    return study.server.base_url + "/dicomweb" + url[len(PUBLIC) :]


def _first_part_like_cornerstone(response: httpx.Response) -> tuple[str, bytes]:
    """(Content-Type of the first part, its bytes), found as cornerstone3D's loader finds them.

    No multipart in the response's Content-Type: the body is the frame and the
    response's Content-Type names the syntax. Otherwise the part headers end at
    the first blank line, the boundary is the header line starting with
    ``--``, the part's type is the line starting with ``Content-Type:``
    (exactly so spelled), and the content ends two bytes before the next
    boundary.
    """
    content_type = response.headers["content-type"]
    body = response.content
    if "multipart" not in content_type:
        return content_type, body
    head_end = body.index(b"\r\n\r\n")
    lines = body[:head_end].decode("latin-1").split("\r\n")
    boundary = next(line for line in lines if line.startswith("--"))
    part_type = next(line[13:].strip() for line in lines if line.startswith("Content-Type:"))
    start = head_end + 4
    end = body.index(boundary.encode("latin-1"), start)
    return part_type, body[start : end - 2]


def _syntax_of(content_type: str) -> str:
    m = re.search(r'transfer-syntax="?([0-9.]+)"?', content_type)
    assert m, f"no transfer-syntax in {content_type!r}"
    return m.group(1)


def _decode(stored: Dataset, frame: bytes, ts: str) -> np.ndarray:
    """One frame's pixels from the bytes a viewer received and the syntax it was told."""
    rows, columns, samples = stored.Rows, stored.Columns, stored.SamplesPerPixel
    if ts == EXPLICIT:
        signed = "i" if stored.PixelRepresentation else "u"
        dtype = np.dtype(f"<{signed}{stored.BitsAllocated // 8}")
        shape = (rows, columns) if samples == 1 else (rows, columns, samples)
        assert len(frame) == rows * columns * samples * dtype.itemsize
        return np.frombuffer(frame, dtype).reshape(shape)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    for keyword in _PIXEL_MODULE:
        if keyword in stored:
            setattr(ds, keyword, stored[keyword].value)
    ds.NumberOfFrames = 1
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return ds.pixel_array


def _stored_frame(stored: Dataset, n: int) -> np.ndarray:
    pixels = stored.pixel_array
    return pixels[n - 1] if int(stored.get("NumberOfFrames", 1) or 1) > 1 else pixels


def _frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


# ---------------------------------------------------------------- frames


@pytest.mark.parametrize("name", list(FILES))
def test_cornerstone_frame_requests_decode_to_the_stored_pixels(study: Study, name: str) -> None:
    stored = study.datasets[name]
    stored_ts = stored.file_meta.TransferSyntaxUID
    with httpx.Client(timeout=30) as client:
        for n in range(1, _frame_count(stored) + 1):
            r = client.get(_instance_url(study, stored, f"/frames/{n}"), headers={"Accept": CORNERSTONE})
            assert r.status_code == 200, r.text
            assert r.headers["content-type"].startswith('multipart/related; type="application/octet-stream"')
            part_type, frame = _first_part_like_cornerstone(r)
            assert part_type.startswith("application/octet-stream;")
            ts = _syntax_of(part_type)
            # Compressed frames go as stored; native ones as Explicit VR Little
            # Endian, whatever the stored byte order (PS3.18 8.7.3.3.2).
            assert ts == (EXPLICIT if name in NATIVE else stored_ts)
            np.testing.assert_array_equal(_decode(stored, frame, ts), _stored_frame(stored, n))


@pytest.mark.parametrize("name", ["j2k-lossless-multiframe", "jpeg-ls", "big-endian", "implicit"])
def test_ohif_quoted_and_single_part_requests(study: Study, name: str) -> None:
    stored = study.datasets[name]
    n = _frame_count(stored)
    for accept in (OHIF_QUOTED, SINGLE_PART):
        r = httpx.get(_instance_url(study, stored, f"/frames/{n}"), headers={"Accept": accept})
        assert r.status_code == 200, (accept, r.text)
        part_type, frame = _first_part_like_cornerstone(r)
        assert ("multipart" in r.headers["content-type"]) == (accept == OHIF_QUOTED)
        np.testing.assert_array_equal(_decode(stored, frame, _syntax_of(part_type)), _stored_frame(stored, n))


def test_several_frames_in_one_request(study: Study) -> None:
    stored = study.datasets["rle-multiframe"]
    r = httpx.get(_instance_url(study, stored, "/frames/3,1,10"), headers={"Accept": CORNERSTONE})
    assert r.status_code == 200
    parts = split_multipart(r.content, r.headers["content-type"])
    assert [_syntax_of(h["content-type"]) for h, _ in parts] == [stored.file_meta.TransferSyntaxUID] * 3
    for (_, frame), n in zip(parts, (3, 1, 10), strict=True):
        np.testing.assert_array_equal(
            _decode(stored, frame, stored.file_meta.TransferSyntaxUID), _stored_frame(stored, n)
        )


def test_dicomweb_client_any_syntax_frames(study: Study) -> None:
    # dicomweb-client (Python) sends the same pattern with the type quoted.
    stored = study.datasets["j2k-lossless-multiframe"]
    client = DICOMwebClient(url=study.server.base_url + "/dicomweb")
    frames = client.retrieve_instance_frames(
        stored.StudyInstanceUID,
        stored.SeriesInstanceUID,
        stored.SOPInstanceUID,
        [2, 7],
        media_types=(("application/octet-stream", "*"),),
    )
    count = _frame_count(stored)
    assert frames == [get_frame(stored.PixelData, n - 1, number_of_frames=count) for n in (2, 7)]


# ---------------------------------------------------------------- study list and metadata


def test_ohif_study_list_query(study: Study) -> None:
    params = {
        "00100020": "VIEWER-1",
        "limit": "101",
        "offset": "0",
        "fuzzymatching": "false",
        "includefield": "00081030,00080060,00080090,00100030",
        "StudyInstanceUID": study.study_uid,
    }
    r = httpx.get(f"{study.server.base_url}/dicomweb/studies", params=params)
    assert r.status_code == 200, r.text
    (found,) = r.json()
    assert found["0020000D"]["Value"] == [study.study_uid]
    assert found["00201208"]["Value"] == [len(study.datasets)]  # NumberOfStudyRelatedInstances
    assert found["00081190"]["Value"] == [f"{PUBLIC}/studies/{study.study_uid}"]  # RetrieveURL
    series = httpx.get(
        f"{study.server.base_url}/dicomweb/studies/{study.study_uid}/series",
        params={"includefield": "0008103E,00080021"},
    ).json()
    assert len(series) == len(study.datasets)
    for item in series:
        assert item["00081190"]["Value"][0] == (
            f"{PUBLIC}/studies/{study.study_uid}/series/{item['0020000E']['Value'][0]}"
        )


def test_stow_response_urls_use_the_public_base(study: Study) -> None:
    assert study.stow_response["00081190"]["Value"] == [f"{PUBLIC}/studies/{study.study_uid}"]  # type: ignore[index]
    refs = study.stow_response["00081199"]["Value"]  # type: ignore[index]
    assert all(ref["00081190"]["Value"][0].startswith(PUBLIC + "/studies/") for ref in refs)


@pytest.mark.parametrize("name", ["explicit", "big-endian-multiframe", "j2k-lossless-multiframe", "rle"])
def test_series_metadata_bulk_data_uris_are_followed(study: Study, name: str) -> None:
    stored = study.datasets[name]
    r = httpx.get(
        f"{study.server.base_url}/dicomweb/studies/{study.study_uid}/series/{stored.SeriesInstanceUID}/metadata",
        headers={"Accept": "application/dicom+json"},
    )
    assert r.status_code == 200
    (instance,) = r.json()
    uri = instance["7FE00010"]["BulkDataURI"]
    assert uri == (
        f"{PUBLIC}/studies/{study.study_uid}/series/{stored.SeriesInstanceUID}"
        f"/instances/{stored.SOPInstanceUID}/bulk/7FE00010"
    )
    # singlepart 'bulkdata': a plain GET, no Accept of its own (a browser sends */*).
    single = httpx.get(_local(study, uri), headers={"Accept": "*/*"})
    multi = httpx.get(_local(study, uri), headers={"Accept": BULK_MULTIPART})
    for response in (single, multi):
        assert response.status_code == 200
        parts = (
            split_multipart(response.content, response.headers["content-type"])
            if "multipart" in response.headers["content-type"]
            else [({"content-type": response.headers["content-type"]}, response.content)]
        )
        if name in NATIVE:
            # One value, little endian whatever the stored byte order.
            ((_headers, value),) = parts
            frames = np.split(
                np.frombuffer(value, "<u2" if not stored.PixelRepresentation else "<i2"), _frame_count(stored)
            )
            for n, frame in enumerate(frames, start=1):
                np.testing.assert_array_equal(
                    frame.reshape(stored.Rows, stored.Columns), _stored_frame(stored, n)
                )
        else:
            # Encapsulated pixel data: its frames, each labelled with the stored syntax.
            assert len(parts) == _frame_count(stored)
            for n, (headers, frame) in enumerate(parts, start=1):
                np.testing.assert_array_equal(
                    _decode(stored, frame, _syntax_of(headers["content-type"])), _stored_frame(stored, n)
                )


# ---------------------------------------------------------------- thumbnails and rendered


def _jpeg(data: bytes) -> Image.Image:
    image = Image.open(BytesIO(data))
    image.load()
    assert image.format == "JPEG"
    return image


def test_thumbnails_as_ohif_asks_for_them(study: Study) -> None:
    stored = study.datasets["j2k-lossless-multiframe"]
    base = f"{study.server.base_url}/dicomweb/studies/{study.study_uid}"
    series = f"{base}/series/{stored.SeriesInstanceUID}"
    for url, headers in (
        (series + "/thumbnail", {"Accept": "image/jpeg"}),  # thumbnailRequestStrategy 'fetch'
        (series + "/thumbnail", {"Accept": BULK_MULTIPART}),  # through retrieveBulkData
        (series + "/thumbnail?accept=image/jpeg", {"Accept": BROWSER_IMG}),  # thumbnailDirect <img>
        (series + "/rendered", {"Accept": BULK_MULTIPART}),  # thumbnailRendering 'rendered'
        (base + "/thumbnail", {"Accept": "image/jpeg"}),  # no series: the study's
    ):
        r = httpx.get(url, headers=headers, timeout=30)
        assert r.status_code == 200, (url, headers, r.text)
        assert r.headers["content-type"] == "image/jpeg"
        image = _jpeg(r.content)
        assert max(image.size) <= (64 if url.endswith("rendered") else 128)
    png = httpx.get(series + "/thumbnail?accept=image/png", headers={"Accept": "image/jpeg"})
    assert png.headers["content-type"] == "image/png"  # the query parameter wins (PS3.18 8.3.3.1)
    assert httpx.get(series + "/thumbnail", headers={"Accept": "image/gif"}).status_code == 406


@pytest.mark.parametrize("name", ["jpeg-lossless-rgb", "big-endian", "jpeg-ls"])
def test_rendered_instances_of_each_kind(study: Study, name: str) -> None:
    stored = study.datasets[name]
    r = httpx.get(_instance_url(study, stored, "/rendered"), headers={"Accept": "image/jpeg"}, timeout=30)
    assert r.status_code == 200, r.text
    assert _jpeg(r.content).size == (stored.Columns, stored.Rows)


def test_video_and_pdf_render_as_themselves(study: Study) -> None:
    # OHIF shows both from .../rendered, fetched with its authorization header and no Accept.
    for name, media_type, content in (("video", "video/mp4", VIDEO_STREAM), ("pdf", "application/pdf", PDF)):
        url = _instance_url(study, study.datasets[name], "/rendered")
        for accept in ("*/*", media_type):
            r = httpx.get(url, headers={"Accept": accept})
            assert r.status_code == 200, (name, accept, r.text)
            assert r.headers["content-type"] == media_type
            assert r.content == content
        assert httpx.get(url, headers={"Accept": "image/jpeg"}).status_code == 406  # nothing to decode


def test_big_endian_bulk_data_is_little_endian(study: Study) -> None:
    stored = study.datasets["big-endian"]
    (meta,) = httpx.get(_instance_url(study, stored, "/metadata")).json()
    uri = meta["00091011"]["BulkDataURI"]
    assert uri.startswith(PUBLIC + "/")
    for accept in ("application/octet-stream", BULK_MULTIPART):
        r = httpx.get(_local(study, uri), headers={"Accept": accept})
        assert r.status_code == 200
        ((_headers, value),) = (
            split_multipart(r.content, r.headers["content-type"])
            if "multipart" in r.headers["content-type"]
            else [({}, r.content)]
        )
        assert value == PRIVATE_WORDS.astype("<u2").tobytes()
