"""Fuzz target: what ingest reads of a Part 10 object before storing it.

:func:`dicomhub.model.extract.extract_part10` (File Meta scan, element walk
of the data set, pydicom fallback) decides whether an object is stored at
all; :func:`dicomhub.services.contentdigest.content_digest` hashes its data
set; :func:`dicomhub.services.headers.header_to_json` turns the header
ingest read into the stored DICOM JSON.

Property: the only errors are :class:`dicomhub.errors.InvalidRequest` (and
its subclass ``InvalidIdentifier``), as documented; an object accepted by
``extract_part10`` has valid identifying UIDs and no element running past
its end (``check_part10_complete``); ``content_digest`` of an accepted
object is 64 hex digits; memory stays a small multiple of the input, so an
element announcing 4 GB allocates nothing of the sort.
"""

from __future__ import annotations

import logging

import atheris

with atheris.instrument_imports(include=["dicomhub"]):
    from dicomhub.errors import InvalidRequest
    from dicomhub.model.extract import extract_part10, read_header
    from dicomhub.model.identifiers import is_valid_uid
    from dicomhub.model.structure import InvalidVR, check_part10_complete
    from dicomhub.services.contentdigest import content_digest
    from dicomhub.services.headers import header_to_json

from fuzzing import MemoryBound, PropertyViolation, main

# header_to_json warns for every element it leaves out: thousands a second here.
logging.getLogger("dicomhub.headers").setLevel(logging.ERROR)


def test_one_input(data: bytes) -> None:
    """Read ``data`` as a Part 10 object the way ingest does."""
    with MemoryBound(len(data), per_byte=64, fixed=4 << 20):
        try:
            header = extract_part10(data)
        except InvalidRequest:
            return
        for uid in (header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid):
            if not is_valid_uid(uid):
                raise PropertyViolation(f"accepted an object with the invalid UID {uid!r}")
        try:
            check_part10_complete(data, header.transfer_syntax_uid)
        except InvalidVR:
            pass  # the walk cannot follow it; extract_part10 let pydicom judge it (read below)
        except InvalidRequest as exc:
            raise PropertyViolation(f"accepted an incomplete object: {exc}") from exc
        try:
            digest = content_digest(data)
        except InvalidRequest:
            return
        if len(digest) != 64:
            raise PropertyViolation("content digest is not a SHA-256")
        header_to_json(read_header(data))


if __name__ == "__main__":
    main(test_one_input)
