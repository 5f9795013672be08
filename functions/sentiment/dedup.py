"""Duplicate work done once: identical texts in a batch and across requests in flight share one
computation, and an optional response cache answers repeats without one.

A text's key is (option, text), where the option names everything besides the text that changes
the answer (the long-text mode); a process serves one model. For each request:

1. duplicates inside the request collapse to one text, whose answer fans back out in order;
2. with a cache (CACHE_SIZE > 0), a text answered before is served from it;
3. a text already being computed for another request in flight is joined: the request awaits that
   computation instead of queuing the text again;
4. the remaining texts are computed together (one submit to the batcher, as before) and registered
   as in flight for later requests to join.

The computation runs as its own task, so a request that goes away (client disconnected) does not
cancel what other requests await; it is cancelled only when nobody awaits it any more. An error of
the computation (429, 503...) reaches every request awaiting it.

Deadlines and priorities: a request joins a computation in flight only when that computation is
at least as urgent (its priority rank no lower); otherwise the request computes the text itself at
its own priority, and later requests join the newer computation. The computation runs under the
deadline of the request that started it. A joined request enforces its own deadline while it
waits (a text whose shared answer is not there by then gets the caller's `expired()` answer), and
when the shared computation ran out of time (the `expired()` kind of error) while the joined
request still has time, the request computes those texts again itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from functions.sentiment.cache import ResponseCache, model_fingerprint
from shared.config import Settings
from shared.metrics import Metrics
from shared.modeldir import Manifest

R = TypeVar("R")
Compute = Callable[[list[str]], Awaitable[list[R]]]


@dataclass(frozen=True)
class _Failed:
    """The whole computation failed: every text of it re-raises this error to its waiters."""

    error: BaseException


@dataclass(eq=False)
class _Run:
    """One computation (one task) and how many requests await any of its texts."""

    deadline: float | None
    rank: int
    waiters: int = 0
    task: asyncio.Task[None] | None = None
    keys: list[Hashable] = field(default_factory=list)


@dataclass(eq=False)
class _Entry(Generic[R]):
    future: asyncio.Future[R | _Failed]
    run: _Run


class Dedup(Generic[R]):
    """Shares the computation of identical texts; optionally caches results."""

    def __init__(
        self,
        *,
        share: bool = True,
        cache: ResponseCache[R] | None = None,
        on_shared: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.share = share
        self.cache = cache
        self._on_shared = on_shared  # (scope, texts): scope is batch or in_flight
        self._clock = clock
        self._inflight: dict[Hashable, _Entry[R]] = {}

    @property
    def in_flight(self) -> int:
        """Texts being computed now that a request could join."""
        return len(self._inflight)

    async def run(
        self,
        option: str,
        texts: Sequence[str],
        compute: Compute[R],
        *,
        deadline: float | None = None,
        rank: int = 0,
        expired: Callable[[], R] | None = None,
    ) -> list[R]:
        """Results for `texts` in order; `compute` is called with the texts nobody else computes.

        `deadline` is on this object's clock; `rank` orders priorities (lower is more urgent);
        `expired()` answers a joined text whose shared result missed the deadline.
        """
        if not self.share:
            return await self._unshared(option, texts, compute)
        index: dict[str, int] = {}
        positions = [index.setdefault(t, len(index)) for t in texts]
        uniques = list(index)
        if self._on_shared is not None and len(uniques) < len(texts):
            self._on_shared("batch", len(texts) - len(uniques))
        results: list[Any] = [None] * len(uniques)
        cache_keys: list[bytes | None] = [None] * len(uniques)
        waiting: dict[int, _Entry[R]] = {}
        owned: list[int] = []
        joined = 0
        cache = self.cache if self.cache is not None and self.cache.enabled else None
        for u, text in enumerate(uniques):
            if cache is not None:
                ck = cache_keys[u] = cache.key(option, text)
                hit = cache.get(ck)
                if hit is not None:
                    results[u] = hit
                    continue
            entry = self._inflight.get((option, text))
            if entry is not None and entry.run.rank <= rank:  # as urgent as this request
                waiting[u] = entry
                joined += 1
            else:
                owned.append(u)
        if joined and self._on_shared is not None:
            self._on_shared("in_flight", joined)
        if owned:
            waiting.update(self._start(option, uniques, owned, cache_keys, compute, deadline, rank))
        if waiting:
            again = await self._wait(waiting, set(owned), results, deadline, expired)
            if again:  # joined texts whose shared computation ran out of time before this one
                retry = self._start(option, uniques, again, cache_keys, compute, deadline, rank)
                await self._wait(retry, set(again), results, deadline, expired)
        return [results[p] for p in positions]

    async def _unshared(self, option: str, texts: Sequence[str], compute: Compute[R]) -> list[R]:
        # DEDUP=off: every text is computed (or served by the cache) on its own, no sharing.
        cache = self.cache if self.cache is not None and self.cache.enabled else None
        if cache is None:
            return await compute(list(texts))
        keys = [cache.key(option, t) for t in texts]
        cached = [cache.get(k) for k in keys]
        missing = [i for i, r in enumerate(cached) if r is None]
        computed: dict[int, R] = {}
        if missing:
            computed = dict(zip(missing, await compute([texts[i] for i in missing]), strict=True))
        for i, r in computed.items():
            if not isinstance(r, BaseException):
                cache.put(keys[i], r)
        return [computed[i] if r is None else r for i, r in enumerate(cached)]

    def _start(
        self,
        option: str,
        uniques: list[str],
        owned: list[int],
        cache_keys: list[bytes | None],
        compute: Compute[R],
        deadline: float | None,
        rank: int,
    ) -> dict[int, _Entry[R]]:
        loop = asyncio.get_running_loop()
        run = _Run(deadline, rank)
        entries: dict[int, _Entry[R]] = {}
        for u in owned:
            key = (option, uniques[u])
            entries[u] = self._inflight[key] = _Entry(loop.create_future(), run)
            run.keys.append(key)
        texts = [uniques[u] for u in owned]
        keys = [cache_keys[u] for u in owned]
        run.task = asyncio.ensure_future(
            self._execute(run, compute, texts, list(entries.values()), keys)
        )
        return entries

    async def _execute(
        self,
        run: _Run,
        compute: Compute[R],
        texts: list[str],
        entries: list[_Entry[R]],
        cache_keys: list[bytes | None],
    ) -> None:
        try:
            out = await compute(texts)
            if len(out) != len(texts):
                raise RuntimeError(f"{len(out)} results for {len(texts)} texts")
        except asyncio.CancelledError:
            for e in entries:
                e.future.cancel()
            raise
        except Exception as error:  # shared by every waiter: each re-raises it
            for e in entries:
                if not e.future.done():
                    e.future.set_result(_Failed(error))
        else:
            cache = self.cache
            for e, r, ck in zip(entries, out, cache_keys, strict=True):
                if not e.future.done():
                    e.future.set_result(r)
                if cache is not None and ck is not None and not isinstance(r, BaseException):
                    cache.put(ck, r)
        finally:
            self._forget(run)

    def _forget(self, run: _Run) -> None:
        for key in run.keys:
            entry = self._inflight.get(key)
            if entry is not None and entry.run is run:
                del self._inflight[key]

    async def _wait(
        self,
        waiting: dict[int, _Entry[R]],
        owned: set[int],
        results: list[Any],
        deadline: float | None,
        expired: Callable[[], R] | None,
    ) -> list[int]:
        """Fill `results` from the entries; the joined texts to compute again are returned."""
        runs = {id(e.run): e.run for e in waiting.values()}
        for run in runs.values():
            run.waiters += 1
        try:
            # Joined texts are awaited until this request's own deadline; its own texts until
            # the batcher answers (it enforces the deadline on what is still queued).
            joined = {e.future for u, e in waiting.items() if u not in owned}
            timed = expired is not None and deadline is not None
            if joined and timed:
                assert deadline is not None
                timeout = deadline - self._clock()
                if timeout > 0:
                    await asyncio.wait(joined, timeout=timeout)
            if owned:  # one computation: shielded, so leaving does not cancel it for others
                task = waiting[next(iter(owned))].run.task
                if task is not None and not task.done():
                    await asyncio.shield(task)
            pending = {f for f in joined if not f.done()}
            if pending and not timed:
                await asyncio.wait(pending)
        finally:
            # Leaving (answered, timed out or cancelled): a computation nobody awaits any more
            # is cancelled and forgotten, so no later request joins it.
            for run in runs.values():
                run.waiters -= 1
                if run.waiters == 0 and run.task is not None and not run.task.done():
                    self._forget(run)
                    run.task.cancel()
        late = None if expired is None else type(expired())
        in_time = deadline is None or self._clock() < deadline
        again: list[int] = []
        for u, entry in waiting.items():
            if not entry.future.done():
                assert expired is not None
                results[u] = expired()
                continue
            value = entry.future.result()
            error = value.error if isinstance(value, _Failed) else value
            if u not in owned and in_time and late is not None and isinstance(error, late):
                again.append(u)  # another request's deadline, not this one's
            elif isinstance(value, _Failed):
                raise value.error
            else:
                results[u] = value
        return again


def build(settings: Settings, metrics: Metrics, manifest: Manifest) -> Dedup[Any] | None:
    """The function's Dedup from DEDUP and CACHE_*; None when both are off (the plain path)."""
    variant = settings.variant
    metrics.cache_enabled.labels(variant).set(0)
    metrics.cache_entries.labels(variant).set(0)
    cache: ResponseCache[Any] | None = None
    if settings.cache_size > 0:
        cache = ResponseCache(
            settings.cache_size,
            model_fingerprint(manifest.files, manifest.name, manifest.version),
            min_hit_rate=settings.cache_min_hit_rate,
            window=settings.cache_guard_window,
            hits=metrics.cache_hits.labels(variant),
            misses=metrics.cache_misses.labels(variant),
            entries=metrics.cache_entries.labels(variant),
            enabled_gauge=metrics.cache_enabled.labels(variant),
        )
    if not settings.dedup and cache is None:
        return None

    def on_shared(scope: str, texts: int) -> None:
        metrics.deduplicated.labels(scope, variant).inc(texts)

    return Dedup(share=settings.dedup, cache=cache, on_shared=on_shared)
