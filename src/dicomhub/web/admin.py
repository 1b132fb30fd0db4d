"""Operator endpoints under ``/admin``: what this install can decode, what did not decode."""

from __future__ import annotations

import dataclasses

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomhub import codec
from dicomhub.services.archive import Archive

__all__ = ["routes"]


def routes(archive: Archive) -> list[BaseRoute]:
    def codecs(_request: Request) -> JSONResponse:
        """The transfer syntaxes and whether this install decodes and encodes them."""
        return JSONResponse([dataclasses.asdict(ts) for ts in codec.transfer_syntaxes()])

    def decode_failures(_request: Request) -> JSONResponse:
        """Stored instances whose pixel data did not decode (the decode check)."""
        return JSONResponse(archive.decode_check.failures())

    return [
        Route("/codecs", codecs, methods=["GET"]),
        Route("/decode-failures", decode_failures, methods=["GET"]),
    ]
