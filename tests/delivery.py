"""A small retrying sender that delivers CloudEvents the way a Knative Broker's dispatcher does.

It follows the Knative delivery spec (`DeliverySpec`: retry, backoffPolicy, backoffDelay, timeout,
deadLetterSink) for one subscriber:

- each event is posted in binary content mode; a 2xx is delivered, and a reply event in the
  response is forwarded to the reply sink (where a Broker puts replies: its own ingress);
- 404, 408, 409, 429, 5xx, a connection error and a timeout (`timeout`, ISO 8601, per attempt) are
  retried up to `retry` times, waiting `backoffDelay * n` (linear) or `backoffDelay * 2^n`
  (exponential) before retry n; any other status is final at once;
- an event not delivered is posted to the dead-letter sink with the extensions Knative adds:
  `knativeerrordest` (the subscriber), `knativeerrorcode` (the last HTTP status, when there was
  one) and `knativeerrordata` (the last response body, or the transport error, base64, at most
  1024 characters).

`Tally` counts what happened, for the harness's report.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent

RETRIED_STATUSES = frozenset({404, 408, 409, 429})
ERROR_DATA_MAX = 1024  # Knative truncates knativeerrordata to this length
_ISO_DURATION = re.compile(
    r"P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)


def iso8601_seconds(duration: str) -> float:
    """Seconds in an ISO 8601 duration of days, hours, minutes and seconds (PT0.2S, PT1M, P1D)."""
    match = _ISO_DURATION.fullmatch(duration)
    if match is None or duration in ("P", "PT") or duration.endswith("T"):
        raise ValueError(f"not an ISO 8601 duration: {duration!r}")
    parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
    return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]


@dataclass(frozen=True)
class DeliverySpec:
    """Knative's delivery spec for one subscription."""

    retry: int = 3
    backoff_policy: str = "exponential"  # or linear
    backoff_delay: str = "PT0.2S"
    timeout: str | None = None

    def delay_s(self, retry_number: int) -> float:
        """Seconds to wait before retry `retry_number` (1-based)."""
        base = iso8601_seconds(self.backoff_delay)
        if self.backoff_policy == "linear":
            return base * retry_number
        if self.backoff_policy == "exponential":
            return base * 2.0**retry_number
        raise ValueError(f"backoffPolicy must be linear or exponential, not {self.backoff_policy}")

    @property
    def timeout_s(self) -> float | None:
        """The per-attempt timeout in seconds, None for none."""
        return None if self.timeout is None else iso8601_seconds(self.timeout)


@dataclass
class Tally:
    """What the sender did: events, attempts, retries and how attempts failed, outcomes."""

    events: int = 0
    attempts: int = 0
    retries: int = 0
    timeouts: int = 0
    refused: int = 0  # no connection (the subscriber is down)
    broken: int = 0  # the connection dropped mid-request (the subscriber died)
    statuses: Counter[int] = field(default_factory=Counter)
    replied: int = 0
    dead_lettered: int = 0


Sleep = Callable[[float], Awaitable[None]]


class Dispatcher:
    """Delivers events to one subscriber per a DeliverySpec (see the module docstring)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        subscriber: str,
        spec: DeliverySpec,
        *,
        reply_sink: str,
        dead_letter_sink: str,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.client = client
        self.subscriber = subscriber
        self.spec = spec
        self.reply_sink = reply_sink
        self.dead_letter_sink = dead_letter_sink
        self.tally = Tally()
        self._sleep = sleep

    async def dispatch(self, event: CloudEvent) -> bool:
        """Deliver one event; True when the subscriber took it, False when dead-lettered."""
        self.tally.events += 1
        message = ce_http.to_binary_event(event)
        status: int | None = None
        data = b""
        for attempt in range(self.spec.retry + 1):
            if attempt:
                self.tally.retries += 1
                await self._sleep(self.spec.delay_s(attempt))
            self.tally.attempts += 1
            try:
                response = await self.client.post(
                    self.subscriber,
                    headers=message.headers,
                    content=message.body,
                    timeout=self.spec.timeout_s,
                )
            except httpx.TimeoutException as e:
                self.tally.timeouts += 1
                status, data = None, f"timeout: {type(e).__name__}".encode()
                continue
            except httpx.TransportError as e:
                if isinstance(e, httpx.ConnectError):
                    self.tally.refused += 1
                else:
                    self.tally.broken += 1
                status, data = None, f"{type(e).__name__}: {e}".encode()
                continue
            self.tally.statuses[response.status_code] += 1
            if response.is_success:
                if response.content or any(k.startswith("ce-") for k in response.headers):
                    await self._forward_reply(response)
                self.tally.replied += 1
                return True
            status, data = response.status_code, response.content
            if status < 500 and status not in RETRIED_STATUSES:
                break
        await self._dead_letter(message, status, data)
        return False

    async def _forward_reply(self, response: httpx.Response) -> None:
        # The reply goes where a Broker sends replies (its ingress): the reply sink, always up.
        headers = {
            k: v for k, v in response.headers.items() if k.startswith("ce-") or k == "content-type"
        }
        answer = await self.client.post(self.reply_sink, headers=headers, content=response.content)
        answer.raise_for_status()

    async def _dead_letter(
        self, message: ce_http.HTTPMessage, status: int | None, data: bytes
    ) -> None:
        headers = dict(message.headers)
        headers["ce-knativeerrordest"] = self.subscriber
        if status is not None:
            headers["ce-knativeerrorcode"] = str(status)
        headers["ce-knativeerrordata"] = base64.b64encode(data).decode()[:ERROR_DATA_MAX]
        answer = await self.client.post(
            self.dead_letter_sink, headers=headers, content=message.body
        )
        answer.raise_for_status()
        self.tally.dead_lettered += 1
