"""The request core shared by the three protocols: state, admission, classify, error mapping.

The JSON (`/predict`), CloudEvents (`POST /`) and KServe v2 (`/v2/...`) adapters parse their own
bodies and shape their own answers; everything between is here, once: readiness and admission
(503/429 decided before a body is read), tokenization and the batcher, the prediction's JSON shape,
and the mapping of an error to its status, body shape, headers and metrics. Dependencies point one
way: adapters -> core -> model/batching/context; nothing here imports an adapter or the app.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from functions.sentiment import monitoring
from functions.sentiment.batching import Batcher, Outcome
from functions.sentiment.context import route_template, timings, usage
from functions.sentiment.lanes import NORMAL, settle
from shared.auth import KEY_SCOPE
from shared.config import Settings
from shared.errors import ApiError, DeadlineExceeded, InternalError, NotReady, Overloaded
from shared.logs import request_id_var
from shared.metrics import Metrics
from shared.process import process_start_time

if TYPE_CHECKING:  # the model module imports ONNX Runtime: the preload thread does that
    from functions.sentiment.dedup import Dedup
    from functions.sentiment.model import Classifier, Prediction

log = logging.getLogger("kubesentiment.app")
tracer = trace.get_tracer("kubesentiment")
PROCESS_START = process_start_time()
# Inputs up to this many characters are tokenized on the event loop (well under 0.3 ms).
INLINE_TOKENIZE_CHARS = 512
# Routes under this prefix speak the Open Inference Protocol, whose error body is {"error": "..."}.
V2_PREFIX = "/v2"


@dataclass
class AppState:
    """Everything a request handler needs, built once by the lifespan."""

    settings: Settings
    metrics: Metrics
    started_at: float = PROCESS_START
    classifier: Classifier | None = None
    batcher: Batcher | None = None
    # Shares identical texts' computations and holds the response cache (None: DEDUP and cache off).
    dedup: Dedup[Prediction] | None = None
    ready: bool = False
    draining: bool = False
    not_ready_reason: str = "the model is loading"
    in_flight: int = 0
    # False once start-up outlived STARTUP_TIMEOUT_SECONDS: liveness then fails (lifecycle).
    live: bool = True
    # time.monotonic() by which every shutdown step must be done; set when draining begins.
    drain_deadline: float | None = None
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


Adapter = Callable[[Request, AppState], Awaitable[Response]]


def inference(adapter: Adapter) -> Callable[[Request], Awaitable[Response]]:
    """An inference endpoint: readiness (503) and admission (429) are decided before the adapter
    reads a byte of the body, so a refused request costs no body read or parse."""

    async def endpoint(request: Request) -> Response:
        state = app_state(request)
        state.require_ready()
        async with state.admit():
            if KEY_SCOPE not in request.scope:
                return await adapter(request, state)
            # A request with an API key: its quota (429 before the body is read) and usage.
            from functions.sentiment.usage import metered

            return await metered(request, state, adapter)

    endpoint.__doc__ = adapter.__doc__
    endpoint.__name__ = adapter.__name__
    return endpoint


async def classify(
    state: AppState,
    texts: list[str],
    *,
    long_text: str | None = None,
    observe: int | None = None,
    deadline: float | None = None,
    priority: int = NORMAL,
) -> list[Prediction]:
    """Tokenize (long inputs off the event loop), run through the batcher, record metrics/spans.

    Prediction metrics count only the first `observe` texts (all by default): an explanation's
    masked variants share the submit but are not predictions anyone asked for.

    `deadline` (a time.monotonic() instant; MAX_REQUEST_TIMEOUT_SECONDS from now when None) and
    `priority` (a lanes lane) go to the batcher: texts not run by the deadline raise
    DeadlineExceeded, whose `partial` holds the other texts' predictions when some were run."""
    # Only an endpoint's entry refuses work while draining: a request it already accepted (body
    # read, maybe queued) still completes after SIGTERM (Knative runtime contract).
    classifier, batcher = state.classifier, state.batcher
    if classifier is None or batcher is None:
        raise NotReady(f"not ready: {state.not_ready_reason}", headers=state.retry_after)
    option = long_text or state.settings.long_text
    chunk = option == "chunk"
    variant = state.settings.variant
    m = state.metrics
    if deadline is None:
        deadline = time.monotonic() + state.settings.max_request_timeout_s
    results: list[Any]  # a Prediction per text, or DeadlineExceeded for a text not run in time
    if state.dedup is None:
        results = await _compute(
            state, classifier, batcher, texts, chunk=chunk, deadline=deadline, priority=priority
        )
    else:  # identical texts computed once, maybe cached (functions/sentiment/dedup.py)
        compute = functools.partial(
            _compute, state, classifier, batcher, chunk=chunk, deadline=deadline, priority=priority
        )
        results = await state.dedup.run(
            option, texts, compute, deadline=deadline, rank=priority, expired=_late_text
        )
    labels = classifier.labels
    try:
        predictions: list[Prediction] = settle(results)  # raises DeadlineExceeded (maybe partial)
    except DeadlineExceeded as e:
        if e.partial is not None:  # the texts run in time are answered: watch them too
            done = [(t, p) for t, p in zip(texts[:observe], e.partial, strict=False) if p]
            ran_texts, ran = [t for t, _ in done], [p for _, p in done]
            monitoring.observe(state.extras, m, variant, labels, ran_texts, ran)
        raise
    # Counts, score/confidence/token histograms by label; texts kept for a payload-logged request.
    monitoring.observe(state.extras, m, variant, labels, texts[:observe], predictions[:observe])
    used = usage.get()
    if used is not None:  # a request with an API key: its usage is counted per key id
        used.texts += len(predictions[:observe])
        used.tokens += sum(p.tokens for p in predictions[:observe])
    return predictions


