"""Fuzz target: QIDO-RS query parameters (``dicomhub.web.dicomweb.qido.parse_qido_params``).

The first byte picks the level searched (studies, series, instances; its
low bits), the rest is the query string, split as Starlette splits it
(``urllib.parse.parse_qsl``, blank values kept).

Property: the only error is :class:`dicomhub.errors.InvalidRequest`
(``InvalidIdentifier`` included), as documented; an accepted request has a
limit within ``1..max_limit`` and a non-negative offset.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import atheris

with atheris.instrument_imports(include=["dicomhub"]):
    from dicomhub.errors import InvalidRequest
    from dicomhub.model.identifiers import Level
    from dicomhub.web.dicomweb.qido import parse_qido_params

from fuzzing import MemoryBound, PropertyViolation, main

_LEVELS = (Level.STUDY, Level.SERIES, Level.IMAGE)
_SCOPES: tuple[dict[str, str], ...] = (
    {},
    {"StudyInstanceUID": "1.2.3"},
    {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4"},
)
_MAX_LIMIT = 10000


def test_one_input(data: bytes) -> None:
    """Parse ``data[1:]`` as the query string of a search at the level ``data[0]`` picks."""
    if not data:
        return
    level = _LEVELS[data[0] % 3]
    scope = _SCOPES[(data[0] >> 2) % 3] if level is not Level.STUDY else {}
    params = parse_qsl(data[1:].decode("latin-1"), keep_blank_values=True)
    with MemoryBound(len(data), per_byte=64, fixed=1 << 20):
        try:
            request = parse_qido_params(level, params, scope, default_limit=1000, max_limit=_MAX_LIMIT)
        except InvalidRequest:
            return
    if not 0 <= request.limit <= _MAX_LIMIT:
        raise PropertyViolation(f"limit {request.limit} outside 0..{_MAX_LIMIT}")
    if request.query.offset < 0:
        raise PropertyViolation(f"negative offset {request.query.offset}")


if __name__ == "__main__":
    main(test_one_input)
