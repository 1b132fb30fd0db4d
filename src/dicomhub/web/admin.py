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

    def validation(request: Request) -> JSONResponse:
        """IOD validation findings, newest first (``?source=AET``, ``?limit=``)."""
        try:
            limit = max(1, min(int(request.query_params.get("limit", "1000")), 100000))
        except ValueError:
            return JSONResponse({"error": "limit must be an integer"}, status_code=400)
        return JSONResponse(archive.validation.findings(request.query_params.get("source") or None, limit))

    def validation_summary(_request: Request) -> JSONResponse:
        """Per source AE: instances checked, with errors, with warnings, rejected; top findings."""
        return JSONResponse(archive.validation.summary())

    return [
        Route("/associations", associations, methods=["GET"]),
        Route("/validation", validation, methods=["GET"]),
        Route("/validation/summary", validation_summary, methods=["GET"]),
        Route("/codecs", codecs, methods=["GET"]),
        Route("/decode-failures", decode_failures, methods=["GET"]),
        Route("/storage-commitments", storage_commitments, methods=["GET"]),
    ]
