"""Fuzz target: the STOW-RS multipart reader (``dicomhub.web.dicomweb.upload``).

Input layout: one byte *n*, the boundary (*n* bytes), a two-byte big-endian
chunk size, then the request body, handed to
:class:`~dicomhub.web.dicomweb.upload.MultipartReader` in chunks of that
size (as the server receives a body in pieces), each part read to its end.

Property: the only error is :class:`dicomhub.errors.InvalidRequest`
(documented for a bad boundary and for a malformed, truncated or empty
body); a body that ends before its close delimiter never yields a
complete last part (so a truncated upload is never stored); part content
never exceeds the body; parsing is linear (libFuzzer's ``-timeout``) and
its memory a small multiple of the body (the parser holds back at most a
boundary's worth, a part's headers at most ``MAX_HEADER_BYTES``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import atheris

with atheris.instrument_imports(include=["dicomhub"]):
    from dicomhub.errors import InvalidRequest
    from dicomhub.web.dicomweb.upload import MultipartReader

from fuzzing import MemoryBound, PropertyViolation, main


def _chunks(body: bytes, size: int) -> Iterator[bytes]:
    for pos in range(0, len(body), size):
        yield body[pos : pos + size]


def test_one_input(data: bytes) -> None:
    """Read every part of the body that ``data`` carries."""
    if not data:
        return
    n = data[0]
    boundary = data[1 : 1 + n].decode("latin-1")
    if len(data) < 3 + n:
        return
    (size,) = struct.unpack_from(">H", data, 1 + n)
    body = data[3 + n :]
    total = 0
    with MemoryBound(len(body), per_byte=8, fixed=1 << 20):
        try:
            for part in MultipartReader(_chunks(body, size or 1), boundary):
                if not isinstance(part.content_type, str):
                    raise PropertyViolation("content type is not text")
                for chunk in part.chunks():
                    total += len(chunk)
                if not part.ended:
                    raise PropertyViolation("a part handed out as complete before its end")
        except InvalidRequest:
            return
    if total > len(body):
        raise PropertyViolation(f"{total} bytes of part content from a {len(body)}-byte body")
    close = b"--" + boundary.encode("latin-1") + b"--"
    if close not in body:
        raise PropertyViolation("a body without its close delimiter was read without error")


if __name__ == "__main__":
    main(test_one_input)
