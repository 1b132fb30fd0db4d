"""``multipart/related`` response bodies and ``Accept`` header parsing.

A body is written as a generator of byte chunks, one part after the other,
so a study streams from storage without being held in memory.

References
----------
RFC 2387 (multipart/related), RFC 2046 5.1 (multipart syntax), RFC 9110
12.5.1 (Accept), PS3.18 8.6 and 8.7 (DICOMweb media types).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

__all__ = [
    "MediaRange",
    "Part",
    "in_batches",
    "multipart_body",
    "multipart_length",
    "multipart_content_type",
    "new_boundary",
    "parse_accept",
]


@dataclass(frozen=True, slots=True)
class Part:
    """One body part: its headers and its content as chunks."""

    headers: Mapping[str, str]
    content: Iterable[bytes]


def new_boundary() -> str:
    """A boundary that cannot occur in DICOM content by chance (random, 32 hex digits)."""
    return f"dicomhub-{uuid.uuid4().hex}"


def multipart_content_type(part_type: str, boundary: str, **params: str) -> str:
    """``multipart/related; type="..."; boundary=...`` (plus ``params``)."""
    extra = "".join(f"; {k.replace('_', '-')}={v}" for k, v in params.items())
    return f'multipart/related; type="{part_type}"{extra}; boundary={boundary}'


async def in_batches(chunks: Iterator[bytes], max_bytes: int = 4 << 20) -> AsyncIterator[bytes]:
    """Stream a blocking iterator from the thread pool, several chunks per hand-off.

    Starlette pulls a plain iterator one chunk per thread-pool round trip; a
    study is thousands of chunks (part headers included), so the round trips,
    not the disk or the socket, limited retrieval. This takes up to
    ``max_bytes`` per round trip; memory stays bounded by that.
    """

    def take() -> list[bytes]:
        out: list[bytes] = []
        size = 0
        for chunk in chunks:
            out.append(chunk)
            size += len(chunk)
            if size >= max_bytes:
                break
        return out

    while True:
        batch = await run_in_threadpool(take)
        if not batch:
            return
        for chunk in batch:
            yield chunk


def _part_head(marker: bytes, headers: Mapping[str, str]) -> bytes:
    lines = [marker, *(f"{name}: {value}".encode("latin-1") for name, value in headers.items())]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def multipart_body(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """The body of a multipart message, one chunk at a time.

    ``parts`` is consumed lazily: a part's content is read only when the
    body reaches it.
    """
    marker = b"--" + boundary.encode("ascii")
    for part in parts:
        yield _part_head(marker, part.headers)
        yield from part.content
        yield b"\r\n"
    yield marker + b"--\r\n"


def multipart_length(parts: Iterable[tuple[Mapping[str, str], int]], boundary: str) -> int:
    """The exact length of :func:`multipart_body` for parts of known (headers, size).

    With it a response can carry Content-Length instead of chunked transfer
    coding, which lets clients show progress and read faster.
    """
    marker = b"--" + boundary.encode("ascii")
    total = len(marker) + 4
    for headers, size in parts:
        total += len(_part_head(marker, headers)) + size + 2
    return total


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One entry of an ``Accept`` header: ``type/subtype`` with parameters and quality."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def part_type(self) -> str | None:
        """The ``type`` parameter of a multipart range (lower case), if any."""
        value = self.params.get("type")
        return value.lower() if value is not None else None

    def matches(self, media_type: str) -> bool:
        """True when this range covers ``media_type`` (``*/*``, ``image/*``, exact)."""
        return _covers(self.media_type, media_type)

    def part_matches(self, media_type: str) -> bool:
        """True when the ``type`` parameter covers ``media_type`` (absent counts as no match)."""
        pt = self.part_type
        return pt is not None and _covers(pt, media_type)


def _covers(pattern: str, media_type: str) -> bool:
    pattern, media_type = pattern.lower(), media_type.lower()
    if pattern in ("*", "*/*"):
        return True
    if pattern.endswith("/*"):
        return media_type.split("/", 1)[0] == pattern[:-2]
    return pattern == media_type


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    out: list[str] = []
    buf: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    out.append("".join(buf))
    return out


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an ``Accept`` header, best first (stable for equal ``q``).

    An absent or empty header gives ``[*/*]``; ranges with ``q=0`` are dropped.
    Malformed entries are skipped rather than failing the request.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    for entry in _split(header, ","):
        pieces = _split(entry, ";")
        media_type = pieces[0].strip().lower()
        if not media_type:
            continue
        if "/" not in media_type:
            media_type = "*/*" if media_type == "*" else media_type + "/*"
        params: dict[str, str] = {}
        q = 1.0
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            name = name.strip().lower()
            value = value.strip().strip('"')
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 1.0
            elif name:
                params[name] = value
        if q > 0:
            ranges.append(MediaRange(media_type, params, q))
    ranges.sort(key=lambda r: -r.q)
    return ranges
