"""Streaming ``multipart/related`` request bodies (STOW-RS uploads).

The body is never held in memory as a whole. :class:`MultipartParser` is a
push parser that turns arbitrary chunks of the body into events (part
headers, part data, part end) while keeping at most one boundary's worth of
bytes back; part data comes out as views of the received chunks, not copies.
:class:`MultipartReader` turns the same events into parts whose content is
pulled chunk by chunk, so a consumer (the ingest service) can write each
part where it belongs while the body is still arriving. :class:`BodyPipe`
carries the chunks from the event loop, where the server receives them, to
the thread that consumes them, holding at most a few megabytes: a 2 GB
upload costs a few megabytes of memory.

``python-multipart`` is not used: it accepts no preamble before the first
boundary (RFC 2046 allows one) and does not detect a body that ends before
its close delimiter, which would turn a truncated upload into stored objects.

References
----------
RFC 2046 Section 5.1.1 (common syntax of multipart bodies), RFC 2387
(``multipart/related``), PS3.18 Section 8.6 (multipart payloads).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.message import Message

from dicomhub.errors import InvalidRequest

__all__ = [
    "CHUNK_BYTES",
    "MAX_HEADER_BYTES",
    "BodyInterrupted",
    "BodyPipe",
    "MultipartParser",
    "MultipartReader",
    "PartBegin",
    "PartData",
    "PartEnd",
    "StreamedPart",
    "parse_media_type",
]

# A part's header block larger than this is not a DICOMweb part.
MAX_HEADER_BYTES = 64 * 1024
_MAX_BOUNDARY = 70  # RFC 2046 5.1.1
# Size of the content chunks :class:`StreamedPart` hands out (but the last of a part).
CHUNK_BYTES = 2 << 20
_BCHARS = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")


@dataclass(frozen=True, slots=True)
class PartBegin:
    """A part starts; ``headers`` by lower-case name (the last of repeated names wins)."""

    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class PartData:
    """Some of the current part's content, in order: bytes, or a view of a chunk fed."""

    data: bytes | memoryview


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
        """Parse the next ``chunk`` of the body; return the events it completes.

        Part data inside a large chunk comes out as ``memoryview`` slices of
        ``chunk`` (no copy): ``chunk`` must not be changed afterwards.
        """
        events: list[Event] = []
        if self._state == _EPILOGUE:
            return events
        if (
            self._state == _DATA
            and len(self._buffer) < len(self._delimiter)
            and len(chunk) >= 2 * len(self._delimiter)
        ):
            self._buffer += self._data_in_chunk(chunk, events)
        else:
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

    def _data_in_chunk(self, chunk: bytes, events: list[Event]) -> memoryview:
        """Part data straight from a large ``chunk``: the buffer holds less than a delimiter.

        Emits the data up to the next delimiter (or all but a possible partial
        delimiter at the end) as views of ``chunk`` and returns the rest of
        ``chunk``, for the buffer and the state machine.
        """
        view = memoryview(chunk)
        delimiter = self._delimiter
        buf = self._buffer
        held = len(buf)
        if held:
            # A delimiter that starts in the buffer ends in the chunk's first bytes.
            window = bytes(buf) + chunk[: len(delimiter) - 1]
            at = window.find(delimiter)
            if at >= 0:  # then at < held: the chunk's own start holds no whole delimiter
                if at:
                    events.append(PartData(window[:at]))
                events.append(PartEnd())
                buf.clear()
                self._state = _AFTER_DELIMITER
                return view[at + len(delimiter) - held :]
            events.append(PartData(bytes(buf)))
            buf.clear()
        at = chunk.find(delimiter)
        if at < 0:
            safe = len(chunk) - (len(delimiter) - 1)
            events.append(PartData(view[:safe]))
            return view[safe:]
        if at:
            events.append(PartData(view[:at]))
        events.append(PartEnd())
        self._state = _AFTER_DELIMITER
        return view[at + len(delimiter) :]

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


