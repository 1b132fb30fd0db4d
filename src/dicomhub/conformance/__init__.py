"""The DICOM conformance statement (PS3.2), generated from the running configuration.

:func:`build_statement` collects what the server negotiates and serves;
:func:`render_markdown` and :func:`render_html` write it out;
:func:`conformance_renderer` gives the ``format -> text`` callable the HTTP
application serves at ``GET /conformance``.
"""

from __future__ import annotations

from .model import ConformanceStatement, build_statement, http_routes_of
from .render import conformance_renderer, render, render_html, render_markdown

__all__ = [
    "ConformanceStatement",
    "build_statement",
    "conformance_renderer",
    "http_routes_of",
    "render",
    "render_html",
    "render_markdown",
]
