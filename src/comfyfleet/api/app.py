"""The FastAPI application: ``create_app(services, settings)``.

Routes live one concern per module under ``/api/v2``: ``jobs``, ``live`` (the SSE stream of one
job), ``live_feed`` (the dashboards' WebSocket), ``assets`` (reading), ``uploads``, ``health``,
``backends``, ``stats``; ``metrics`` is at ``/metrics`` and the ``dashboard`` page at
``/dashboard``. ``errors`` turns every failure into the contract's error envelope; ``access``
decides who may call what (API keys); ``origin`` refuses what another site's page makes a
browser send. The app owns no connections: the caller builds the services and closes them. At
shutdown open event streams and live feeds are told to finish through ``ApiContext.closing``:
``launch.ApiServer.stop`` sets it before uvicorn starts waiting for open connections (which it
cuts after ``timeout_graceful_shutdown``); the lifespan's end sets it too, for a server run
another way, but uvicorn runs that only after the wait.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from . import assets, backends, dashboard, health, jobs, live, live_feed, metrics, stats, uploads
from .access import get_caller, require_admin
from .context import ApiContext, ApiServices, ApiSettings
from .errors import install_error_handlers
from .origin import RefuseCrossSite
from .schemas import API_PREFIX, Renderer

__all__ = ["ApiServices", "ApiSettings", "create_app"]

log = logging.getLogger(__name__)


def create_app(services: ApiServices, settings: ApiSettings) -> FastAPI:
    context = ApiContext(settings=settings, services=services,
                         renderer=Renderer(settings.public_base_url, settings.retention_s))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context.closing.clear()
        log.info("API serving at %s%s", settings.public_base_url, API_PREFIX)
        try:
            yield
        finally:
            context.closing.set()  # if no one did before: open streams send what is new and end

    app = FastAPI(title="comfyfleet", version="2.0.0", lifespan=lifespan,
                  openapi_url=f"{API_PREFIX}/openapi.json", docs_url=f"{API_PREFIX}/docs",
                  redoc_url=None, redirect_slashes=False)  # api/slashes.py redirects instead
    app.state.api = context
    install_error_handlers(app)
    app.add_middleware(RefuseCrossSite, public_base_url=settings.public_base_url,
                       keyless=lambda: services.keys is None)
    for module in (jobs, live, uploads, assets):
        app.include_router(module.router, prefix=API_PREFIX, dependencies=[Depends(get_caller)])
    app.include_router(live_feed.router, prefix=API_PREFIX)  # a WebSocket: it authenticates itself
    for module in (stats, backends):
        app.include_router(module.router, prefix=API_PREFIX, dependencies=[Depends(require_admin)])
    app.include_router(health.router, prefix=API_PREFIX)  # no key needed: probes
    app.include_router(health.router, include_in_schema=False)  # also at /health
    app.include_router(metrics.router, dependencies=[Depends(require_admin)])  # where Prometheus looks
    app.include_router(dashboard.router)  # static: the page asks for a key itself
    return app