# type "/" subtype, both RFC 9110 tokens, and nothing else (optional whitespace around).
_BARE_MEDIA_TYPE = re.compile(r"\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+\s*\Z")


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into its lower-case media type and its parameters.

    Parameter names are lower-cased and quoted values unquoted (RFC 9110
    8.3.1). An empty or unparsable value gives ``("", {})``.
    """
    if not value.strip():
        return "", {}
    if _BARE_MEDIA_TYPE.match(value):
        # The usual part header ("application/dicom"): no parameters to parse.
        return value.strip().lower(), {}
    msg = Message()
    msg["content-type"] = value
    try:
        raw = msg.get_params(header="content-type")
    except Exception:  # noqa: BLE001 - the email package raises e.g. TypeError on garbage
        # RFC 2231 continuations such as "q*=0; q*8" make email.utils.decode_params
        # sort None against int: unparsable, as documented, not a server error.
        return "", {}
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


class BodyInterrupted(Exception):
    """The request body stopped arriving (the client went away): nothing is stored."""


class BodyPipe:
    """Hands the chunks of a request body from the event loop to one consumer thread.

    The event loop passes chunks to :meth:`put` as the server receives them;
    the thread iterates over the pipe. At most about ``limit`` bytes wait in
    between: past that, :meth:`put` waits for the thread to catch up, which
    in turn stops the server reading from the socket. The consumer calls
    :meth:`abandon` when it stops (finished or failed), so that the producer
    never waits for nobody.
    """

    def __init__(self, limit: int = 8 << 20) -> None:
        self._limit = limit
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._error: BaseException | None = None
        self._abandoned = False
        self._space: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def put(self, chunk: bytes) -> bool:
        """Queue ``chunk`` (waiting while the pipe is full); False once the consumer has stopped."""
        with self._cond:
            if self._abandoned:
                return False
            self._chunks.append(chunk)
            self._size += len(chunk)
            self._cond.notify()
            if self._size <= self._limit:
                return True
            space = self._space = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        await space.wait()
        return not self._abandoned

    def close(self) -> None:
        """The body is complete."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def fail(self, exc: BaseException) -> None:
        """The body will not complete: the consumer gets :class:`BodyInterrupted`."""
        with self._cond:
            self._error = exc
            self._cond.notify()

    def abandon(self) -> None:
        """The consumer has stopped: drop what waits, release a waiting producer."""
        with self._cond:
            self._abandoned = True
            self._chunks.clear()
            self._size = 0
            self._wake_producer()

    def _wake_producer(self) -> None:
        if self._space is not None and self._loop is not None:
            space, self._space = self._space, None
            try:
                self._loop.call_soon_threadsafe(space.set)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def __iter__(self) -> Iterator[bytes]:
        """The chunks, in order, as they come (blocking); raises :class:`BodyInterrupted`."""
        while True:
            with self._cond:
                while not self._chunks and not self._closed and self._error is None:
                    self._cond.wait()
                if self._error is not None:
                    raise BodyInterrupted(f"the request body was interrupted: {self._error!r}")
                if not self._chunks:
                    return
                # Take everything waiting at once: one hand-off for many chunks.
                batch = list(self._chunks)
                self._chunks.clear()
                self._size = 0
                self._wake_producer()
            yield from batch


class StreamedPart:
    """One part of a body being read by :class:`MultipartReader`.

    Its content is pulled with :meth:`chunks` while the body arrives; moving
    on to the next part skips whatever of it was not read.
    """

    def __init__(self, reader: MultipartReader, index: int, headers: Mapping[str, str]) -> None:
        self.index = index
        self.headers = headers
        self._reader = reader
        self.ended = False

    @functools.cached_property
    def content_type(self) -> str:
        """The part's media type (lower case, no parameters; "" when absent)."""
        return parse_media_type(self.headers.get("content-type", ""))[0]

    def chunks(self) -> Iterator[bytes | memoryview]:
        """The part's content up to its end, in chunks of about ``CHUNK_BYTES`` (the last
        one shorter).

        The server receives the body in pieces of a few hundred kB; the
        consumer hashes and writes each chunk with the GIL released, and
        every re-acquisition may wait for the event loop's thread, so fewer,
        larger chunks are much faster than many small ones.
        """
        pending: list[bytes | memoryview] = []
        size = 0
        while not self.ended:
            event = self._reader.next_event()
            if isinstance(event, PartData):
                if event.data:
                    pending.append(event.data)
                    size += len(event.data)
                    if size < CHUNK_BYTES:
                        continue
            else:  # PartEnd (the parser raises before a body ends inside a part)
                self.ended = True
            if pending:
                yield pending[0] if len(pending) == 1 else b"".join(pending)
                pending, size = [], 0

    def skip(self) -> None:
        for _chunk in self.chunks():
            pass


class MultipartReader:
    """Iterate over the parts of a ``multipart/related`` body read from ``source``.

    A blocking pull interface over :class:`MultipartParser`: each
    :class:`StreamedPart` yields its content as it is read from ``source``.

    Raises
    ------
    InvalidRequest
        For a malformed or truncated body (when the reading reaches the
        fault), or one without any part (at the end).
    """

    def __init__(self, source: Iterable[bytes], boundary: str) -> None:
        self._parser = MultipartParser(boundary.encode("latin-1"))
        self._source = iter(source)
        self._events: collections.deque[Event] = collections.deque()
        self._done = False

    def next_event(self) -> Event | None:
        """The next parser event, reading on as needed; None at the end of the body."""
        while not self._events:
            if self._done:
                return None
            chunk = next(self._source, None)
            if chunk is None:
                self._done = True
                self._parser.close()
                return None
            if chunk:
                self._events.extend(self._parser.feed(chunk))
        return self._events.popleft()

    def __iter__(self) -> Iterator[StreamedPart]:
        part: StreamedPart | None = None
        count = 0
        while True:
            if part is not None:
                part.skip()
            event = self.next_event()
            if event is None:
                break
            if isinstance(event, PartBegin):
                part = StreamedPart(self, count, event.headers)
                count += 1
                yield part
        if count == 0:
            raise InvalidRequest("the multipart body holds no part")
