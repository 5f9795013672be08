"""The sentiment function: `create_app(settings)` builds a Starlette app for one model variant.

The lifespan starts loading in the background so the port answers at once: liveness is 200 from
the first moment, readiness is 503 until the model directory is verified, the ONNX session built,
a warm-up inference run and the secrets read. Knative's queue-proxy only sends traffic to a ready
revision, so the first request after a scale from zero never meets a half-loaded model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from functions.sentiment import openapi
from functions.sentiment.batching import Batcher, Outcome, RunStats
from functions.sentiment.context import RequestContext, timings
from functions.sentiment.inputs import parse_predict, read_json
from functions.sentiment.model import Classifier, Prediction
from shared.config import Settings
from shared.errors import (
    ApiError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    NotReady,
    Overloaded,
)
from shared.logs import request_id_var
from shared.metrics import Metrics
from shared.process import process_start_time

log = logging.getLogger("kubesentiment.app")
tracer = trace.get_tracer("kubesentiment")
PROCESS_START = process_start_time()
# Inputs up to this many characters are tokenized on the event loop (well under 0.3 ms).
INLINE_TOKENIZE_CHARS = 512


@dataclass
class AppState:
    """Everything a request handler needs, built once by the lifespan."""

    settings: Settings
    metrics: Metrics
    started_at: float = PROCESS_START
    classifier: Classifier | None = None
    batcher: Batcher | None = None
    ready: bool = False
    draining: bool = False
    not_ready_reason: str = "the model is loading"
    in_flight: int = 0
    extras: dict[str, Any] = field(default_factory=dict)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def accepting(self) -> bool:
        """Ready for new work: model loaded and warmed up, secrets read, not draining."""
        return self.ready and not self.draining

    def require_ready(self) -> tuple[Classifier, Batcher]:
        """The model and batcher, or NotReady (503 with Retry-After)."""
        if self.draining:
            raise NotReady("the function is shutting down", headers=self.retry_after)
        if not self.ready or self.classifier is None or self.batcher is None:
            raise NotReady(f"not ready: {self.not_ready_reason}", headers=self.retry_after)
        return self.classifier, self.batcher

    @property
    def retry_after(self) -> dict[str, str]:
        """Retry-After header for 429/503 answers."""
        return {"Retry-After": str(self.settings.retry_after_s)}

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Count an inference request in flight, refusing it beyond MAX_CONCURRENCY (429)."""
        if self.in_flight >= self.settings.max_concurrency:
            raise Overloaded(
                f"more than {self.settings.max_concurrency} requests in flight; retry shortly",
                headers=self.retry_after,
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


def app_state(request: Request) -> AppState:
    """The typed state of the app serving this request."""
    state: AppState = request.app.state.kubesentiment
    return state


async def classify(
    state: AppState, texts: list[str], *, long_text: str | None = None
) -> list[Prediction]:
    """Tokenize (long inputs off the event loop), run through the batcher, record metrics/spans."""
    # Only a handler's entry refuses work while draining: a request it already accepted (body
    # read, maybe queued) still completes after SIGTERM (Knative runtime contract).
    classifier, batcher = state.classifier, state.batcher
    if classifier is None or batcher is None:
        raise NotReady(f"not ready: {state.not_ready_reason}", headers=state.retry_after)
    chunk = (long_text or state.settings.long_text) == "chunk"
    variant = state.settings.variant
    m = state.metrics
    with tracer.start_as_current_span("tokenize") as span, batcher.expecting(len(texts)):
        t0 = time.perf_counter()
        if sum(len(t) for t in texts) <= INLINE_TOKENIZE_CHARS:
            # A short input tokenizes in ~20 us, less than a hop to a worker thread and back
            # (plus the GIL hand-offs that hop costs under load): it stays on the loop.
            encoded = classifier.encode(texts, chunk=chunk)
        else:
            encoded = await run_in_threadpool(classifier.encode, texts, chunk=chunk)
        tokenize_s = time.perf_counter() - t0
        span.set_attribute("kubesentiment.texts", len(texts))
    m.tokenization_duration.labels(variant).observe(tokenize_s)
    outcome = await batcher.submit([e.windows for e in encoded])
    _record_spans(outcome)
    predictions = [
        classifier.combine(e, p) for e, p in zip(encoded, outcome.probabilities, strict=True)
    ]
    t = timings.get()
    if t is not None:
        t["tokenize"] = t.get("tokenize", 0.0) + tokenize_s
        t["queue"] = t.get("queue", 0.0) + outcome.queue_seconds
        t["inference"] = t.get("inference", 0.0) + outcome.inference_seconds
    for p in predictions:
        m.tokens_per_text.labels(variant).observe(p.tokens)
        m.predictions.labels(p.label, variant).inc()
        if p.truncated:
            m.truncated.labels(variant).inc()
    return predictions


def _record_spans(outcome: Outcome) -> None:
    # The ONNX run happens on the inference thread and may serve several requests, so each
    # request records its own queue-wait and inference spans from the run's timestamps.
    if not trace.get_current_span().get_span_context().is_valid:
        return
    wait = tracer.start_span("batch_queue_wait", start_time=outcome.enqueued_ns)
    wait.end(end_time=max(outcome.enqueued_ns, outcome.started_ns))
    run = tracer.start_span(
        "inference",
        start_time=outcome.started_ns,
        attributes={"kubesentiment.batch_size": outcome.batch_size},
    )
    run.end(end_time=outcome.ended_ns)


def prediction_json(p: Prediction, item_id: Any, state: AppState) -> dict[str, Any]:
    """The JSON object for one prediction."""
    out: dict[str, Any] = {}
    if item_id is not None:
        out["id"] = item_id
    assert state.classifier is not None
    out.update(
        label=p.label,
        score=p.score,
        probabilities=p.probabilities,
        truncated=p.truncated,
        model=state.classifier.manifest.name,
        variant=state.settings.variant,
    )
    return out


async def predict(request: Request) -> Response:
    """POST /predict: one text or a batch of texts."""
    state = app_state(request)
    state.require_ready()
    data = await read_json(request, state.settings.max_body_bytes)
    parsed = parse_predict(
        data, max_texts=state.settings.max_texts, max_chars=state.settings.max_text_chars
    )
    async with state.admit():
        predictions = await classify(
            state, [i.text for i in parsed.items], long_text=parsed.long_text
        )
    results = [
        prediction_json(p, item.id, state)
        for p, item in zip(predictions, parsed.items, strict=True)
    ]
    if parsed.single:
        return JSONResponse(results[0])
    return JSONResponse({"results": results})


async def liveness(request: Request) -> Response:
    """GET /health/liveness: the process is up and its event loop answers."""
    return JSONResponse({"status": "alive"})


async def readiness(request: Request) -> Response:
    """GET /health/readiness: 200 only when the model is loaded, warmed up and not draining."""
    state = app_state(request)
    if state.accepting:
        return JSONResponse({"status": "ready", "variant": state.settings.variant})
    reason = "shutting down" if state.draining else state.not_ready_reason
    return JSONResponse(
        NotReady(f"not ready: {reason}").body(request_id_var.get()),
        status_code=503,
        headers=state.retry_after,
    )


async def model_info(request: Request) -> Response:
    """GET /model: what is served and how."""
    state = app_state(request)
    classifier, _ = state.require_ready()
    info = classifier.describe()
    info.update(
        variant=state.settings.variant,
        inter_op_threads=state.settings.inter_op_threads,
        batching={
            "enabled": state.settings.batching,
            "max_size": state.settings.batch_max_size,
            "max_wait_ms": state.settings.batch_max_wait_ms,
        },
        long_text=state.settings.long_text,
        max_concurrency=state.settings.max_concurrency,
    )
    return JSONResponse(info)


async def openapi_json(request: Request) -> Response:
    """GET /openapi.json: the OpenAPI 3.1 description of every route."""
    return JSONResponse(openapi.document(app_state(request).settings))


def _error_response(request: Request, error: ApiError) -> Response:
    state = app_state(request)
    route = request.scope.get("route")
    template = getattr(route, "path", "unmatched") if route is not None else "unmatched"
    state.metrics.errors.labels(template, error.type, state.settings.variant).inc()
    if error.status in (429, 503):
        reason = (
            "overloaded"
            if error.status == 429
            else ("shutting_down" if state.draining else "not_ready")
        )
        state.metrics.rejected.labels(template, reason, state.settings.variant).inc()
    return JSONResponse(
        error.body(request_id_var.get()), status_code=error.status, headers=error.headers
    )


async def on_api_error(request: Request, exc: Exception) -> Response:
    """One handler maps every ApiError to its status and JSON body."""
    assert isinstance(exc, ApiError)
    if exc.status >= 500 and exc.status != 503:
        log.error("request failed: %s", exc.message)
    return _error_response(request, exc)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    """Routing errors (404, 405) in the same error shape."""
    assert isinstance(exc, HTTPException)
    error: ApiError
    if exc.status_code == 404:
        error = NotFound(f"no route for {request.method} {request.url.path}")
    elif exc.status_code == 405:
        error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
    else:
        error = ApiError(str(exc.detail))
        error.status = exc.status_code  # type: ignore[misc]
    return _error_response(request, error)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """Anything else: logged with its stack trace, answered without it."""
    log.exception("unexpected error")
    return _error_response(request, InternalError("internal error; see the function's logs"))


class _AsgiEndpoint:
    """Wraps a plain ASGI callable so Route serves it at an exact path (no Mount redirect)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


StartHook = Callable[[AppState], Awaitable[None]]


async def load_model(state: AppState) -> None:
    """Verify and load the model, build the batcher, warm up, then mark the app ready."""
    s, m = state.settings, state.metrics
    t0 = time.perf_counter()
    classifier = await asyncio.to_thread(
        Classifier.load,
        s.model_dir,
        providers=s.providers,
        intra_op_threads=s.intra_op_threads,
        inter_op_threads=s.inter_op_threads,
        chunk_overlap=s.chunk_overlap,
        spinning=s.ort_spinning,
    )
    m.model_load.labels(s.variant).set(time.perf_counter() - t0)
    if s.warmup:
        # The first session.run allocates buffers and picks kernels, and the first trip to the
        # request thread pool starts its threads: pay both before traffic.
        await asyncio.to_thread(classifier.predict, ["warm-up text for the model."] * 2)
        await run_in_threadpool(classifier.encode, ["warm-up"])

    def on_run(stats: RunStats) -> None:
        m.batch_size.labels(s.variant).observe(stats.size)
        m.inference_duration.labels(s.variant).observe(stats.seconds)
        for wait in stats.queue_waits:
            m.queue_wait.labels(s.variant).observe(wait)

    batcher = Batcher(
        classifier.run,
        enabled=s.batching,
        max_size=s.batch_max_size,
        max_wait_s=s.batch_max_wait_ms / 1000,
        max_queued=s.max_queued_texts,
        retry_after_s=s.retry_after_s,
        on_run=on_run,
    )
    await batcher.start()
    state.classifier, state.batcher = classifier, batcher
    mf = classifier.manifest
    m.model_info.labels(s.variant, mf.name, mf.version, mf.precision).set(1)


async def startup(state: AppState, hooks: list[StartHook]) -> None:
    """Run the start hooks in order; the app is ready only when all succeeded."""
    s = state.settings
    try:
        for hook in hooks:
            await hook(state)
    except Exception as e:
        state.not_ready_reason = f"start-up failed: {e}"
        log.error("start-up failed, staying not ready: %s", e, exc_info=True)
        return
    state.ready = True
    state.metrics.model_ready.labels(s.variant).set(1)
    cold = time.time() - state.started_at
    state.metrics.cold_start.labels(s.variant).set(cold)
    log.info("ready", extra={"cold_start_seconds": round(cold, 3), "model_dir": str(s.model_dir)})


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    hooks: list[StartHook] | None = None,
    extra_routes: list[BaseRoute] | None = None,
) -> Starlette:
    """Build the app for one variant; `registry` defaults to a fresh one per app."""
    metrics = Metrics.create(registry if registry is not None else CollectorRegistry())
    state = AppState(settings=settings, metrics=metrics)
    start_hooks = [load_model, *(hooks or [])]
    # Imported here: both modules build on this one. CloudEvents at `/`, KServe v2 at `/v2/...`.
    from functions.sentiment import cloudevents, kserve

    if settings.k_sink:
        start_hooks.append(cloudevents.start_sink)
        state.closers.append(lambda: cloudevents.stop_sink(state, settings.shutdown_timeout_s))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        metrics.model_ready.labels(settings.variant).set(0)
        task = asyncio.create_task(startup(state, start_hooks), name="startup")
        try:
            yield
        finally:
            await shutdown(state, task)

    routes: list[BaseRoute] = [
        Route("/predict", predict, methods=["POST"]),
        Route("/health/liveness", liveness, methods=["GET"]),
        Route("/health/readiness", readiness, methods=["GET"]),
        Route("/model", model_info, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        *cloudevents.routes(),
        *kserve.routes(),
        *(extra_routes or []),
        Route("/metrics", _AsgiEndpoint(make_asgi_app(metrics.registry)), methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_exception,
            Exception: on_unexpected,
        },
    )
    app.state.kubesentiment = state
    if settings.vault_addr or settings.api_keys is not None:
        from shared import secrets  # only functions with Vault or API keys load this

        secrets_hook = secrets.install(app, settings, metrics)
        start_hooks.insert(1, secrets_hook)
        state.closers.append(secrets_hook.close)
    app.add_middleware(RequestContext, metrics=metrics, variant=settings.variant)
    return app


async def shutdown(state: AppState, startup_task: asyncio.Task[None]) -> None:
    """Refuse new work, let accepted work finish within the timeout, then release the model."""
    begin_drain(state)
    if not startup_task.done():
        startup_task.cancel()
    if state.batcher is not None:
        finished = await state.batcher.drain(state.settings.shutdown_timeout_s)
        if not finished:
            log.warning("shutdown timeout reached with work still queued")
        await state.batcher.close()
    for close in reversed(state.closers):
        await close()
    log.info("stopped")


def begin_drain(state: AppState) -> None:
    """Turn readiness false and refuse new inference work (SIGTERM, Knative runtime contract)."""
    if not state.draining:
        state.draining = True
        state.metrics.model_ready.labels(state.settings.variant).set(0)
        log.info("draining: readiness is now false")
