"""The streaming multipart/related parser and spooler behind STOW-RS, and mmap ingest."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicomhub.errors import InvalidIdentifier, InvalidRequest
from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.repository import IndexRepository
from dicomhub.model.caller import Caller, Channel
from dicomhub.services.ingest import IngestService, StoreOutcome
from dicomhub.storage.filesystem import FileSystemBlobStore
from dicomhub.web.dicomweb.stow import (
    DICOM_JSON,
    DICOM_XML,
    _boundary,
    _response_media_type,
)
from dicomhub.web.dicomweb.upload import (
    MultipartParser,
    PartBegin,
    PartData,
    PartEnd,
    parse_media_type,
    receive_parts,
)
from dicomhub.web.errors import NotAcceptable, UnsupportedMediaType
from tests import datagen

BOUNDARY = b"0f3cf5c0-70e0"
Parts = list[tuple[dict[str, str], bytes]]


def body(*parts: tuple[str, bytes], preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    out = preamble
    for headers, content in parts:
        out += b"\r\n--" + BOUNDARY + b"\r\n" + headers.encode() + b"\r\n" + content
    return out + b"\r\n--" + BOUNDARY + b"--" + epilogue


def parse(chunks: Sequence[bytes], boundary: bytes = BOUNDARY) -> Parts:
    parser = MultipartParser(boundary)
    parts: Parts = []
    for chunk in chunks:
        for event in parser.feed(chunk):
            if isinstance(event, PartBegin):
                parts.append((dict(event.headers), b""))
            elif isinstance(event, PartData):
                headers, data = parts[-1]
                parts[-1] = (headers, data + event.data)
            else:
                assert isinstance(event, PartEnd)
    parser.close()
    return parts


DICOM_HEADER = "Content-Type: application/dicom\r\n"
# Contents that look like the delimiter without being it, CRLFs and dashes.
TRICKY = [
    b"",
    b"\r\n",
    b"--" + BOUNDARY,
    b"\r\n--" + BOUNDARY[:-1] + b"X\r\n",
    b"\r\n-\r\n--\r\n--" + BOUNDARY[:5],
    bytes(range(256)),
]
SMALL = body(
    (DICOM_HEADER, b"first\r\npart"),
    ("Content-Type: application/dicom\r\nContent-Location: x\r\n", b"\r\n--" + BOUNDARY[:-1]),
    ("", b"third"),
    preamble=b"This is the preamble.\r\n",
    epilogue=b"\r\nThis is the epilogue.\r\n--" + BOUNDARY + b"\r\n",
)
SMALL_EXPECTED: Parts = [
    ({"content-type": "application/dicom"}, b"first\r\npart"),
    ({"content-type": "application/dicom", "content-location": "x"}, b"\r\n--" + BOUNDARY[:-1]),
    ({}, b"third"),
]


def test_whole_body() -> None:
    assert parse([SMALL]) == SMALL_EXPECTED


@pytest.mark.parametrize("split", range(1, len(SMALL)))
def test_split_in_two_at_every_offset(split: int) -> None:
    assert parse([SMALL[:split], SMALL[split:]]) == SMALL_EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 17])
def test_small_chunks(size: int) -> None:
    chunks = [SMALL[i : i + size] for i in range(0, len(SMALL), size)]
    assert parse(chunks) == SMALL_EXPECTED


@pytest.mark.parametrize("content", TRICKY)
def test_contents_that_resemble_the_boundary(content: bytes) -> None:
    raw = body((DICOM_HEADER, content), (DICOM_HEADER, content))
    expected = [({"content-type": "application/dicom"}, content)] * 2
    for split in range(len(raw) + 1):
        assert parse([raw[:split], raw[split:]]) == expected


def test_body_starting_with_the_boundary_and_padding() -> None:
    raw = b"--" + BOUNDARY + b" \t\r\n" + DICOM_HEADER.encode() + b"\r\nabc\r\n--" + BOUNDARY + b"--"
    assert parse([raw]) == [({"content-type": "application/dicom"}, b"abc")]


def test_header_names_are_case_insensitive_and_folded() -> None:
    raw = body(("CONTENT-type: application/DICOM;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n", b"x"))
    [(headers, data)] = parse([raw])
    assert headers == {"content-type": "application/DICOM; transfer-syntax=1.2.840.10008.1.2.1"}
    assert data == b"x"


def test_dicomweb_client_layout() -> None:
    # dicomweb-client starts the body with CRLF and ends it with a CRLF epilogue.
    raw = (
        b"\r\n--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\nDATA\r\n--" + BOUNDARY + b"--\r\n"
    )
    assert parse([raw]) == [({"content-type": "application/dicom"}, b"DATA")]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "no boundary delimiter"),
        (b"no delimiter at all", "no boundary delimiter"),
        (SMALL[: SMALL.index(b"third") + 3], "ends before its close delimiter"),
        (body((DICOM_HEADER, b"x"))[:-2], "ends before its close delimiter"),
        (b"--" + BOUNDARY + b"\r\n" + DICOM_HEADER.encode(), "ends before"),
        (b"--" + BOUNDARY + b"garbage\r\n\r\nx\r\n--" + BOUNDARY + b"--", "not followed by CRLF"),
        (b"--" + BOUNDARY + b"\r\nno colon here\r\n\r\nx\r\n--" + BOUNDARY + b"--", "not 'name: value'"),
        (b"--" + BOUNDARY + b"\r\n" + b"X-Long: " + b"a" * 70000, "too large"),
    ],
)
def test_malformed_bodies(raw: bytes, message: str) -> None:
    for split in sorted({0, 1, len(raw) // 2, len(raw)}):
        with pytest.raises(InvalidRequest, match=message):
            parse([raw[:split], raw[split:]])


@pytest.mark.parametrize("boundary", [b"", b"a" * 71, b"bad\x00char", b"ends-with-space "])
def test_invalid_boundaries(boundary: bytes) -> None:
    with pytest.raises(InvalidRequest):
        MultipartParser(boundary)


def test_epilogue_is_ignored_even_if_it_looks_like_a_part() -> None:
    raw = body((DICOM_HEADER, b"a")) + b"\r\n--" + BOUNDARY + b"\r\n\r\nnot a part"
    assert parse([raw]) == [({"content-type": "application/dicom"}, b"a")]


# ------------------------------------------------------------------ media types


def test_parse_media_type() -> None:
    assert parse_media_type('multipart/related; type="application/dicom"; boundary="a b;c"') == (
        "multipart/related",
        {"type": "application/dicom", "boundary": "a b;c"},
    )
    assert parse_media_type("Multipart/Related;Boundary=xyz") == ("multipart/related", {"boundary": "xyz"})
    assert parse_media_type("") == ("", {})
    assert parse_media_type("nonsense") == ("", {})


def test_store_content_types() -> None:
    assert _boundary('multipart/related; type="application/dicom"; boundary=abc') == "abc"
    assert _boundary("multipart/related; type=application/dicom; boundary=abc") == "abc"
    assert _boundary("multipart/related; boundary=abc") == "abc"
    for bad in ("application/dicom", "multipart/form-data; boundary=abc", ""):
        with pytest.raises(UnsupportedMediaType):
            _boundary(bad)
    with pytest.raises(UnsupportedMediaType):
        _boundary('multipart/related; type="application/dicom+json"; boundary=abc')
    with pytest.raises(InvalidRequest):
        _boundary('multipart/related; type="application/dicom"')


def test_response_media_type() -> None:
    assert _response_media_type("") == DICOM_JSON
    assert _response_media_type("*/*") == DICOM_JSON
    assert _response_media_type("application/dicom+xml") == DICOM_XML
    assert _response_media_type("application/dicom+json, application/dicom+xml;q=0.5") == DICOM_JSON
    assert _response_media_type("application/dicom+json;q=0.2, application/dicom+xml") == DICOM_XML
    with pytest.raises(NotAcceptable):
        _response_media_type("text/html")


# ------------------------------------------------------------------ spooling


async def _chunks(raw: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(raw), size):
        yield raw[i : i + size]


def test_receive_parts_spools_large_parts_to_files(tmp_path: Path) -> None:
    small, large = b"s" * 100, bytes(range(256)) * 1000
    raw = body((DICOM_HEADER, small), (DICOM_HEADER, large), (DICOM_HEADER, small))
    spool = tmp_path / "tmp"
    received = asyncio.run(
        receive_parts(_chunks(raw, 1000), BOUNDARY.decode(), lambda: spool, part_memory_limit=10_000)
    )
    assert [p.read() for p in received] == [small, large, small]
    assert [p.path is not None for p in received] == [False, True, False]
    assert [p.size for p in received] == [100, 256_000, 100]
    assert received.parts[1].content_type == "application/dicom"
    assert list(spool.iterdir())  # the request's folder
    received.discard()
    assert not list(spool.iterdir())


def test_receive_parts_request_memory_limit(tmp_path: Path) -> None:
    raw = body(*[(DICOM_HEADER, b"x" * 300)] * 5)
    received = asyncio.run(
        receive_parts(
            _chunks(raw, 64),
            BOUNDARY.decode(),
            lambda: tmp_path,
            part_memory_limit=1000,
            request_memory_limit=1000,
        )
    )
    assert [p.path is not None for p in received] == [False, False, False, True, True]
    assert all(p.read() == b"x" * 300 for p in received)
    received.discard()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("raw", [body((DICOM_HEADER, b"y" * 5000))[:-10], b"--" + BOUNDARY + b"--", b"junk"])
def test_receive_parts_leaves_nothing_behind_on_error(tmp_path: Path, raw: bytes) -> None:
    with pytest.raises(InvalidRequest):
        asyncio.run(
            receive_parts(_chunks(raw, 100), BOUNDARY.decode(), lambda: tmp_path, part_memory_limit=10)
        )
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ ingest from a mapped file


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


def test_store_part10_file_memory_maps_into_the_filesystem_store(tmp_path: Path) -> None:
    engine = connect_engine(f"sqlite:///{tmp_path / 'index.sqlite'}")
    migrate(engine, lock_dir=tmp_path)
    blobs = FileSystemBlobStore(tmp_path / "blobs", fsync=False)
    ingest = IngestService(IndexRepository(engine), blobs)
    caller = Caller(Channel.HTTP, "", "127.0.0.1")
    ds = datagen.make_dataset(rows=256, cols=256)
    data = _encode(ds)
    path = tmp_path / "part"
    path.write_bytes(data)

    result = ingest.store_part10_file(path, caller)
    assert result.outcome is StoreOutcome.STORED
    assert result.series_instance_uid == ds.SeriesInstanceUID
    key = IndexRepository(engine).get_instance(ds.SOPInstanceUID)
    assert key is not None
    assert blobs.read(key.blob_key) == data  # the exact bytes, written from the mapping
    assert ingest.store_part10_file(path, caller).outcome is StoreOutcome.ALREADY_PRESENT

    other = tmp_path / "other"
    other.write_bytes(_encode(datagen.make_dataset()))
    with pytest.raises(InvalidIdentifier, match="not to the target study"):
        ingest.store_part10_file(other, caller, study_instance_uid=datagen.uid())
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(InvalidRequest):
        ingest.store_part10_file(tmp_path / "empty", caller)
    (tmp_path / "cut").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidRequest):
        ingest.store_part10_file(tmp_path / "cut", caller)
