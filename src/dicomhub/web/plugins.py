"""HTTP routes of plugins, mounted under ``/plugins/NAME``.

Requests go through the same authentication as every other route (the
middleware runs first). A plugin's handler gets a
:class:`~dicomhub.plugins.api.PluginRequest`: the method, path and query
parameters, the body, and a :class:`~dicomhub.plugins.host.CallerArchive` bound to
the authenticated caller, which reaches the archive only through services that
apply that caller's grants. It never gets the Starlette request, the index or the
blob store.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from dicomhub.errors import DicomhubError
from dicomhub.plugins.api import Plugin, PluginRequest, PluginResponse, PluginRoute
from dicomhub.plugins.host import CallerArchive, PluginHost
from dicomhub.services.archive import Archive
from dicomhub.web.auth import caller_of

__all__ = ["routes"]

LOGGER = logging.getLogger("dicomhub.plugins")


def _endpoint(
    archive: Archive, plugin: Plugin, route: PluginRoute
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        body = await request.body()
        asked = PluginRequest(
            request.method,
            dict(request.path_params),
            dict(request.query_params),
            body,
            CallerArchive(caller_of(request), archive.search),
        )
        try:
            answer = await run_in_threadpool(route.handler, asked)
        except DicomhubError:
            raise  # the archive's own errors: 400, 403, 404 ... by web/errors.py
        except Exception as exc:
            LOGGER.exception("plugin %s: %s %s failed", plugin.name, request.method, request.url.path)
            return JSONResponse(
                {"error": f"plugin {plugin.name} failed: {type(exc).__name__}", "status": 500},
                status_code=500,
            )
        if isinstance(answer, PluginResponse):
            return JSONResponse(answer.body, status_code=answer.status_code, headers=dict(answer.headers))
        return JSONResponse(answer)

    return endpoint


def routes(archive: Archive, host: PluginHost | None) -> list[BaseRoute]:
    """A ``/plugins/NAME`` mount per plugin that has routes."""
    if host is None:
        return []
    mounts: list[BaseRoute] = []
    for plugin in host.plugins:
        own = [
            Route(
                r.path, _endpoint(archive, plugin, r), methods=list(r.methods), name=f"plugin-{plugin.name}"
            )
            for r in plugin.routes()
        ]
        if own:
            mounts.append(Mount(f"/plugins/{plugin.name}", routes=own))
    return mounts
