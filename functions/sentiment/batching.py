"""Adaptive micro-batching: concurrent requests share ONNX runs, a lone request never waits.

One worker owns the inference thread. When it is free it takes every text already queued (up to
BATCH_MAX_SIZE windows), so a request that arrives at an idle worker runs at once; a single text
that finds the worker idle and nothing queued or expected skips the worker and runs at once, on the
event loop itself with `inline` (no thread hand-off, like a one-run-per-request server; off in the
function: it blocks the loop, so under concurrency no request is read while it runs and every run
stays a lone run, measured as half the throughput at c=32). Texts that
arrive while a run is busy pile up and share the next run. Requests announce themselves while
they are being tokenized (`expecting()`); only while announced texts are on their way and the
batch is not full does the worker wait, up to BATCH_MAX_WAIT_MS, for them to join. Under load that
turns "one lone text, then everybody else" into one full run; a lone request, even one with many
texts, never waits, because nothing else is expected.

A taken batch is sorted by token count and split where the padding saved outweighs the cost of
one more run, as measured on the recent runs (cost.CostModel): no text pays a long neighbour's
padding beyond what its own run would have cost. Admission is bounded:
beyond MAX_QUEUED_TEXTS a submit raises `Overloaded` (429) at once instead of growing memory (a
single request larger than the limit is still admitted when nothing else is queued, so it is never
refused forever), and after `drain()` starts it raises `NotReady` (503) while everything already
accepted still completes. `close()` fails whatever is still queued with `NotReady`, so no caller
waits forever.

With batching off, each request runs on its own (split into runs of BATCH_MAX_SIZE), in arrival
order, on the same thread.

Priorities and deadlines (`submit(..., priority=, deadline=)`): the queue is one lane per priority
(`lanes.Lanes`: higher lanes first, a text overtaken longer than PRIORITY_MAX_WAIT_MS goes next).
A text whose deadline has passed is never run: submit refuses it at once, the worker drops it
when it takes a batch and again before each run, and the lone-request and batching-off paths
check before each run. Its caller gets `DeadlineExceeded` (504), carrying the results of the
request's other texts when some of them were run in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from functions.sentiment.cost import CostModel
from functions.sentiment.lanes import NORMAL, Lanes, expired, settle
from functions.sentiment.lanes import RUN_OVERHEAD_TOKENS as RUN_OVERHEAD_TOKENS
from functions.sentiment.lanes import Item as _Item
from functions.sentiment.lanes import group_by_length as group_by_length
from shared.errors import DeadlineExceeded, NotReady, Overloaded

__all__ = ["RUN_OVERHEAD_TOKENS", "Batcher", "Outcome", "RunStats", "_Item", "group_by_length"]

log = logging.getLogger("kubesentiment.batching")

# What a run returns: per-run statistics and a submit's outcome (also used by the request core and
# the lifecycle's metrics hook).
Probabilities = np.ndarray[Any, np.dtype[np.float32]]
Window = Sequence[int]
RunFn = Callable[[list[Window]], Probabilities]


@dataclass(frozen=True)
class RunStats:
    """What one ONNX run did, for metrics and tracing (times in ns since the epoch)."""

    size: int
    width: int
    tokens: int  # real tokens; size x width are the padded ones
    queue_waits: tuple[float, ...]
    seconds: float
    started_ns: int
    ended_ns: int
    cpu_seconds: float = 0.0  # process CPU time during the run (ORT's threads included)


@dataclass(frozen=True)
class Outcome:
    """A submit's answer: probabilities per text, and when its texts were queued and run."""

    probabilities: list[Probabilities]
    enqueued_ns: int
    started_ns: int
    ended_ns: int
    batch_size: int
    cpu_seconds: float = 0.0  # this submit's share of its runs' CPU time, by windows

    @property
    def queue_seconds(self) -> float:
        """Time from submit to the start of the first run that held one of its texts."""
        return max(0, self.started_ns - self.enqueued_ns) / 1e9

    @property
    def inference_seconds(self) -> float:
        """Time from the first run's start to the last run's end."""
        return max(0, self.ended_ns - self.started_ns) / 1e9


