"""The sentiment function: `create_app(settings)` wires one variant's routes, middleware and
lifespan. The request core (`core`) and the protocol adapters (`rest`; `events`, CloudEvents;
`v2`, KServe's Open Inference Protocol) hold the behaviour; start-up and shutdown live in
`lifecycle`. Nothing imports this module back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from functions.sentiment import (
    events,
    explain,
    labelling,
    payload_log,
    playground,
    rest,
    sink,
    v2,
)
from functions.sentiment.context import RequestContext
from functions.sentiment.core import AppState, app_state, error_response, unexpected_response
from functions.sentiment.lifecycle import (
    StartHook,
    fetch_model,
    load_model,
    remaining,
    shutdown,
    startup,
)
from functions.sentiment.preload import Loaded
from shared.config import Settings
from shared.errors import ApiError, MethodNotAllowed, NotFound
from shared.metrics import Metrics


async def on_api_error(request: Request, exc: Exception) -> Response:
    """Every ApiError raised by a route, through the core's one mapping."""
    assert isinstance(exc, ApiError)
    return error_response(app_state(request), request.scope, exc)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    """Routing errors (404, 405) in the same error shape; 405 keeps the router's Allow header."""
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"[:200]
    error: ApiError
    if exc.status_code == 405:
        error = MethodNotAllowed(f"{where} is not allowed", headers=exc.headers)
    else:
        error = NotFound(f"no route for {where}", headers=exc.headers)
    return error_response(app_state(request), request.scope, error)


class _AsgiEndpoint:
    """Wraps a plain ASGI callable so Route serves it at an exact path (no Mount redirect)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    hooks: list[StartHook] | None = None,
    extra_routes: list[BaseRoute] | None = None,
    preloaded: Future[Loaded] | None = None,
) -> Starlette:
    """Build the app for one variant; `registry` defaults to a fresh one per app, `preloaded` is
    a model load already under way (`preload.start`)."""
    metrics = Metrics.create(registry if registry is not None else CollectorRegistry())
    state = AppState(settings=settings, metrics=metrics)
    if preloaded is not None:
        state.extras["preload"] = preloaded
    start_hooks = [load_model, *(hooks or [])]
    if settings.k_sink:
        start_hooks.append(sink.start_sink)
        state.closers.append(lambda: sink.stop_sink(state, remaining(state)))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        metrics.model_ready.labels(settings.variant).set(0)
        task = asyncio.create_task(startup(state, start_hooks), name="startup")
        try:
            yield
        finally:
            await shutdown(state, task)

    routes: list[BaseRoute] = [
        *rest.routes(),
        *events.routes(),
        *v2.routes(),
        *explain.routes(),
        *playground.routes(settings.playground),
        *labelling.routes(settings.labelling),
        *(extra_routes or []),
        Route("/metrics", _AsgiEndpoint(make_asgi_app(metrics.registry)), methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_exception},
    )
    app.state.kubesentiment = state
    # Sampled payload logging (PAYLOAD_LOG_SAMPLE, off by default): innermost of our middleware.
    payload_log.install(app, state, start_hooks)
    if settings.vault_addr or settings.api_keys is not None:
        from shared import secrets  # only functions with Vault or API keys load this

        secrets_hook = secrets.install(app, settings, metrics)
        start_hooks.insert(1, secrets_hook)
        state.closers.append(secrets_hook.close)
    if settings.model_uri is not None and settings.model_uri.scheme == "oci":
        start_hooks.insert(0, fetch_model)  # pulled (or taken from the cache) before loading
    # Outermost of our middleware: a bug anywhere inside still answers within the request's
    # context (its id, timing headers, metrics), logged once.
    app.add_middleware(
        RequestContext,
        metrics=metrics,
        variant=settings.variant,
        on_error=lambda scope, exc: unexpected_response(state, scope, exc),
    )
    return app
