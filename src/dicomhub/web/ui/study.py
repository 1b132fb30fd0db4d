"""The study page: patient and study attributes, series with thumbnails, labels, headers.

Besides the page, ``GET /ui/dictionary.json`` gives the DICOM data dictionary
(tag -> keyword, name) so that the tag tree names what WADO-RS metadata only
numbers.
"""

from __future__ import annotations

import functools
import json

from pydicom.datadict import dictionary_description, keyword_dict
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomhub.web.ui.pages import page, uid_param

__all__ = ["routes"]


def study_page(request: Request) -> Response:
    return page("study.html", "Study", "study.js", {"study": uid_param(request, "study")})


@functools.cache
def _dictionary() -> bytes:
    entries = {f"{tag:08X}": [keyword, dictionary_description(tag)] for keyword, tag in keyword_dict.items()}
    return json.dumps(entries, separators=(",", ":"), sort_keys=True).encode()


def data_dictionary(_request: Request) -> Response:
    # The same for every caller and every request of one release: cacheable for a day.
    return Response(
        _dictionary(), media_type="application/json", headers={"Cache-Control": "public, max-age=86400"}
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/ui/studies/{study}", study_page, methods=["GET"]),
        Route("/ui/dictionary.json", data_dictionary, methods=["GET"]),
    ]