class Batcher:
    """Queues texts' token windows and runs them on one inference thread."""

    def __init__(
        self,
        run: RunFn,
        *,
        enabled: bool = True,
        max_size: int = 32,
        max_wait_s: float = 0.002,
        max_queued: int = 4096,
        retry_after_s: int = 1,
        on_run: Callable[[RunStats], None] | None = None,
        priorities: bool = True,
        priority_max_wait_s: float = 0.5,
        on_expired: Callable[[int, int], None] | None = None,
        inline: bool = False,
    ) -> None:
        self._run = run
        self.enabled = enabled
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.max_queued = max_queued
        self.retry_after = {"Retry-After": str(retry_after_s)}
        self._on_run = on_run
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx")
        self.lanes = Lanes(enabled=priorities, max_wait_s=priority_max_wait_s)
        self._on_expired = on_expired  # (texts, priority) never run: their deadline passed
        self._worker: asyncio.Task[None] | None = None
        self.queued = 0  # texts accepted and not yet answered
        self.draining = False
        self._idle: asyncio.Event | None = None
        self.expected = 0  # texts announced by expecting() and not yet submitted
        self._idle_worker = False  # the worker waits on an empty queue, holding nothing
        self._free = asyncio.Event()  # clear while a fast-path run holds the inference thread
        self._free.set()
        self._taken: list[_Item] = []  # items the worker holds (taken from the queue, not answered)
        self.cost = CostModel()  # measured per-run and per-token cost: how runs are split
        # A lone text runs on the event loop itself (no thread hand-off, as a one-run-per-request
        # server does) when `inline`; else on the inference thread (one hand-off there and back).
        self.inline = inline
        self.inline_runs = 0  # runs made on the event loop
        self.handoffs = 0  # runs handed to the inference thread

    async def start(self) -> None:
        """Start the worker (call from the running event loop)."""
        self._idle = asyncio.Event()
        self._idle.set()
        if self.enabled:
            self._worker = asyncio.create_task(self._loop(), name="batcher")

    @contextlib.contextmanager
    def expecting(self, texts: int) -> Iterator[None]:
        """Announce `texts` about to be submitted (wrap their tokenization in this).

        Leave the block and call `submit` with no `await` in between, so the texts stop being
        expected exactly when they are queued.
        """
        self.expected += texts
        try:
            yield
        finally:
            self.expected -= texts

    async def submit(
        self,
        windows: Sequence[tuple[Window, ...]],
        *,
        deadline: float | None = None,
        priority: int = NORMAL,
    ) -> Outcome:
        """Probabilities for each text's windows, in order; raises Overloaded, NotReady or
        DeadlineExceeded (`deadline` is a time.monotonic() instant; `priority` a lanes lane)."""
        if self.draining:
            raise NotReady("the function is shutting down", headers=self.retry_after)
        if deadline is not None and time.monotonic() >= deadline:
            self._expired(len(windows), priority)
            raise DeadlineExceeded("the deadline passed before the texts could be queued")
        # A request larger than the whole limit is admitted when nothing else waits; refusing it
        # with 429 would make Knative and clients retry it forever (MAX_TEXTS bounds it anyway).
        if self.queued and self.queued + len(windows) > self.max_queued:
            raise Overloaded(
                f"too many texts waiting for inference (limit {self.max_queued})",
                headers=self.retry_after,
            )
        assert self._idle is not None, "Batcher.start() not awaited"
        self.queued += len(windows)
        self._idle.clear()
        enqueued_ns = time.time_ns()
        try:
            results: list[Any]
            if not self.enabled:
                results = await self._run_alone(windows, deadline, priority)
            elif (
                len(windows) == 1
                and self._idle_worker
                and self._free.is_set()
                and self.lanes.empty()
                and not self.expected
            ):
                # Fast path: one text, an idle worker, no run in flight and nobody to batch with.
                # Run it at once, skipping the worker's hand-offs: inline, on the event loop
                # (what a one-run-per-request server pays), or on the inference thread.
                # Arrivals meanwhile wait in the queue and share the next run.
                self._free.clear()
                try:
                    # Only a run measured to be short: a long one would keep the loop from
                    # reading requests (priorities, deadlines, probes) while it runs.
                    if self.inline and self.cost.short(windows[0]):
                        self.inline_runs += 1
                        results = [self._timed_run(list(windows[0]), (time.perf_counter(),))]
                    else:
                        results = await self._run_alone(windows, deadline, priority)
                finally:
                    self._free.set()
            else:
                loop = asyncio.get_running_loop()
                items = [
                    _Item(tuple(w), loop.create_future(), priority=priority, deadline=deadline)
                    for w in windows
                ]
                for item in items:
                    self.lanes.put(item)
                futures = (i.future for i in items)
                results = list(await asyncio.gather(*futures, return_exceptions=True))
            results = settle(results, lambda r: r[0])  # partial: probabilities only
            stats = [s for _, s in results]
            return Outcome(
                probabilities=[p for p, _ in results],
                enqueued_ns=enqueued_ns,
                started_ns=min(s.started_ns for s in stats),
                ended_ns=max(s.ended_ns for s in stats),
                batch_size=max(s.size for s in stats),
                cpu_seconds=sum(
                    s.cpu_seconds * len(w) / s.size for s, w in zip(stats, windows, strict=True)
                ),
            )
        finally:
            self.queued -= len(windows)
            if self.queued == 0:
                self._idle.set()

    def _expired(self, texts: int, priority: int) -> None:
        if self._on_expired is not None and texts:
            self._on_expired(texts, priority)

    async def _run_alone(
        self, windows: Sequence[tuple[Window, ...]], deadline: float | None, priority: int
    ) -> list[Any]:
        # Runs of at most max_size windows (a text's windows stay in one run), in order; once
        # the deadline has passed, the texts not yet run get DeadlineExceeded instead.
        loop = asyncio.get_running_loop()
        enqueued = time.perf_counter()
        out: list[Any] = []
        start = 0
        while start < len(windows):
            if deadline is not None and time.monotonic() >= deadline:
                late = len(windows) - start
                self._expired(late, priority)
                out.extend(DeadlineExceeded("the deadline passed") for _ in range(late))
                break
            end, size = start, 0
            while end < len(windows) and (
                end == start or size + len(windows[end]) <= self.max_size
            ):
                size += len(windows[end])
                end += 1
            part = windows[start:end]
            flat = [w for text in part for w in text]
            self.handoffs += 1
            probs, stats = await loop.run_in_executor(
                self._executor, self._timed_run, flat, (enqueued,) * len(part)
            )
            offset = 0
            for text in part:
                out.append((probs[offset : offset + len(text)], stats))
                offset += len(text)
            start = end
        return out

    def _timed_run(
        self, windows: list[Window], enqueued: tuple[float, ...]
    ) -> tuple[Probabilities, RunStats]:
        started, started_ns = time.perf_counter(), time.time_ns()
        cpu = time.process_time()  # ORT's intra-op threads work for the run: the process's CPU
        probs = self._run(windows)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        width = max(len(w) for w in windows)
        self.cost.observe(len(windows), width, seconds)
        stats = RunStats(
            size=len(windows),
            width=width,
            tokens=sum(len(w) for w in windows),
            queue_waits=tuple(started - e for e in enqueued),
            seconds=seconds,
            started_ns=started_ns,
            ended_ns=started_ns + int(seconds * 1e9),
            cpu_seconds=cpu,
        )
        if self._on_run is not None:
            self._on_run(stats)
        return probs, stats

    def _pop_live(self) -> _Item | None:
        # The next queued item whose deadline has not passed; expired ones fail on the way.
        now = time.monotonic()
        while not self.lanes.empty():
            item = self.lanes.pop()
            if not expired(item, now):
                return item
            self._drop([item])
        return None

    def _drop(self, items: list[_Item]) -> None:
        for item in items:
            if not item.future.done():
                self._expired(1, item.priority)
                item.future.set_exception(DeadlineExceeded("the deadline passed while queued"))

    async def _take(self) -> list[_Item]:
        items: list[_Item] = []
        while not items:
            self._idle_worker = True
            try:
                await self.lanes.wait()
            finally:
                self._idle_worker = False
            await self._free.wait()  # a fast-path run may hold the inference thread
            first = self._pop_live()
            if first is not None:
                items = self._taken = [first]  # held: close() fails it if cancelled from here
        size = len(items[0].windows)
        while size < self.max_size and (item := self._pop_live()) is not None:
            items.append(item)
            size += len(item.windows)
        # Top up only while announced texts are on their way (being tokenized): they would
        # otherwise wait a whole run. Nothing expected (a lone request): run at once.
        if self.expected > 0 and size < self.max_size and self.max_wait_s > 0:
            deadline = time.perf_counter() + self.max_wait_s
            while size < self.max_size and (self.expected > 0 or not self.lanes.empty()):
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                if not await self.lanes.wait(remaining):
                    break
                if (item := self._pop_live()) is not None:
                    items.append(item)
                    size += len(item.windows)
        return items

    async def _loop(self) -> None:
        while True:
            self._taken = await self._take()
            try:
                await self._run_groups(self._taken)
            except Exception as e:  # never let one bad batch stop the worker: fail its texts
                log.exception("batch failed")
                _fail(self._taken, e)
            self._taken = []

    async def _run_groups(self, items: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        for group in group_by_length(items, self.max_size, cost=self.cost.cost):
            now = time.monotonic()  # a group may wait for the runs before it: check again
            self._drop([i for i in group if expired(i, now)])
            live = [i for i in group if not i.future.done()]
            if not live:
                continue
            flat = [w for i in live for w in i.windows]
            self.handoffs += 1
            try:
                probs, stats = await loop.run_in_executor(
                    self._executor, self._timed_run, flat, tuple(i.enqueued for i in live)
                )
            except Exception as e:  # one failed run fails its own texts, not the worker
                _fail(live, e)
                continue
            start = 0
            for i in live:
                if not i.future.done():
                    i.future.set_result((probs[start : start + len(i.windows)], stats))
                start += len(i.windows)

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new work and wait for accepted work to finish; False on timeout."""
        self.draining = True
        if self._idle is None:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        """Stop the worker and the inference thread; whatever is still queued fails (503)."""
        self.draining = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        pending = [*self._taken, *self.lanes.clear()]
        _fail(pending, NotReady("the function stopped before this text was run"))
        self._executor.shutdown(wait=True)


def _fail(items: list[_Item], error: BaseException) -> None:
    for i in items:
        if not i.future.done():
            i.future.set_exception(error)
