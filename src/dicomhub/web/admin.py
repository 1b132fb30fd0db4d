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

    def storage_commitments(request: Request) -> JSONResponse:
        """Storage Commitment transactions, newest first, with their delivery state."""
        try:
            limit = max(1, min(int(request.query_params.get("limit", "100")), 10000))
        except ValueError:
            return JSONResponse({"error": "limit must be an integer"}, status_code=400)
        return JSONResponse(archive.commitment.transactions(limit))

    def associations(request: Request) -> JSONResponse:
        """Recent DIMSE associations (newest first): who, what was proposed, what became of it."""
        try:
            limit = max(1, min(int(request.query_params.get("limit", "100")), 10000))
        except ValueError:
            return JSONResponse({"error": "limit must be an integer"}, status_code=400)
        calling = request.query_params.get("calling_ae") or None
        return JSONResponse(archive.statistics.recent(limit, calling))

    return [
        Route("/associations", associations, methods=["GET"]),
        Route("/codecs", codecs, methods=["GET"]),
        Route("/decode-failures", decode_failures, methods=["GET"]),
        Route("/storage-commitments", storage_commitments, methods=["GET"]),
    ]
