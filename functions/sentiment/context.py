"""Per-request context as one pure ASGI middleware: request id, timing headers and HTTP metrics.

A pure ASGI middleware (not BaseHTTPMiddleware) keeps the per-request overhead to a few
microseconds. It sets the request id context variable (echoing a sane `X-Request-ID`, else a new
one), adds `X-Request-ID` and `Server-Timing` (tokenize, queue, inference, total) to the response,
and records request count, duration and in-flight gauge labelled by route template, never by raw
path.
"""

from __future__ import annotations

import contextvars
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logs import request_id_var
from shared.metrics import Metrics, status_class

timings: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "timings", default=None
)
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

    def __init__(self, app: ASGIApp, metrics: Metrics, variant: str) -> None:
        self.app = app
        self.metrics = metrics
        self.variant = variant
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
        self.in_flight.inc()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
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
        finally:
            self.in_flight.dec()
            route = route_template(scope)
            method = scope.get("method", "GET")
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(route, method, status_class(status), self.variant).inc()
            self.metrics.request_duration.labels(route, method, self.variant).observe(elapsed)
            timings.reset(t_token)
            request_id_var.reset(id_token)
