"""The ASGI application: `create_app(settings)` builds it; nothing happens at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from cloudcontainer import __version__
from cloudcontainer.api import (
    archives,
    audit,
    auth,
    containers,
    files,
    history,
    locks,
    ops,
    previews,
    projects,
    search,
    services,
    snapshots,
    terminals,
    toolchains,
)
from cloudcontainer.api.bodylimit import BodySizeLimitMiddleware
from cloudcontainer.api.docs import install_docs
from cloudcontainer.api.errors import ERROR_RESPONSES, install_error_handlers
from cloudcontainer.api.handparsed import HandParsedRoute
from cloudcontainer.api.hotroutes import HotRoutesMiddleware
from cloudcontainer.api.urlguard import NulInUrlMiddleware
from cloudcontainer.config import Settings, load_settings
from cloudcontainer.observability.metrics import Metrics
from cloudcontainer.observability.middleware import RequestContextMiddleware
from cloudcontainer.state import open_services

__all__ = ["create_app"]

DESCRIPTION = """\
Real Linux containers behind a WebContainer-compatible API: files, terminals, live previews
and AI-driven edits for AI app builders such as bolt.diy.

Authenticate with `Authorization: Bearer <access token or API key>`. Every error answers
`{"error": {"code": "...", "message": "..."}}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(settings, metrics) as services:
            app.state.services = services
            yield

    app = FastAPI(
        title="cloudcontainer",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        docs_url=None,
        redoc_url=None,
        # FastAPI's native OpenTelemetry looks up global providers (and os.environ) on every
        # request; the gateway has its own Prometheus metrics and access log.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    install_docs(app)
    # The editor's hot path first, as the app's own routes: routes are matched in order, and
    # each included router passed on the way costs (~10 µs a request in FastAPI 0.165).
    hot_routes = [route for route in files.hot_router.routes if isinstance(route, HandParsedRoute)]
    app.router.routes[0:0] = hot_routes
    for module in (ops, auth, projects, containers, files, locks, search, archives, history,
                   snapshots, terminals, audit, toolchains, previews, services):  # fmt: skip
        app.include_router(module.router)
    app.add_middleware(HotRoutesMiddleware, routes=hot_routes)  # added first: innermost
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_file_bytes=settings.max_file_bytes,
    )
    app.add_middleware(NulInUrlMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
