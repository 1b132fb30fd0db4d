"""Streaming ``multipart/related`` request bodies (STOW-RS uploads).

The body is never held in memory as a whole: :class:`MultipartParser` is a
push parser that turns arbitrary chunks of the body into events (part
headers, part data, part end) while keeping at most one boundary's worth of
bytes back, and :func:`receive_parts` writes each part's data to memory while
it is small and to a temporary file under a spool folder once it is not, so
a 2 GB upload costs a 2 GB file and a few megabytes of memory.

``python-multipart`` is not used: it accepts no preamble before the first
boundary (RFC 2046 allows one) and does not detect a body that ends before
its close delimiter, which would turn a truncated upload into stored objects.

References
----------
RFC 2046 Section 5.1.1 (common syntax of multipart bodies), RFC 2387
(``multipart/related``), PS3.18 Section 8.6 (multipart payloads).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import BinaryIO

from dicomhub.errors import InvalidRequest

__all__ = [
    "MAX_HEADER_BYTES",
    "MultipartParser",
    "PartBegin",
    "PartData",
    "PartEnd",
    "ReceivedPart",
    "discard_parts",
    "parse_media_type",
    "receive_parts",
]

# A part's header block larger than this is not a DICOMweb part.
MAX_HEADER_BYTES = 64 * 1024
# Parts up to this size stay in memory ...
PART_MEMORY_LIMIT = 1024 * 1024
# ... as long as the request holds no more than this in memory altogether.
REQUEST_MEMORY_LIMIT = 32 * 1024 * 1024
_MAX_BOUNDARY = 70  # RFC 2046 5.1.1
_BCHARS = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")


@dataclass(frozen=True, slots=True)
class PartBegin:
    """A part starts; ``headers`` by lower-case name (the last of repeated names wins)."""

    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class PartData:
    """Some of the current part's content, in order."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    """The current part is complete."""


Event = PartBegin | PartData | PartEnd

_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _DATA, _EPILOGUE = range(5)


