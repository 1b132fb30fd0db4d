"""The streaming multipart/related parser and reader of STOW-RS, its body pipe, streamed and mmap ingest."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomhub.errors import InvalidIdentifier, InvalidRequest
from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.repository import IndexRepository
from dicomhub.model.caller import Caller, Channel
from dicomhub.model.structure import dataset_offset
from dicomhub.services.contentdigest import PENDING, ContentDigestService
from dicomhub.services.ingest import IngestService, StoreOutcome
from dicomhub.storage.filesystem import FileSystemBlobStore
from dicomhub.web.dicomweb.stow import (
    DICOM_JSON,
    DICOM_XML,
    _boundary,
    _response_media_type,
)
from dicomhub.web.dicomweb.upload import (
    CHUNK_BYTES,
    BodyInterrupted,
    BodyPipe,
    MultipartParser,
    MultipartReader,
    PartBegin,
    PartData,
    PartEnd,
    parse_media_type,
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


# ------------------------------------------------------------------ streamed parts


def _read_all(raw: bytes, size: int, read: Sequence[int] | None = None) -> list[tuple[str, bytes]]:
    """(content type, content) of each part read with MultipartReader from chunks of ``size``."""
    chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
    out = []
    for part in MultipartReader(chunks, BOUNDARY.decode()):
        if read is None or part.index in read:
            out.append((part.content_type, b"".join(bytes(c) for c in part.chunks())))
        else:
            out.append((part.content_type, b"<skipped>"))
    return out


@pytest.mark.parametrize("size", [1, 7, 100, 1000, 65536, 10**7])
def test_reader_streams_parts(size: int) -> None:
    small, large = b"s" * 100, bytes(range(256)) * 4000 + b"\r\n--" + BOUNDARY[:-1]
    raw = body((DICOM_HEADER, small), (DICOM_HEADER, large), ("Content-Type: image/jpeg\r\n", small))
    assert _read_all(raw, size) == [
        ("application/dicom", small),
        ("application/dicom", large),
        ("image/jpeg", small),
    ]
    # Parts not read are skipped.
    assert _read_all(raw, size, read=[1]) == [
        ("application/dicom", b"<skipped>"),
        ("application/dicom", large),
        ("image/jpeg", b"<skipped>"),
    ]


def test_reader_hands_out_large_chunks() -> None:
    content = bytes(range(256)) * (3 * CHUNK_BYTES // 256)
    raw = body((DICOM_HEADER, content))
    chunks = [raw[i : i + 65536] for i in range(0, len(raw), 65536)]
    [sizes] = list(_parts_with_sizes(chunks))
    assert sum(sizes) == len(content)
    # A few large chunks (of about CHUNK_BYTES), not one per piece received.
    assert len(sizes) == 3
    assert all(CHUNK_BYTES <= n < CHUNK_BYTES + 65536 for n in sizes[:-1])


def _parts_with_sizes(chunks: list[bytes]) -> Iterator[list[int]]:
    for part in MultipartReader(chunks, BOUNDARY.decode()):
        yield [len(c) for c in part.chunks()]


def test_parser_content_at_random_splits() -> None:
    rng = random.Random(7)
    contents = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 3000))) for _ in range(6)]
    contents += TRICKY
    raw = body(*[(DICOM_HEADER, c) for c in contents])
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(raw)), 12))
        chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        assert [c for _h, c in parse(chunks)] == contents


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (body((DICOM_HEADER, b"y" * 5000))[:-10], "ends before its close delimiter"),
        (b"--" + BOUNDARY + b"--", "holds no part"),
        (b"junk", "no boundary delimiter"),
    ],
)
def test_reader_refuses_bad_bodies(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        _read_all(raw, 100)


def _consume(pipe: BodyPipe, out: list[bytes], errors: list[BaseException], delay: float = 0.0) -> None:
    try:
        for chunk in pipe:
            time.sleep(delay)
            out.append(chunk)
    except BaseException as exc:
        errors.append(exc)
    finally:
        pipe.abandon()


def test_body_pipe_carries_chunks_in_order_within_its_limit() -> None:
    chunks = [bytes([n]) * 1000 for n in range(50)]
    out: list[bytes] = []
    errors: list[BaseException] = []
    pipe = BodyPipe(limit=3000)
    peak = 0

    async def produce() -> None:
        nonlocal peak
        consumer = threading.Thread(target=_consume, args=(pipe, out, errors, 0.001))
        consumer.start()
        for chunk in chunks:
            assert await pipe.put(chunk)
            peak = max(peak, pipe._size)
        pipe.close()
        await asyncio.to_thread(consumer.join)

    asyncio.run(produce())
    assert out == chunks and not errors
    assert peak <= 3000 + 1000


def test_body_pipe_interrupted_and_abandoned() -> None:
    out: list[bytes] = []
    errors: list[BaseException] = []
    pipe = BodyPipe(limit=10)

    async def interrupted() -> None:
        consumer = threading.Thread(target=_consume, args=(pipe, out, errors))
        consumer.start()
        await pipe.put(b"x" * 5)
        pipe.fail(ConnectionResetError("client went away"))
        await asyncio.to_thread(consumer.join)

    asyncio.run(interrupted())
    assert len(errors) == 1 and isinstance(errors[0], BodyInterrupted)

    # A consumer that stops: the producer is released, not left waiting.
    pipe = BodyPipe(limit=10)

    async def abandoned() -> bool:
        pipe.abandon()
        return await pipe.put(b"y" * 100)

    assert asyncio.run(abandoned()) is False


# ------------------------------------------------------------------ streamed ingest


def _ingest(tmp_path: Path) -> tuple[IngestService, FileSystemBlobStore, IndexRepository]:
    engine = connect_engine(f"sqlite:///{tmp_path / 'index.sqlite'}")
    migrate(engine, lock_dir=tmp_path)
    blobs = FileSystemBlobStore(tmp_path / "blobs", fsync=False)
    index = IndexRepository(engine)
    return IngestService(index, blobs), blobs, index


def _blob_files(blobs: FileSystemBlobStore) -> list[Path]:
    """Blob files holding bytes (pooled keys are empty files)."""
    return [p for p in blobs.root.rglob("*") if p.is_file() and p.stat().st_size]


def _in_chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_store_many_streams_items_into_their_blobs(tmp_path: Path) -> None:
    ingest, blobs, index = _ingest(tmp_path)
    caller = Caller(Channel.HTTP, "", "127.0.0.1")
    study = datagen.uid()
    data = [
        _encode(datagen.make_dataset(study_uid=study, instance_number=n, rows=128, cols=128))
        for n in range(3)
    ]
    other_study = _encode(datagen.make_dataset())
    results = ingest.store_many(
        [
            _in_chunks(data[0], 1000),
            _in_chunks(data[1], 7),
            iter([b"not DICOM" * 100]),
            _in_chunks(other_study, 4096),
            _in_chunks(data[2], 10**6),
            iter(()),
        ],
        caller,
        study_instance_uid=study,
    )
    kinds = [r.outcome if not isinstance(r, Exception) else type(r).__name__ for r in results]
    assert kinds == [
        StoreOutcome.STORED,
        StoreOutcome.STORED,
        "InvalidRequest",
        "InvalidIdentifier",
        StoreOutcome.STORED,
        "InvalidRequest",
    ]
    assert "DICM" in str(results[2])
    for d in data:  # the exact bytes; the data set digest is left for after the answer
        row = index.get_instance(datagen_uid(d))
        assert row is not None
        assert blobs.read(row.blob_key) == d
        assert row.content_sha256 == PENDING
    assert len(_blob_files(blobs)) == 3  # refused items left no blob behind
    # The same objects again, whole or in chunks, before the digests are filled in:
    # already present (the held blob's digest is computed on the spot), no new blob.
    again = ingest.store_many([data[0], _in_chunks(data[1], 333)], caller)
    assert [r.outcome for r in again if not isinstance(r, Exception)] == [StoreOutcome.ALREADY_PRESENT] * 2
    assert len(_blob_files(blobs)) == 3
    # Those two digests were computed for that check and recorded; the background
    # process fills in the third. Every digest is the data set's (File Meta left out).
    assert len(index.pending_content_digests(10)) == 1
    assert ContentDigestService(index, blobs).fill_pending() == 1
    for d in data:
        row = index.get_instance(datagen_uid(d))
        assert row is not None
        assert row.content_sha256 == hashlib.sha256(d[dataset_offset(d) :]).hexdigest()
    assert index.pending_content_digests(10) == []


def datagen_uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def test_store_many_stores_nothing_when_the_source_fails(tmp_path: Path) -> None:
    ingest, blobs, index = _ingest(tmp_path)
    caller = Caller(Channel.HTTP, "", "127.0.0.1")
    first = _encode(datagen.make_dataset(rows=128, cols=128))
    second = _encode(datagen.make_dataset(rows=128, cols=128))

    def failing() -> Iterator[bytes]:
        yield second[:5000]
        raise InvalidRequest("the multipart body ends before its close delimiter")

    def items() -> Iterator[Iterator[bytes]]:
        yield _in_chunks(first, 1000)
        yield failing()

    with pytest.raises(InvalidRequest, match="close delimiter"):
        ingest.store_many(items(), caller)
    assert index.counts()["instances"] == 0
    assert _blob_files(blobs) == []


def test_store_many_of_large_items(tmp_path: Path) -> None:
    """Large items (CT slices) whole or in chunks: outcomes stay in order, refusals leave
    no blob, and a source that fails after several were written leaves nothing stored."""
    ingest, blobs, index = _ingest(tmp_path)
    caller = Caller(Channel.HTTP, "", "127.0.0.1")
    study = datagen.uid()
    slices = [
        _encode(datagen.make_dataset(study_uid=study, instance_number=n, rows=512, cols=512))
        for n in range(6)
    ]
    assert all(len(d) > 512 * 1024 for d in slices)
    garbage = b"not DICOM" * 60_000
    elsewhere = _encode(datagen.make_dataset(rows=512, cols=512))
    results = ingest.store_many(
        [slices[0], iter([slices[1]]), garbage, slices[2], elsewhere, _in_chunks(slices[3], 100_000),
         *slices[4:]],
        caller,
        study_instance_uid=study,
    )  # fmt: skip
    kinds = [r.outcome if not isinstance(r, Exception) else type(r).__name__ for r in results]
    stored = StoreOutcome.STORED
    assert kinds == [stored, stored, "InvalidRequest", stored, "InvalidIdentifier", stored, stored, stored]
    for d in slices:
        row = index.get_instance(datagen_uid(d))
        assert row is not None and blobs.read(row.blob_key) == d
    assert len(_blob_files(blobs)) == 6

    more = [_encode(datagen.make_dataset(rows=512, cols=512)) for _ in range(4)]

    def items() -> Iterator[bytes | Iterator[bytes]]:
        yield from more
        yield _in_chunks(more[0][:5000], 1000)
        raise InvalidRequest("the multipart body ends before its close delimiter")

    with pytest.raises(InvalidRequest, match="close delimiter"):
        ingest.store_many(items(), caller)
    assert index.counts()["instances"] == 6
    assert len(_blob_files(blobs)) == 6


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
