"""Per-request context as one pure ASGI middleware: request id, timing headers, HTTP metrics and
the one path for unexpected errors.

A pure ASGI middleware (not BaseHTTPMiddleware) keeps the per-request overhead to a few
microseconds. It sets the request id context variable (echoing a sane `X-Request-ID`, else a new
one), adds `X-Request-ID` and `Server-Timing` (tokenize, queue, inference, total) to the response,
and records request count, duration and in-flight gauge labelled by route template, never by raw
path. An exception that escapes the app is answered here, still inside the request's context, by
the injected `on_error` (a 500 in the route's error shape, logged once with the request id).
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logs import request_id_var
from shared.metrics import Metrics, status_class

timings: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "timings", default=None
)


@dataclass
class Usage:
    """What a keyed request used (functions/sentiment/usage.py counts it per key id)."""

    texts: int = 0
    tokens: int = 0
    cpu_seconds: float = 0.0


# Set only for a request made with an API key; the core adds to it as it classifies.
usage: contextvars.ContextVar[Usage | None] = contextvars.ContextVar("usage", default=None)
log = logging.getLogger("kubesentiment.app")
ErrorResponder = Callable[[Scope, BaseException], Response]
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def route_template(scope: Scope) -> str:
    """The matched route's path template, or 'unmatched' (keeps metric labels bounded)."""
    route: Any = scope.get("route")
    if route is None:
        return "unmatched"
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


class RequestContext:
    """Request id, Server-Timing and HTTP metrics for every HTTP request."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, variant: str, on_error: ErrorResponder
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.variant = variant
        self.on_error = on_error
        self.in_flight = metrics.in_flight.labels(variant)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if incoming and _SAFE_ID.match(incoming) else uuid.uuid4().hex
        id_token = request_id_var.set(request_id)
        stages: dict[str, float] = {}
        t_token = timings.set(stages)
        started = time.perf_counter()
        status = 500
        started_response = False
        self.in_flight.inc()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
                total = time.perf_counter() - started
                parts = [f"{k};dur={v * 1000:.3f}" for k, v in stages.items()]
                parts.append(f"total;dur={total * 1000:.3f}")
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                headers.append((b"server-timing", ", ".join(parts).encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if started_response:
                # Too late for a 500: log once; uvicorn closes the half-sent response.
                log.error("error after the response started", exc_info=exc)
            else:
                await self.on_error(scope, exc)(scope, receive, send_wrapper)
        finally:
            self.in_flight.dec()
            route = route_template(scope)
            method = scope.get("method", "GET")
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(route, method, status_class(status), self.variant).inc()
            self.metrics.request_duration.labels(route, method, self.variant).observe(elapsed)
            timings.reset(t_token)
            request_id_var.reset(id_token)
