"""The Starlette application: ``create_app(archive, settings)``."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from dicomhub import __version__
from dicomhub.config import Settings
from dicomhub.plugins.host import PluginHost
from dicomhub.services.archive import Archive
from dicomhub.web import (
    admin,
    audit,
    changes,
    corrections,
    deid,
    dicomweb,
    fhir,
    links,
    me,
    migrations,
    mpps,
    orders,
    patients,
    peers,
    plugins,
    printclient,
    printing,
    repair,
    routing,
    security,
    studyactions,
    trash,
    ui,
    webhooks,
)
from dicomhub.web.auth import AuditBacklog, AuthMiddleware
from dicomhub.web.errors import EXCEPTION_HANDLERS
from dicomhub.web.fhir import imagingstudy
from dicomhub.web.hanging import routes as hanging_routes
from dicomhub.web.metrics import metrics_endpoint
from dicomhub.web.observe import ObserveMiddleware, RouteTemplates
from dicomhub.web.ohif import ohif_mount
from dicomhub.web.openapi import openapi_endpoint
from dicomhub.web.studychecks import routes as study_check_routes
from dicomhub.web.ui import login as ui_login

__all__ = ["create_app"]


def create_app(
    archive: Archive,
    settings: Settings,
    dimse_alive: Callable[[], bool] = lambda: True,
    conformance: Callable[[str], str] | None = None,
    processes: Callable[[], Mapping[str, int]] | None = None,
    plugin_host: PluginHost | None = None,
) -> Starlette:
    """Build the HTTP application on ``archive``.

    ``dimse_alive`` reports whether the DIMSE workers run, so that the health
    check covers the whole server and not only this process. ``conformance``
    gives the DICOM conformance statement of the server in a format
    (``"markdown"`` or ``"html"``), served at ``GET /conformance`` (404
    without it); the composition root injects it, since the statement is
    generated from the DIMSE and web layers together. ``processes`` gives
    ``{role: pid}`` of the server's processes for ``dicomhub_process_*`` in
    ``/metrics``. ``plugin_host``: the enabled plugins, whose routes are mounted
    under ``/plugins/NAME``.
    """

    def conformance_statement(request: Request) -> Response:
        if conformance is None:
            return JSONResponse(
                {"error": "no conformance statement is configured", "status": 404}, status_code=404
            )
        fmt = request.query_params.get("format")
        if fmt is None:
            accept = request.headers.get("accept", "")
            fmt = "markdown" if "text/markdown" in accept and "text/html" not in accept else "html"
        if fmt == "markdown":
            return PlainTextResponse(conformance("markdown"), media_type="text/markdown; charset=utf-8")
        if fmt == "html":
            return HTMLResponse(conformance("html"))
        return JSONResponse(
            {"error": f"unknown format {fmt!r} (markdown or html)", "status": 400}, status_code=400
        )

    def healthz(_request: Request) -> JSONResponse:
        index_ok, storage_ok = archive.health()
        dimse_ok = dimse_alive()
        ok = index_ok and storage_ok and dimse_ok
        body = {
            "status": "ok" if ok else "unavailable",
            "index": index_ok,
            "storage": storage_ok,
            "dimse": dimse_ok,
            "version": __version__,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    backlog = AuditBacklog(archive)
    # gzip is for JSON and XML: DICOM objects, frames and bulk data are large,
    # often already compressed, and would cost a core to compress per download.
    middleware = [
        Middleware(
            GZipMiddleware,
            minimum_size=1024,
            compresslevel=6,
            exclude_content_types=(
                *DEFAULT_EXCLUDED_CONTENT_TYPES,
                "multipart/related",
                "application/dicom",
                "application/octet-stream",
                "image/*",
            ),
        ),
        Middleware(AuthMiddleware, archive=archive, required=settings.auth_required, backlog=backlog),
    ]
    templates = RouteTemplates()
    if settings.cors_origins:
        middleware.insert(
            0,
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=["ETag", "Content-Type", "Content-Length", "Warning"],
            ),
        )
    # Outermost: request id, access log and HTTP metrics see every answer, 401s included.
    middleware.insert(0, Middleware(ObserveMiddleware, templates=templates, access_log=settings.access_log))
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/openapi.json", openapi_endpoint, methods=["GET"]),
            Route("/conformance", conformance_statement, methods=["GET"]),
            Route("/metrics", metrics_endpoint(archive, processes), methods=["GET"]),
            Mount(
                "/dicomweb", routes=[*security.dicomweb_routes(archive), *dicomweb.routes(archive, settings)]
            ),
            Mount(
                "/admin",
                routes=[
                    *admin.routes(archive),
                    *peers.routes(archive),
                    *webhooks.routes(archive),
                    *routing.routes(archive),
                    *repair.routes(archive),
                    *corrections.admin_routes(archive),
                ],
            ),
            Mount("/deid", routes=deid.routes(archive)),
            Mount("/print", routes=[*printing.routes(archive), *printclient.routes(archive)]),
            Mount("/fhir", routes=fhir.routes(archive) + imagingstudy.routes(archive, settings)),
            Mount(
                "/api",
                routes=[
                    *links.routes(archive),
                    *orders.routes(archive),
                    *mpps.routes(archive),
                    *patients.routes(archive),
                    *corrections.api_routes(archive),
                    *me.routes(),
                    *studyactions.routes(archive),
                    *study_check_routes(archive),
                    *hanging_routes(archive, settings),
                ],
            ),
            *audit.routes(archive, settings, backlog),
            *migrations.routes(archive),
            *changes.routes(archive),
            *trash.routes(archive),
            *security.routes(archive, backlog),
            *plugins.routes(archive, plugin_host),
            # Last: the UI's "/" and "/ui/..." pages shadow nothing above.
            *ui_login.routes(archive, settings),
            *ui.routes(),
            ohif_mount(settings.data_dir, settings.public_base_url),
        ],
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    templates.add(app.routes)
    # The server writes what is still queued when it stops (see AuditBacklog.close).
    app.state.audit_backlog = backlog
    return app
