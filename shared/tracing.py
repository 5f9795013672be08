"""OpenTelemetry tracing over OTLP/HTTP, set up only when a standard OTLP endpoint is configured.

`setup(settings)` builds a TracerProvider with a BatchSpanProcessor and the OTLP/HTTP exporter
(the processor's queue is bounded, OTEL_BSP_MAX_QUEUE_SIZE, 2048 spans by default, dropping the
oldest when full, and exports from its own thread: a dead collector never slows a request);
the SDK itself reads the standard variables (OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _HEADERS,
_TIMEOUT, _COMPRESSION, OTEL_BSP_*, OTEL_TRACES_SAMPLER, OTEL_RESOURCE_ATTRIBUTES). `instrument`
puts the maintained ASGI instrumentation outermost, so every request gets a server span whose
parent is the incoming W3C `traceparent`, and returns the server span's `traceparent` in the
response. Without an endpoint none of this runs and the SDK is never imported: the spans that
`classify()` opens through the OTel API stay no-ops.

For CloudEvents, the distributed-tracing extension carries the event's `traceparent` (binary
mode: the `ce-traceparent` header; structured mode: an attribute); `extract_event_context`
turns it into a parent context for the span that handles the event, and `inject_event_context`
writes the current span's context into an event this function sends (the reply, a payload log
event), so its consumer continues the same trace.

Calls out of the function get client spans when tracing is on: with K_SINK or PAYLOAD_LOG_SINK
set, `setup` instruments httpx (the deliveries, one span per attempt, each parented by the
delivered event's own trace context and sending it on as the HTTP `traceparent`); Vault calls open
their own client spans through the API (`client_span`, shared/vault.py). Without an endpoint
the httpx instrumentation is never imported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.config import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from starlette.applications import Starlette

log = logging.getLogger("kubesentiment.tracing")

DEFAULT_SERVICE = "kubesentiment"
# Probes and scrapes would otherwise open a span every few seconds. The instrumentation's own
# OTEL_PYTHON_STARLETTE_EXCLUDED_URLS / OTEL_PYTHON_EXCLUDED_URLS replace this list when set.
DEFAULT_EXCLUDED = (
    "/health/liveness$,/health/readiness$,/v2/health/live$,/v2/health/ready$,/metrics$"
)
_W3C = TraceContextTextMapPropagator()
_TRACER = trace.get_tracer("kubesentiment")


def service_name(settings: Settings) -> str:
    """OTEL_SERVICE_NAME, else the Knative service (K_SERVICE), else 'kubesentiment'."""
    return settings.service_name or settings.k_service or DEFAULT_SERVICE


def setup(settings: Settings, *, exporter: SpanExporter | None = None) -> TracerProvider | None:
    """Install a global TracerProvider exporting over OTLP/HTTP; None when tracing is off."""
    if not settings.tracing_enabled and exporter is None:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # endpoint, headers, timeout: the standard OTEL_* variables
    attributes: dict[str, str] = {
        "service.name": service_name(settings),
        "kubesentiment.variant": settings.variant,
    }
    if settings.k_revision:
        attributes["service.version"] = settings.k_revision
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if settings.k_sink or settings.payload_log_sink:  # the only httpx clients of the function
        instrument_clients(provider)
    return provider


def instrument_clients(provider: TracerProvider) -> None:
    """Client spans for every httpx request of this process (the K_SINK and PAYLOAD_LOG_SINK
    senders), with the W3C `traceparent` of each span sent along; once per process."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)


def instrument(
    app: Starlette,
    provider: TracerProvider | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Add the server-span middleware (outermost) and the `traceparent` response header."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.util.http import parse_excluded_urls

    configured = environ.get(
        "OTEL_PYTHON_STARLETTE_EXCLUDED_URLS", environ.get("OTEL_PYTHON_EXCLUDED_URLS")
    )
    excluded = parse_excluded_urls(DEFAULT_EXCLUDED if configured is None else configured)
    app.add_middleware(TraceparentHeader)
    app.add_middleware(
        OpenTelemetryMiddleware,
        excluded_urls=excluded,
        default_span_details=_span_details,
        # The per-message receive/send spans only add overhead to every request.
        exclude_spans=["receive", "send"],
        tracer_provider=provider,
    )


def shutdown(provider: TracerProvider | None, timeout_s: float) -> bool:
    """Flush queued spans and stop the exporter within `timeout_s` (what is left of the shutdown
    deadline); False when the flush did not finish in time and the rest of the spans is dropped.

    The SDK's own shutdown waits up to 30 s for the batch processor plus an export (retried
    against a dead collector), so it runs in a daemon thread that is waited for `timeout_s` only.
    """
    if provider is None:
        return True
    worker = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    worker.start()
    worker.join(max(0.0, timeout_s))
    if worker.is_alive():
        log.warning("span flush did not finish by the shutdown deadline; queued spans dropped")
        return False
    return True


def _span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    # Name the server span "METHOD /route/template" (OTel HTTP semantic conventions): routing has
    # not run yet, so match the routes as Starlette's router will.
    method = str(scope.get("method", ""))
    app = scope.get("app")
    for route in getattr(app, "routes", ()):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            path = str(getattr(route, "path", ""))
            return f"{method} {path}".strip(), {"http.route": path}
    return method or "HTTP", {}


class TraceparentHeader:
    """Returns the server span's context as a W3C `traceparent` response header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = trace.get_current_span().get_span_context()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start" and ctx.is_valid:
                value = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
                headers = [*message.get("headers", []), (b"traceparent", value.encode("ascii"))]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_wrapper)


def extract_event_context(attributes: Mapping[str, Any]) -> Context | None:
    """The parent context carried by a CloudEvent's distributed-tracing extension, if valid.

    `attributes` are the event's attributes (`traceparent`, `tracestate`) or, for binary mode,
    its `ce-` headers (`ce-traceparent`, `ce-tracestate`); keys are matched case-insensitively.
    Returns None when the event carries no valid `traceparent`.
    """
    carrier: dict[str, str] = {}
    for key, value in attributes.items():
        name = key.lower().removeprefix("ce-")
        if name in ("traceparent", "tracestate") and isinstance(value, str):
            carrier[name] = value
    if "traceparent" not in carrier:
        return None
    ctx = _W3C.extract(carrier)
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def inject_event_context(attributes: dict[str, Any]) -> None:
    """Write the current span's context into a CloudEvent's attributes (`traceparent`, and
    `tracestate` when there is one); nothing when no span is recording (tracing off)."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    for key in ("traceparent", "tracestate"):
        if key in carrier:
            attributes[key] = carrier[key]


@contextlib.contextmanager
def client_span(
    name: str,
    url: str | None,
    attributes: Mapping[str, str],
    scrub: Callable[[str], str],
    *,
    tracer: trace.Tracer = _TRACER,
) -> Iterator[None]:
    """A client span around one call that no instrumentation covers (hvac's calls to Vault),
    naming the server of `url`; a no-op with tracing off. A failure sets the error status with
    `scrub(error text)` instead of the SDK's exception event: an error may quote what was sent."""
    server = urlsplit(url or "")
    address: dict[str, str | int] = {"server.address": server.hostname or ""}
    if server.port is not None:
        address["server.port"] = server.port
    with tracer.start_as_current_span(
        name,
        kind=trace.SpanKind.CLIENT,
        attributes={**address, **attributes},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield
        except Exception as e:
            span.set_attribute("error.type", type(e).__name__)
            span.set_status(trace.StatusCode.ERROR, f"{type(e).__name__}: {scrub(str(e))}")
            raise
