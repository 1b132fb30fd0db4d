"""Fuzz target: ``Accept`` and ``Content-Type`` header parsing of the DICOMweb services.

The input (UTF-8, invalid bytes replaced, as Starlette decodes headers in
latin-1 anyway) goes to :func:`~dicomhub.web.dicomweb.multipart.parse_accept`
(WADO-RS), :func:`~dicomhub.web.dicomweb.qido.negotiate` (QIDO-RS), the
STOW-RS response negotiation and its ``Content-Type`` check, and
:func:`~dicomhub.web.dicomweb.upload.parse_media_type`.

Property: ``parse_accept`` never raises (malformed entries are skipped, as
documented) and returns ranges in non-increasing ``q`` with ``q > 0``; the
negotiations raise only their documented errors (``NotAcceptable``; for the
STOW-RS Content-Type ``UnsupportedMediaType`` or ``InvalidRequest``);
``parse_media_type`` never raises and gives a lower-case type.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["dicomhub"]):
    from dicomhub.errors import InvalidRequest
    from dicomhub.web.dicomweb import stow
    from dicomhub.web.dicomweb.multipart import parse_accept
    from dicomhub.web.dicomweb.qido import negotiate
    from dicomhub.web.dicomweb.upload import parse_media_type
    from dicomhub.web.errors import NotAcceptable, UnsupportedMediaType

from fuzzing import MemoryBound, PropertyViolation, main


def test_one_input(data: bytes) -> None:
    """Parse ``data`` as an Accept header and as a Content-Type."""
    header = data.decode("utf-8", "replace")
    with MemoryBound(len(data), per_byte=64, fixed=1 << 20):
        ranges = parse_accept(header)
        qs = [r.q for r in ranges]
        if any(q <= 0 for q in qs) or qs != sorted(qs, reverse=True):
            raise PropertyViolation(f"ranges out of order or with q <= 0: {qs}")
        for media_range in ranges:
            media_range.matches("application/dicom+json")
            media_range.part_matches("application/dicom")
        try:
            negotiate(header)
        except NotAcceptable:
            pass
        try:
            stow._response_media_type(header)
        except NotAcceptable:
            pass
        try:
            stow._boundary(header)
        except (UnsupportedMediaType, InvalidRequest):
            pass
        media_type, _params = parse_media_type(header)
        if media_type != media_type.lower():
            raise PropertyViolation("media type not lower case")


if __name__ == "__main__":
    main(test_one_input)
