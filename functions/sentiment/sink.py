"""Sends result CloudEvents to `K_SINK`, in the background, with retries and exponential backoff.

Knative's SinkBinding (and ContainerSource) inject `K_SINK`; the URL is only ever read from the
settings, never from a request, so a caller cannot make the function post anywhere else. Delivery
follows the rules a Knative Broker applies to its own subscribers: 2xx is delivered; 408, 409, 429
and 5xx (and connection errors) are retried with exponential backoff and full jitter
(`shared.backoff`: Retry-After is a floor); any other 4xx is final. Ten attempts by default: full
jitter halves the expected wait of each retry, so five (3 s of patience without jitter) would give
up on a sink that is away for a second or two; ten wait about 13 s on average, 26 s at most.
Each event is counted once in `kubesentiment_events_sent_total{outcome}` as `success` or
`failure` (given up after its retries, or cancelled by the shutdown deadline).

Memory is bounded: at most SINK_MAX_PENDING events are accepted and not yet delivered or given up
(`kubesentiment_sink_pending`). A CloudEvent request takes its place (`reserve`) before anything is
computed; when none is left it is refused with 503 and Retry-After (`SinkFull`, counted in
`kubesentiment_rejected_requests_total{reason="sink_full"}`), so the Broker redelivers it later and
no result is ever dropped without a count.

With tracing on, each delivery attempt is an httpx client span (shared/tracing.py instruments
httpx) whose parent is the event's own trace context (its `traceparent` attribute, which the
binary content mode also sends as `ce-traceparent`): the K_SINK copy of a reply hangs under the
span that computed it, even though it is delivered after the response has gone.

The same sender, with its own counter and gauge, carries the sampled payload log
(`payload_log`): there nothing may block or fail a request, so an event that finds no place is
dropped (`offer` returns False) and counted by the caller instead of refusing the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http as ce_http
from opentelemetry import context as otel_context
from prometheus_client import Counter, Gauge

from functions.sentiment.core import AppState
from shared.errors import SinkFull
from shared.metrics import Metrics
from shared.tracing import extract_event_context

if TYPE_CHECKING:  # httpx costs ~80 ms of cold start; only a function with K_SINK needs it
    import httpx

log = logging.getLogger("kubesentiment.sink")

# Knative Eventing delivery: these statuses are retried, other 4xx are not.
RETRIED_STATUSES = frozenset({404, 408, 409, 429})

Sleep = Callable[[float], Awaitable[None]]
Send = Callable[[BaseCloudEvent], "asyncio.Task[bool]"]


class EventSink:
    """Posts events to one sink URL from background tasks, at most `max_pending` at a time;
    `close()` waits for them."""

    def __init__(
        self,
        url: str,
        metrics: Metrics,
        variant: str,
        *,
        max_pending: int = 1024,
        retry_after_s: int = 1,
        attempts: int = 10,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        sent: Counter | None = None,
        pending: Gauge | None = None,
        name: str = "K_SINK",
    ) -> None:
        """`sent` and `pending` default to the K_SINK metrics (events_sent, sink_pending);
        `name` is the setting that names the sink, for the log."""
        self.url = url
        self.name = name
        self.max_pending = max_pending
        self.retry_after_s = retry_after_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sent = sent if sent is not None else metrics.events_sent
        self._variant = variant
        self._sleep = sleep
        import httpx

        from shared.backoff import Backoff  # like httpx: only a function with a sink loads it

        self.backoff = Backoff(backoff_s, max_backoff_s, rng or random.Random())
        self._client = httpx.AsyncClient(timeout=timeout_s, transport=transport)
        self._http_error = httpx.HTTPError
        self._tasks: set[asyncio.Task[bool]] = set()
        self._reserved = 0
        self._gauge = (pending if pending is not None else metrics.sink_pending).labels(variant)
        self._gauge.set(0)

    @property
    def pending(self) -> int:
        """Places taken: events being computed or delivered, not yet delivered or given up."""
        return len(self._tasks) + self._reserved

    @contextlib.contextmanager
    def reserve(self) -> Iterator[Send]:
        """Take a place for one event before computing it; SinkFull (503) when none is left.

        Yields the function that sends the event (it returns the delivery's task, whose result
        says whether the sink accepted it); a place not used by the end of the block (the request
        failed) is given back.
        """
        if self.pending >= self.max_pending:
            raise SinkFull(
                f"{self.pending} result events are waiting for {self.name} (SINK_MAX_PENDING); "
                "retry later",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self._reserved += 1
        self._gauge.set(self.pending)
        used = False

        def send(event: BaseCloudEvent) -> asyncio.Task[bool]:
            nonlocal used
            if used:
                raise RuntimeError("one reservation sends one event")
            used = True
            self._reserved -= 1
            return self._start(event)

        try:
            yield send
        finally:
            if not used:
                self._reserved -= 1
                self._gauge.set(self.pending)

    def send(self, event: BaseCloudEvent) -> None:
        """Deliver `event` in the background (binary content mode), within the bound."""
        with self.reserve() as send:
            send(event)

    def offer(self, event: BaseCloudEvent) -> bool:
        """Deliver `event` in the background if a place is free; False (nothing sent) when
        `max_pending` events are already waiting: the caller counts the drop."""
        if self.pending >= self.max_pending:
            return False
        self._start(event)
        return True

    def _start(self, event: BaseCloudEvent) -> asyncio.Task[bool]:
        task = asyncio.create_task(self.deliver(event), name="sink-send")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        self._gauge.set(self.pending)
        return task

    def _done(self, task: asyncio.Task[bool]) -> None:
        self._tasks.discard(task)
        self._gauge.set(self.pending)

    async def deliver(self, event: BaseCloudEvent) -> bool:
        """Post one event with retries; True when the sink accepted it."""
        # The attempts' client spans continue the event's trace (a no-op with tracing off).
        parent = extract_event_context(event.get_attributes())
        token = otel_context.attach(parent) if parent is not None else None
        try:
            return await self._deliver(event)
        finally:
            if token is not None:
                otel_context.detach(token)

    async def _deliver(self, event: BaseCloudEvent) -> bool:
        message = ce_http.to_binary_event(event)
        ok, reason = False, "no attempt made"
        for attempt in range(1, self.attempts + 1):
            retry_after: str | None = None
            try:
                response = await self._client.post(
                    self.url, headers=message.headers, content=message.body
                )
            except self._http_error as e:
                reason = f"{type(e).__name__}: {e}"
            else:
                if response.is_success:
                    ok = True
                    break
                reason = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code not in RETRIED_STATUSES:
                    break
                retry_after = response.headers.get("retry-after")
            if attempt < self.attempts:
                delay = self.backoff.delay(attempt - 1, retry_after)
                log.info(
                    "%s delivery failed (%s), retry %d in %.2fs", self.name, reason, attempt, delay
                )
                await self._sleep(delay)
        if not ok:
            log.warning("gave up sending event %s to %s: %s", event.get_id(), self.name, reason)
        self._sent.labels("success" if ok else "failure", self._variant).inc()
        return ok

    async def close(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for deliveries in progress, then cancel the rest."""
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in late:
                task.cancel()
            if late:
                log.warning("%d %s deliveries cancelled at shutdown", len(late), self.name)
                self._sent.labels("failure", self._variant).inc(len(late))
                await asyncio.gather(*late, return_exceptions=True)
        await self._client.aclose()


async def start_sink(state: AppState) -> None:
    """Start hook: when K_SINK is set, result events are also posted there."""
    url = state.settings.k_sink
    if url:
        state.extras["sink"] = EventSink(
            url,
            state.metrics,
            state.settings.variant,
            max_pending=state.settings.sink_max_pending,
            retry_after_s=state.settings.retry_after_s,
        )
        log.info("result events also go to K_SINK")


async def stop_sink(state: AppState, timeout_s: float) -> None:
    """Let sink deliveries in progress finish (up to `timeout_s`), then close the client."""
    sink: EventSink | None = state.extras.pop("sink", None)
    if sink is not None:
        await sink.close(timeout_s)
