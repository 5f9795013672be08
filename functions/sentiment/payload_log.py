"""Sampled payload logging: request texts and their predictions, as CloudEvents, for offline study.

With PAYLOAD_LOG_SAMPLE > 0 a pure ASGI middleware draws once per request; a request it picks
gets a list in `monitoring.payload_record`, which `core.classify` fills with the texts it was given
and the predictions it returned, whichever protocol (`/predict`, `/v2`, CloudEvents) asked. Once
the response has been sent, those become one event of type `dev.kubesentiment.sentiment.logged`
(binary content mode) for PAYLOAD_LOG_SINK, carrying the request id as the `requestid` extension.
Its id derives from what it logs (`shared.eventid`): for a CloudEvent request, the request event's
source and id; for an HTTP request, this function's event source and the request id (X-Request-ID
when the client sent one, so a client's retry of a request is logged under the same id).

Nothing here can block or fail a request: the event goes to the K_SINK sender's machinery
(`sink.EventSink`, background tasks with retries) with its own bound, PAYLOAD_LOG_MAX_PENDING; an
event that finds the queue full is dropped, and every event is counted once in
`kubesentiment_payload_log_events_total{outcome}`: success, failure (the sink refused it or was
down through the retries, or the shutdown deadline cancelled it) or dropped. Events still in
flight at SIGTERM are flushed within what is left of the shutdown deadline. With
PAYLOAD_LOG_HASH_TEXTS each text is replaced by the sha256 (hex) of its UTF-8 bytes. With
sampling off the middleware is not installed and httpx is never imported. With tracing on the
event carries the request's trace context (`traceparent`, the CloudEvents distributed-tracing
extension), and its delivery is a client span in that trace.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cloudevents.core.v1.event import CloudEvent
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from functions.sentiment.context import route_template
from functions.sentiment.core import AppState
from functions.sentiment.lifecycle import StartHook, remaining
from functions.sentiment.monitoring import Record, event_origin, payload_record
from functions.sentiment.schemas import REQUEST_ID_EXTENSION
from shared.eventid import derived_id
from shared.logs import request_id_var
from shared.tracing import inject_event_context

if TYPE_CHECKING:
    from functions.sentiment.sink import EventSink

log = logging.getLogger("kubesentiment.payload_log")

LOGGED_TYPE = "dev.kubesentiment.sentiment.logged"
EXTRAS_KEY = "payload_log"
# A payload event is worth less than a result: fewer retries, shorter waits than K_SINK's.
ATTEMPTS = 3
BACKOFF_S = 0.2
MAX_BACKOFF_S = 2.0
TIMEOUT_S = 5.0


def sampled(rate: float, draw: Callable[[], float] = random.random) -> bool:
    """Whether to log this request: each one independently with probability `rate`."""
    if rate <= 0.0:
        return False
    return rate >= 1.0 or draw() < rate


def text_sha256(text: str) -> str:
    """The sha256 (hex) of a text's UTF-8 bytes (a lone surrogate kept as its own bytes)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def items(records: Sequence[Record], *, hash_texts: bool) -> list[dict[str, Any]]:
    """One entry per classified text, in order: the text (or its sha256) and its prediction."""
    out: list[dict[str, Any]] = []
    for texts, predictions in records:
        for text, p in zip(texts, predictions, strict=True):
            entry: dict[str, Any] = (
                {"text_sha256": text_sha256(text)} if hash_texts else {"text": text}
            )
            entry.update(
                label=p.label,
                score=p.score,
                probabilities=p.probabilities,
                truncated=p.truncated,
                tokens=p.tokens,
            )
            out.append(entry)
    return out