class MultipartParser:
    """Push parser for a multipart body with a known boundary.

    Feed the body in chunks of any size with :meth:`feed`, then call
    :meth:`close`. Malformed bodies raise :class:`InvalidRequest`: a
    delimiter followed by anything but transport padding and CRLF (or ``--``),
    a part header block that is not ``name: value`` lines or exceeds
    :data:`MAX_HEADER_BYTES`, a body without any delimiter, and a body that
    ends before its close delimiter. The preamble and the epilogue are
    ignored.

    Parameters
    ----------
    boundary : bytes
        The ``boundary`` parameter of the body's Content-Type.
    """

    def __init__(self, boundary: bytes) -> None:
        if not 1 <= len(boundary) <= _MAX_BOUNDARY or not set(boundary) <= _BCHARS:
            raise InvalidRequest("the multipart boundary must be 1 to 70 RFC 2046 characters")
        if boundary.endswith(b" "):
            raise InvalidRequest("the multipart boundary must not end with a space")
        # Every delimiter is CRLF "--" boundary; the first may start the body,
        # which is handled by parsing as if the body started with a CRLF.
        self._delimiter = b"\r\n--" + boundary
        self._buffer = bytearray(b"\r\n")
        self._state = _PREAMBLE
        self._parts = 0

    @property
    def parts(self) -> int:
        """How many parts have begun so far."""
        return self._parts

    def feed(self, chunk: bytes) -> list[Event]:
        """Parse the next ``chunk`` of the body; return the events it completes."""
        events: list[Event] = []
        if self._state == _EPILOGUE:
            return events
        self._buffer += chunk
        while True:
            if self._state == _PREAMBLE:
                if not self._skip_to_delimiter():
                    return events
            elif self._state == _AFTER_DELIMITER:
                if not self._after_delimiter():
                    return events
            elif self._state == _HEADERS:
                if not self._headers(events):
                    return events
            elif self._state == _DATA:
                if not self._data(events):
                    return events
            else:  # epilogue: ignored
                self._buffer.clear()
                return events

    def close(self) -> None:
        """Signal the end of the body; raise when the body was incomplete."""
        if self._state == _EPILOGUE:
            return
        if self._parts == 0 and self._state == _PREAMBLE:
            raise InvalidRequest("the multipart body holds no boundary delimiter")
        raise InvalidRequest("the multipart body ends before its close delimiter")

    # ------------------------------------------------------------ states

    def _skip_to_delimiter(self) -> bool:
        at = self._buffer.find(self._delimiter)
        if at < 0:
            keep = len(self._delimiter) - 1
            if len(self._buffer) > keep:
                del self._buffer[: len(self._buffer) - keep]
            return False
        del self._buffer[: at + len(self._delimiter)]
        self._state = _AFTER_DELIMITER
        return True

    def _after_delimiter(self) -> bool:
        """False to wait for more bytes; True once the next state is known."""
        buf = self._buffer
        if len(buf) < 2:
            return False
        if buf[:2] == b"--":
            del buf[:]
            self._state = _EPILOGUE
            return True
        # Transport padding (linear white space) may precede the CRLF.
        pos = 0
        while pos < len(buf) and buf[pos] in (0x20, 0x09):
            pos += 1
            if pos > 1024:
                raise InvalidRequest("malformed multipart body: endless padding after a boundary")
        if len(buf) < pos + 2:
            return False
        if buf[pos : pos + 2] != b"\r\n":
            raise InvalidRequest("malformed multipart body: a boundary delimiter is not followed by CRLF")
        del buf[: pos + 2]
        self._state = _HEADERS
        return True

    def _headers(self, events: list[Event]) -> bool:
        buf = self._buffer
        if buf[:2] == b"\r\n":  # no header fields at all
            end, skip = 0, 2
        else:
            at = buf.find(b"\r\n\r\n")
            if at < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise InvalidRequest("malformed multipart body: part headers too large")
                return False
            end, skip = at, 4
        if end > MAX_HEADER_BYTES:
            raise InvalidRequest("malformed multipart body: part headers too large")
        headers = _parse_header_block(bytes(buf[:end]))
        del buf[: end + skip]
        self._parts += 1
        events.append(PartBegin(headers))
        self._state = _DATA
        return True

    def _data(self, events: list[Event]) -> bool:
        buf = self._buffer
        at = buf.find(self._delimiter)
        if at < 0:
            # Everything but a possible partial delimiter at the end is data.
            safe = len(buf) - (len(self._delimiter) - 1)
            if safe > 0:
                events.append(PartData(bytes(buf[:safe])))
                del buf[:safe]
            return False
        if at:
            events.append(PartData(bytes(buf[:at])))
        del buf[: at + len(self._delimiter)]
        events.append(PartEnd())
        self._state = _AFTER_DELIMITER
        return True


