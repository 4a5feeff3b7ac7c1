"""The ASGI application: routes, error handlers, and what runs beside them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from famprov import logs
from famprov.api import invitation_page, openapi, partner_v1
from famprov.api.errors import HANDLERS, failure
from famprov.api.metrics import Metrics
from famprov.api.metrics import endpoint as metrics_endpoint
from famprov.api.middleware import RequestLogMiddleware
from famprov.clock import Clock, SystemClock
from famprov.config import Settings
from famprov.invitations.delivery import DeliveryWorker
from famprov.keys import load_keyring
from famprov.licenses.service import GrantService
from famprov.logs import log
from famprov.partners.service import PartnerDirectory
from famprov.store import is_reachable, open_engine
from famprov.store.migrate import prepare
from famprov.throttle.service import Throttle


async def healthz(request: Request) -> Response:
    return JSONResponse({"success": True, "status": "alive"})


async def readyz(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    if await asyncio.to_thread(is_reachable, engine):
        return JSONResponse({"success": True, "status": "ready"})
    return failure(503, "Database unreachable")


class FamprovApp(Starlette):
    """Starlette, with the partner endpoint dispatched ahead of routing.

    Every grant takes this path, and Starlette's middleware stack and router
    cost more per request than the endpoint's own work; the endpoint still
    runs inside the request log (request id, log line, metrics and the JSON
    500). Every other path goes through Starlette as usual.
    """

    def __init__(self, *, partner_api: ASGIApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._partner_api = partner_api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in partner_v1.PATHS:
            scope["app"] = self
            await self._partner_api(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def from_environment() -> Starlette:
    """The app for ``uvicorn --factory``: each serving process builds its own."""
    settings = Settings()
    logs.configure(settings.log_format, settings.log_level)
    return create_app(settings)


def create_app(settings: Settings, *, clock: Clock | None = None) -> Starlette:
    """Build the service; the store opens and the workers start on startup."""
    clock = clock or SystemClock()
    deliver = settings.delivery
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        keyring = await asyncio.to_thread(load_keyring, settings)
        engine = open_engine(settings.database)
        await asyncio.to_thread(prepare, engine, keyring)
        delivery = DeliveryWorker.from_settings(settings, engine, keyring, clock)

        def committed(grants: int, seconds: float) -> None:
            metrics.observe_commit(grants, seconds)
            if deliver:
                delivery.wake()

        throttle = Throttle.from_settings(settings)
        grants = GrantService(
            settings.database,
            PartnerDirectory(engine, keyring, settings.partner_cache_seconds),
            keyring,
            clock,
            throttle=throttle,
            batch_size=settings.writer_batch_size,
            writers=settings.writers,
            log_format=logs.current_format(),
            log_level=settings.log_level,
            after_commit=committed,
        )
        metrics.watch_store(engine)
        metrics.watch_throttle(throttle)
        app.state.metrics = metrics
        app.state.settings = settings
        app.state.clock = clock
        app.state.engine = engine
        app.state.grants = grants
        await grants.start()
        task = asyncio.create_task(delivery.run()) if deliver else None
        # Everything loaded so far lives as long as the process: keep it out
        # of the collector's full passes, which otherwise stall every request
        # in flight for tens of milliseconds now and then.
        gc.freeze()
        log.info(
            "service_started",
            database=settings.database_display,
            mail=settings.mail_display,
            delivery=deliver,
        )
        try:
            yield
        finally:
            await grants.stop()
            await throttle.close()
            if task is not None:
                delivery.stop()
                await task
            engine.dispose()
            log.info("service_stopped")

    routes = [
        Route("/invite/{token}", invitation_page.show, methods=["GET"]),
        Route("/invite/{token}", invitation_page.accept, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *openapi.routes(),
    ]
    app = FamprovApp(
        partner_api=RequestLogMiddleware(partner_v1.create_license, metrics=metrics),
        routes=routes,
        middleware=[Middleware(RequestLogMiddleware, metrics=metrics)],
        exception_handlers=HANDLERS,
        lifespan=lifespan,
    )
    # ``/path/`` is a 404, not a redirect: the redirect's Location would
    # repeat the query, hash and email included.
    app.router.redirect_slashes = False
    return app