def build_event(
    state: AppState,
    records: Sequence[Record],
    *,
    route: str,
    status: int,
    request_id: str | None,
    origin: tuple[str, str] | None = None,
) -> CloudEvent:
    """The `dev.kubesentiment.sentiment.logged` event for one request's records; `origin` is the
    (source, id) of the CloudEvent the request carried, if it carried one."""
    s = state.settings
    model: dict[str, Any] = {}
    if state.classifier is not None:
        mf = state.classifier.manifest
        model = {"model": mf.name, "model_version": mf.version}
    attributes: dict[str, Any] = {
        "type": LOGGED_TYPE,
        "source": s.event_source,
        "subject": route,
        "datacontenttype": "application/json",
    }
    if request_id:
        attributes[REQUEST_ID_EXTENSION] = request_id
    named = origin or ((s.event_source, request_id) if request_id else None)
    if named is not None:
        attributes["id"] = derived_id(*named, LOGGED_TYPE, s.variant)
    inject_event_context(attributes)  # the request's span, when tracing is on
    data = {
        "request_id": request_id,
        "route": route,
        "status": status,
        **model,
        "variant": s.variant,
        "texts_hashed": s.payload_log_hash_texts,
        "items": items(records, hash_texts=s.payload_log_hash_texts),
    }
    return CloudEvent(attributes, data)


class PayloadLogger:
    """ASGI middleware: samples requests and emits their records after the response."""

    def __init__(
        self, app: ASGIApp, state: AppState, draw: Callable[[], float] = random.random
    ) -> None:
        self.app = app
        self.state = state
        self.rate = state.settings.payload_log_sample
        self.draw = draw
        metrics, variant = state.metrics, state.settings.variant
        self.dropped = metrics.payload_log_events.labels("dropped", variant)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not sampled(self.rate, self.draw):
            await self.app(scope, receive, send)
            return
        records: list[Record] = []
        origin: dict[str, str] = {}
        token = payload_record.set(records)
        origin_token = event_origin.set(origin)
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            payload_record.reset(token)
            event_origin.reset(origin_token)
            if records:
                named = (origin["source"], origin["id"]) if origin else None
                self.emit(scope, status, records, named)

    def emit(
        self,
        scope: Scope,
        status: int,
        records: Sequence[Record],
        origin: tuple[str, str] | None = None,
    ) -> None:
        """Queue the event for the sink; never raises (a failure is a counted drop)."""
        try:
            sink: EventSink | None = self.state.extras.get(EXTRAS_KEY)
            if sink is None:
                raise RuntimeError("the payload log sender is not running")
            event = build_event(
                self.state,
                records,
                route=route_template(scope),
                status=status,
                request_id=request_id_var.get(),
                origin=origin,
            )
            if sink.offer(event):
                return
        except Exception:
            log.warning("payload event not queued", exc_info=True)
        self.dropped.inc()


class Start:
    """Start hook: the background sender for PAYLOAD_LOG_SINK (httpx is imported only here)."""

    step = "starting the payload log sender"

    async def __call__(self, state: AppState) -> None:
        from functions.sentiment.sink import EventSink

        s, m = state.settings, state.metrics
        assert s.payload_log_sink is not None  # Settings.check
        state.extras[EXTRAS_KEY] = EventSink(
            s.payload_log_sink,
            m,
            s.variant,
            max_pending=s.payload_log_max_pending,
            attempts=ATTEMPTS,
            backoff_s=BACKOFF_S,
            max_backoff_s=MAX_BACKOFF_S,
            timeout_s=TIMEOUT_S,
            sent=m.payload_log_events,
            pending=m.payload_log_pending,
            name="PAYLOAD_LOG_SINK",
        )
        log.info("payload logging on", extra={"sample": s.payload_log_sample})


async def stop(state: AppState, timeout_s: float) -> None:
    """Let payload events in flight finish (up to `timeout_s`), then close the client."""
    sink: EventSink | None = state.extras.pop(EXTRAS_KEY, None)
    if sink is not None:
        await sink.close(timeout_s)


def install(app: Starlette, state: AppState, hooks: list[StartHook]) -> None:
    """Wire payload logging into an app when PAYLOAD_LOG_SAMPLE > 0: the middleware (add it
    inside the request-context middleware, which sets the request id), the sender's start hook
    and its flush within the shutdown deadline."""
    if state.settings.payload_log_sample <= 0:
        return
    hooks.append(Start())
    state.closers.append(lambda: stop(state, remaining(state)))
    app.add_middleware(PayloadLogger, state=state)