def _parse_header_block(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    name = ""
    for line in block.split(b"\r\n") if block else ():
        if line[:1] in (b" ", b"\t") and name:  # obsolete line folding
            headers[name] += " " + line.strip().decode("latin-1")
            continue
        raw_name, sep, value = line.partition(b":")
        if not sep or not raw_name or raw_name != raw_name.strip() or b" " in raw_name:
            raise InvalidRequest("malformed multipart body: a part header is not 'name: value'")
        name = raw_name.decode("latin-1").lower()
        headers[name] = value.strip().decode("latin-1")
    return headers


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into its lower-case media type and its parameters.

    Parameter names are lower-cased and quoted values unquoted (RFC 9110
    8.3.1). An empty or unparsable value gives ``("", {})``.
    """
    if not value.strip():
        return "", {}
    msg = Message()
    msg["content-type"] = value
    raw = msg.get_params(header="content-type")
    if not raw:
        return "", {}
    media_type = raw[0][0].strip().lower()
    if media_type.count("/") != 1:
        return "", {}
    params: dict[str, str] = {}
    for name, param in raw[1:]:
        text = param if isinstance(param, str) else str(param[2])  # RFC 2231 triple
        params[name.strip().lower()] = text.strip()
    return media_type, params


@dataclass
class ReceivedPart:
    """One part of a received body: its headers and where its content is.

    The content is in memory (``memory``) while small and in a file
    (``path``) otherwise; :meth:`discard` removes the file.
    """

    index: int
    headers: Mapping[str, str]
    size: int = 0
    memory: bytearray | None = field(default_factory=bytearray)
    path: Path | None = None

    @property
    def content_type(self) -> str:
        """The part's media type (lower case, no parameters; "" when absent)."""
        return parse_media_type(self.headers.get("content-type", ""))[0]

    @property
    def content_type_params(self) -> dict[str, str]:
        return parse_media_type(self.headers.get("content-type", ""))[1]

    def read(self) -> bytes:
        """The whole content (for small parts and tests)."""
        if self.memory is not None:
            return bytes(self.memory)
        return self.path.read_bytes() if self.path is not None else b""

    def discard(self) -> None:
        """Forget the content (remove its file)."""
        self.memory = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()


class _Spool:
    """Where the parts of one request go: memory up to the limits, then files."""

    def __init__(self, spool_dir: Callable[[], Path], part_limit: int, request_limit: int) -> None:
        self._spool_dir = spool_dir
        self._dir: Path | None = None
        self._part_limit = part_limit
        self._request_limit = request_limit
        self._in_memory = 0
        self.parts: list[ReceivedPart] = []
        self._file: BinaryIO | None = None

    def begin(self, headers: Mapping[str, str]) -> None:
        self.parts.append(ReceivedPart(len(self.parts), headers))

    def write(self, data: bytes) -> None:
        part = self.parts[-1]
        part.size += len(data)
        if part.memory is not None:
            if (
                len(part.memory) + len(data) <= self._part_limit
                and self._in_memory + len(data) <= self._request_limit
            ):
                part.memory += data
                self._in_memory += len(data)
                return
            self._roll_over(part, part.memory)
        if self._file is not None:
            self._file.write(data)

    def _roll_over(self, part: ReceivedPart, memory: bytearray) -> None:
        if self._dir is None:
            root = self._spool_dir()
            root.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix="stow-", dir=root))
        fd, name = tempfile.mkstemp(prefix=f"part{part.index:05d}-", dir=self._dir)
        self._file = os.fdopen(fd, "wb", buffering=1024 * 1024)
        part.path = Path(name)
        self._in_memory -= len(memory)
        self._file.write(memory)
        part.memory = None

    def end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        self.end()
        discard_parts(self.parts, self._dir)

    @property
    def directory(self) -> Path | None:
        return self._dir


def discard_parts(parts: list[ReceivedPart], directory: Path | None) -> None:
    """Remove the parts' files and their spool folder."""
    for part in parts:
        part.discard()
    if directory is not None:
        with contextlib.suppress(OSError):
            directory.rmdir()


@dataclass
class ReceivedBody:
    """Every part of a request body, and the spool folder that holds the large ones."""

    parts: list[ReceivedPart]
    directory: Path | None

    def discard(self) -> None:
        discard_parts(self.parts, self.directory)

    def __iter__(self) -> Iterator[ReceivedPart]:
        return iter(self.parts)


async def receive_parts(
    chunks: AsyncIterable[bytes],
    boundary: str,
    spool_dir: Callable[[], Path],
    *,
    part_memory_limit: int = PART_MEMORY_LIMIT,
    request_memory_limit: int = REQUEST_MEMORY_LIMIT,
) -> ReceivedBody:
    """Read a whole ``multipart/related`` body from ``chunks`` into parts.

    Parts stay in memory up to ``part_memory_limit`` bytes each and
    ``request_memory_limit`` bytes for the request; larger ones are written
    to temporary files in a folder made under ``spool_dir()`` on first need.
    Writes go to the page cache (no fsync): the files live for one request.

    Raises
    ------
    InvalidRequest
        For a malformed or truncated body, or one without any part; nothing
        is left on disk then.
    """
    parser = MultipartParser(boundary.encode("latin-1"))
    spool = _Spool(spool_dir, part_memory_limit, request_memory_limit)
    try:
        async for chunk in chunks:
            if not chunk:
                continue
            for event in parser.feed(chunk):
                if isinstance(event, PartData):
                    spool.write(event.data)
                elif isinstance(event, PartBegin):
                    spool.begin(event.headers)
                else:
                    spool.end()
        parser.close()
        spool.end()
        if not spool.parts:
            raise InvalidRequest("the multipart body holds no part")
    except BaseException:
        spool.discard()
        raise
    return ReceivedBody(spool.parts, spool.directory)