async def _compute(
    state: AppState,
    classifier: Classifier,
    batcher: Batcher,
    texts: list[str],
    *,
    chunk: bool,
    deadline: float,
    priority: int,
) -> list[Any]:
    """Tokenize (long inputs off the event loop) and run through the batcher: one submit."""
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
    windows = [e.windows for e in encoded]
    try:
        outcome = await batcher.submit(windows, deadline=deadline, priority=priority)
    except DeadlineExceeded as e:
        if e.partial is None:
            raise
        # Some texts were run in time: theirs are predictions, the others DeadlineExceeded.
        return [
            _late_text() if p is None else classifier.combine(enc, p)
            for enc, p in zip(encoded, e.partial, strict=True)
        ]
    _record_spans(outcome)
    used = usage.get()
    if used is not None:
        used.cpu_seconds += outcome.cpu_seconds
    predictions = [
        classifier.combine(e, p) for e, p in zip(encoded, outcome.probabilities, strict=True)
    ]
    t = timings.get()
    if t is not None:
        t["tokenize"] = t.get("tokenize", 0.0) + tokenize_s
        t["queue"] = t.get("queue", 0.0) + outcome.queue_seconds
        t["inference"] = t.get("inference", 0.0) + outcome.inference_seconds
    return predictions


def _late_text() -> Any:
    return DeadlineExceeded("the deadline passed before this text was run")


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


def error_body(template: str, error: ApiError, request_id: str | None) -> dict[str, Any]:
    """The error body in the shape of the route's protocol: v2 clients parse {"error": "..."}."""
    if template == V2_PREFIX or template.startswith(V2_PREFIX + "/"):
        return {"error": error.message}
    return error.body(request_id)


def error_response(state: AppState, scope: Scope, error: ApiError) -> Response:
    """The one mapping of an error to status, body, headers and metrics, for every route."""
    template = route_template(scope)
    variant = state.settings.variant
    state.metrics.errors.labels(template, error.type, variant).inc()
    if error.status in (429, 503):
        # overloaded, not_ready or shutting_down, or a refusal's own type (sink_full).
        reason = error.type
        if error.type == NotReady.type and state.draining:
            reason = "shutting_down"
        state.metrics.rejected.labels(template, reason, variant).inc()
    return JSONResponse(
        error_body(template, error, request_id_var.get()),
        status_code=error.status,
        headers=error.headers,
    )


def unexpected_response(state: AppState, scope: Scope, exc: BaseException) -> Response:
    """A bug: one log line with the traceback and the request id, a 500 without either."""
    log.error("unexpected error", exc_info=(type(exc), exc, exc.__traceback__))
    return error_response(state, scope, InternalError("internal error; see the function's logs"))
