"""Redelivered CloudEvents answered, not recomputed: at-least-once in, one answer out.

Knative Eventing delivers at least once: a Broker retries an event whose answer timed out or
failed, and its retry may reach the function while the first delivery is still being computed or
after it was answered. An event is named by its (`source`, `id`); its content by a sha256 over
what changes the answer (`type`, `subject`, `datacontenttype` and the data, canonical JSON), so a
redelivery in the other content mode is still the same event. For each delivery:

1. (source, id) being computed now, same content: the delivery joins that computation (`joined`);
2. (source, id) answered within EVENT_REPLAY_TTL_SECONDS, same content: the stored reply is sent
   again, same id and same body (`replayed`);
3. (source, id) seen with other content (a producer reused an id): computed afresh and stored in
   place of the old answer, never served the stale one (`conflict`);
4. otherwise computed; the reply is kept, at most EVENT_REPLAY_SIZE replies (least recently used
   go first), as compact JSON.

Each computation runs as its own task, so a sender that gives up (its timeout is shorter than the
batch) does not cancel the work its redelivery will join or find stored. Only complete answers are
kept: a reply with per-item errors that no retry changes (`invalid_input`) is replayed like any
other, while an error of the whole event (4xx, 5xx, a deadline) and a reply with per-item
`deadline_exceeded` entries are not stored, so a retry computes them again. Outcomes are counted
in `kubesentiment_event_redeliveries_total{outcome}`. Nothing survives a restart: a redelivery
after one is computed again, and the reply id, derived from (source, id), is the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from functions.sentiment.cache import ResponseCache
from functions.sentiment.core import AppState
from shared.errors import DeadlineExceeded

OUTCOMES = ("replayed", "joined", "conflict")
EXTRAS_KEY = "redeliveries"
Compute = Callable[[], Awaitable[CloudEvent]]
Count = Callable[[str], None]
_FORMAT = JSONFormat()


def content_digest(event: BaseCloudEvent) -> bytes:
    """sha256 of what changes an event's answer: type, subject, datacontenttype and data."""
    data: Any = event.get_data()
    if isinstance(data, bytes):
        data = ["bytes", hashlib.sha256(data).hexdigest()]
    head = [event.get_type(), event.get_subject(), event.get_datacontenttype()]
    blob = json.dumps([head, data], sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("ascii")).digest()


@dataclass(eq=False)
class Answer:
    """One event's reply: its content digest, the reply (compact JSON once complete), until when
    it is replayed, and whether it was handed to K_SINK (and not given up since)."""

    digest: bytes
    body: bytes = b""
    expires: float = 0.0
    handed: bool = False

    def event(self) -> CloudEvent:
        """The stored reply, as a new event object with the same attributes and data."""
        reply = _FORMAT.read(CloudEvent, self.body)
        assert isinstance(reply, CloudEvent)
        return reply

    def claim_sink(self) -> bool:
        """True once for the caller that should hand the reply to K_SINK."""
        if self.handed:
            return False
        self.handed = True
        return True

    def sink_done(self, task: asyncio.Task[bool]) -> None:
        """K_SINK delivery callback: a delivery that gave up lets a redelivery hand it again."""
        if task.cancelled() or task.exception() is not None or not task.result():
            self.handed = False


@dataclass(eq=False)
class _Flight:
    answer: Answer
    task: asyncio.Task[CloudEvent]
    registered: bool = True


class Redeliveries:
    """Joins, replays or computes each delivery of a CloudEvent (see the module docstring)."""

    def __init__(
        self,
        size: int,
        ttl_s: float,
        *,
        count: Count | None = None,
        keep: Callable[[CloudEvent], bool] | None = None,
        entries: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`count(outcome)` counts replayed/joined/conflict; `keep(reply)` says whether a reply
        may be stored; `entries` is a gauge of stored replies."""
        # The response cache's LRU, with its hit-rate guard off (min_hit_rate 0 never trips).
        self._stored: ResponseCache[Answer] = ResponseCache(
            size, b"redeliveries", min_hit_rate=0.0, window=1, entries=entries
        )
        self.ttl_s = ttl_s
        self._count = count or (lambda outcome: None)
        self._keep = keep or (lambda reply: True)
        self._clock = clock
        self._flights: dict[bytes, _Flight] = {}

    def __len__(self) -> int:
        return len(self._stored)

    @property
    def in_flight(self) -> int:
        """Events being computed now that a redelivery could join."""
        return len(self._flights)

    async def answer(
        self, source: str, event_id: str, digest: bytes, compute: Compute
    ) -> tuple[CloudEvent, Answer]:
        """The reply to one delivery of (source, event_id) with content `digest`, and its Answer
        (for the K_SINK hand-over); `compute()` runs only when no answer can be reused."""
        key = self._stored.key(source, event_id)  # attribute values hold no NUL: unambiguous
        flight = self._flights.get(key)
        if flight is not None:
            if flight.answer.digest == digest:
                self._count("joined")
                return await asyncio.shield(flight.task), flight.answer
            self._count("conflict")
            return await self._compute(key, digest, compute, register=False)
        stored = self._stored.get(key)
        if stored is not None and stored.expires > self._clock():
            if stored.digest == digest:
                self._count("replayed")
                return stored.event(), stored
            self._count("conflict")
        return await self._compute(key, digest, compute, register=True)

    async def _compute(
        self, key: bytes, digest: bytes, compute: Compute, *, register: bool
    ) -> tuple[CloudEvent, Answer]:
        answer = Answer(digest)
        # Its own task: a caller that goes away does not cancel what a redelivery will join.
        task = asyncio.ensure_future(compute())
        flight = _Flight(answer, task, registered=register)
        if register:
            self._flights[key] = flight
        task.add_done_callback(lambda t: self._landed(key, flight, t))
        return await asyncio.shield(task), answer

    def _landed(self, key: bytes, flight: _Flight, task: asyncio.Task[CloudEvent]) -> None:
        if flight.registered and self._flights.get(key) is flight:
            del self._flights[key]
        if task.cancelled() or task.exception() is not None:
            return  # not stored: a retry computes it again (the error reached every waiter)
        reply = task.result()
        if not self._keep(reply):
            return
        answer = flight.answer
        answer.body = _FORMAT.write(reply)
        answer.expires = self._clock() + self.ttl_s
        self._stored.put(key, answer)


def _complete(reply: CloudEvent) -> bool:
    """Whether a reply may be replayed: no text of it missed a deadline a retry could meet."""
    data = reply.get_data()
    results = data.get("results", []) if isinstance(data, dict) else []
    return not any((r.get("error") or {}).get("type") == DeadlineExceeded.type for r in results)


def redeliveries(state: AppState) -> Redeliveries | None:
    """The function's redelivery cache (made on first use); None when EVENT_REPLAY_SIZE is 0."""
    s, m = state.settings, state.metrics
    if s.event_replay_size == 0:
        return None
    found: Redeliveries | None = state.extras.get(EXTRAS_KEY)
    if found is None:
        counted = {o: m.event_redeliveries.labels(o, s.variant) for o in OUTCOMES}
        found = state.extras[EXTRAS_KEY] = Redeliveries(
            s.event_replay_size,
            s.event_replay_ttl_s,
            count=lambda outcome: counted[outcome].inc(),
            keep=_complete,
            entries=m.event_replay_entries.labels(s.variant),
        )
    return found
