"""``/admin/peers``: the peer registry over HTTP (docs/peers.md).

Under ``/admin``, so with access control on a caller needs ADMINISTER (see
:data:`dicomhub.web.auth.ADMIN_PREFIXES`). Answers never carry credentials:
``auth`` says only how they are held. Peers of the configuration file are
listed (``"source": "config"``) but cannot be changed here (409).
``PATCH`` changes some fields of a peer (keeping its credentials);
``POST /admin/peers/NAME/echo`` verifies a peer (C-ECHO, QIDO-RS) and says how it went.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomhub.services.archive import Archive
from dicomhub.web.auth import caller_of
from dicomhub.web.errors import json_object

__all__ = ["routes"]

# A peer is a few hundred bytes of JSON; this bounds what a request may make us parse.
_MAX_BODY = 64 * 1024


def routes(archive: Archive) -> list[BaseRoute]:
    peers = archive.peers

    async def list_peers(_request: Request) -> JSONResponse:
        """Every peer, from the index and the configuration file, by name."""
        found = await run_in_threadpool(peers.list)
        return JSONResponse([p.public() for p in found])

    async def get_peer(request: Request) -> JSONResponse:
        peer = await run_in_threadpool(peers.require, request.path_params["name"])
        return JSONResponse(peer.public())

    async def put_peer(request: Request) -> JSONResponse:
        """Create the peer (201) or replace all of its fields (200) with the JSON body."""
        body = await json_object(request, _MAX_BODY)
        peer, created = await run_in_threadpool(
            peers.put, request.path_params["name"], body, caller_of(request)
        )
        return JSONResponse(peer.public(), status_code=201 if created else 200)

    async def patch_peer(request: Request) -> JSONResponse:
        """Change only the fields of the JSON body (the rest, credentials included, stay)."""
        body = await json_object(request, _MAX_BODY)
        peer = await run_in_threadpool(peers.update, request.path_params["name"], body, caller_of(request))
        return JSONResponse(peer.public())

    async def delete_peer(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        await run_in_threadpool(peers.remove, name, caller_of(request))
        return JSONResponse({"removed": name.strip()})

    async def echo_peer(request: Request) -> JSONResponse:
        """Verify the peer: C-ECHO and/or a one-study QIDO-RS, each with its outcome."""
        verification = archive.verification
        if verification is None:
            return JSONResponse({"error": "peer verification is not available here", "status": 503}, 503)
        found = await run_in_threadpool(verification.verify, request.path_params["name"])
        return JSONResponse(found)

    return [
        Route("/peers", list_peers, methods=["GET"]),
        Route("/peers/{name}", get_peer, methods=["GET"]),
        Route("/peers/{name}", put_peer, methods=["PUT"]),
        Route("/peers/{name}", delete_peer, methods=["DELETE"]),
        Route("/peers/{name}", patch_peer, methods=["PATCH"]),
        Route("/peers/{name}/echo", echo_peer, methods=["POST"]),
    ]
