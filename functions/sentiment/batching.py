"""Adaptive micro-batching: concurrent requests share ONNX runs, a lone request never waits.

One worker owns the inference thread. When it is free it takes every text already queued (up to
BATCH_MAX_SIZE windows), so a request that arrives at an idle worker runs at once; a single text
that finds the worker idle and nothing queued or expected skips the worker and runs straight on
the inference thread, so the lone-request path costs what it costs with batching off. Texts that
arrive while a run is busy pile up and share the next run. Requests announce themselves while
they are being tokenized (`expecting()`); only while announced texts are on their way and the
batch is not full does the worker wait, up to BATCH_MAX_WAIT_MS, for them to join. Under load that
turns "one lone text, then everybody else" into one full run; a lone request, even one with many
texts, never waits, because nothing else is expected.

A taken batch is sorted by token count and split where the padding saved outweighs the cost of
one more run, so short texts do not pay for a long neighbour's padding. Admission is bounded:
beyond MAX_QUEUED_TEXTS a submit raises `Overloaded` (429) at once instead of growing memory (a
single request larger than the limit is still admitted when nothing else is queued, so it is never
refused forever), and after `drain()` starts it raises `NotReady` (503) while everything already
accepted still completes. `close()` fails whatever is still queued with `NotReady`, so no caller
waits forever.

With batching off, each request runs on its own (split into runs of BATCH_MAX_SIZE), in arrival
order, on the same thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.errors import NotReady, Overloaded

log = logging.getLogger("kubesentiment.batching")

Probabilities = np.ndarray[Any, np.dtype[np.float32]]
Window = Sequence[int]
RunFn = Callable[[list[Window]], Probabilities]


@dataclass(frozen=True)
class RunStats:
    """What one ONNX run did, for metrics and tracing (times in ns since the epoch)."""

    size: int
    width: int
    queue_waits: tuple[float, ...]
    seconds: float
    started_ns: int
    ended_ns: int


@dataclass(frozen=True)
class Outcome:
    """A submit's answer: probabilities per text, and when its texts were queued and run."""

    probabilities: list[Probabilities]
    enqueued_ns: int
    started_ns: int
    ended_ns: int
    batch_size: int

    @property
    def queue_seconds(self) -> float:
        """Time from submit to the start of the first run that held one of its texts."""
        return max(0, self.started_ns - self.enqueued_ns) / 1e9

    @property
    def inference_seconds(self) -> float:
        """Time from the first run's start to the last run's end."""
        return max(0, self.ended_ns - self.started_ns) / 1e9


@dataclass
class _Item:
    windows: tuple[Window, ...]
    future: asyncio.Future[tuple[Probabilities, RunStats]]
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def width(self) -> int:
        return max(len(w) for w in self.windows)


# What one extra ONNX run costs, in padded tokens of compute. Measured on the int8 MiniLM with
# 2 cores: a run costs about a + b * windows * width with a ~ 0.2-2.4 ms and b ~ 0.06-0.13 ms per
# token (quiet vs contended cores), so a is worth 4-20 tokens; 16 splits only where it clearly pays.
RUN_OVERHEAD_TOKENS = 16


def group_by_length(
    items: list[_Item], max_size: int, overhead: int = RUN_OVERHEAD_TOKENS
) -> list[list[_Item]]:
    """Split items, sorted by length, into runs of at most `max_size` windows with similar widths.

    A run is padded to its longest window, and its cost grows with windows x width, so the split
    that minimises total padded tokens plus `overhead` per run is found exactly (dynamic
    programming over the sorted items, O(n x max_size)): short texts no longer pay for a long
    neighbour's padding, and a batch of near-equal texts stays one run.
    """
    ordered = sorted(items, key=lambda i: i.width)
    n = len(ordered)
    best = [0] * (n + 1)  # best[k]: cost of the first k items
    cut = [0] * (n + 1)  # where the last group of the first k items starts
    for end in range(1, n + 1):
        width = ordered[end - 1].width  # the widest of any group ending here
        windows = 0
        best[end] = -1
        for begin in range(end - 1, -1, -1):
            windows += len(ordered[begin].windows)
            if windows > max_size and begin < end - 1:
                break
            cost = best[begin] + overhead + windows * width
            if best[end] < 0 or cost < best[end]:
                best[end], cut[end] = cost, begin
    groups: list[list[_Item]] = []
    end = n
    while end > 0:
        groups.append(ordered[cut[end] : end])
        end = cut[end]
    groups.reverse()
    return groups


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
    ) -> None:
        self._run = run
        self.enabled = enabled
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.max_queued = max_queued
        self.retry_after = {"Retry-After": str(retry_after_s)}
        self._on_run = on_run
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx")
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task[None] | None = None
        self.queued = 0  # texts accepted and not yet answered
        self.draining = False
        self._idle: asyncio.Event | None = None
        self.expected = 0  # texts announced by expecting() and not yet submitted
        self._idle_worker = False  # the worker waits on an empty queue, holding nothing
        self._free = asyncio.Event()  # clear while a fast-path run holds the inference thread
        self._free.set()
        self._taken: list[_Item] = []  # items the worker holds (taken from the queue, not answered)

    async def start(self) -> None:
        """Start the worker (call from the running event loop)."""
        self._queue = asyncio.Queue()
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

    async def submit(self, windows: Sequence[tuple[Window, ...]]) -> Outcome:
        """Probabilities for each text's windows, in order; raises Overloaded or NotReady."""
        if self.draining:
            raise NotReady("the function is shutting down", headers=self.retry_after)
        # A request larger than the whole limit is admitted when nothing else waits; refusing it
        # with 429 would make Knative and clients retry it forever (MAX_TEXTS bounds it anyway).
        if self.queued and self.queued + len(windows) > self.max_queued:
            raise Overloaded(
                f"too many texts waiting for inference (limit {self.max_queued})",
                headers=self.retry_after,
            )
        assert self._queue is not None, "Batcher.start() not awaited"
        assert self._idle is not None
        self.queued += len(windows)
        self._idle.clear()
        enqueued_ns = time.time_ns()
        try:
            if not self.enabled:
                results = await self._run_alone(windows)
            elif (
                len(windows) == 1
                and self._idle_worker
                and self._free.is_set()
                and self._queue.empty()
                and not self.expected
            ):
                # Fast path: one text, an idle worker and nobody to batch with. Run it at once
                # on the inference thread, skipping the worker's hand-offs (the single-request
                # latency stays that of batching off). Arrivals meanwhile wait in the queue and
                # share the next run.
                self._free.clear()
                try:
                    results = await self._run_alone(windows)
                finally:
                    self._free.set()
            else:
                loop = asyncio.get_running_loop()
                items = [_Item(tuple(w), loop.create_future()) for w in windows]
                for item in items:
                    self._queue.put_nowait(item)
                results = list(await asyncio.gather(*(i.future for i in items)))
            stats = [s for _, s in results]
            return Outcome(
                probabilities=[p for p, _ in results],
                enqueued_ns=enqueued_ns,
                started_ns=min(s.started_ns for s in stats),
                ended_ns=max(s.ended_ns for s in stats),
                batch_size=max(s.size for s in stats),
            )
        finally:
            self.queued -= len(windows)
            if self.queued == 0:
                self._idle.set()

    async def _run_alone(
        self, windows: Sequence[tuple[Window, ...]]
    ) -> list[tuple[Probabilities, RunStats]]:
        # Runs of at most max_size windows (a text's windows stay in one run), in order.
        loop = asyncio.get_running_loop()
        enqueued = time.perf_counter()
        out: list[tuple[Probabilities, RunStats]] = []
        start = 0
        while start < len(windows):
            end, size = start, 0
            while end < len(windows) and (
                end == start or size + len(windows[end]) <= self.max_size
            ):
                size += len(windows[end])
                end += 1
            part = windows[start:end]
            flat = [w for text in part for w in text]
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
        probs = self._run(windows)
        seconds = time.perf_counter() - started
        stats = RunStats(
            size=len(windows),
            width=max(len(w) for w in windows),
            queue_waits=tuple(started - e for e in enqueued),
            seconds=seconds,
            started_ns=started_ns,
            ended_ns=started_ns + int(seconds * 1e9),
        )
        if self._on_run is not None:
            self._on_run(stats)
        return probs, stats

    async def _take(self) -> list[_Item]:
        assert self._queue is not None
        self._idle_worker = True
        try:
            first = await self._queue.get()
        finally:
            self._idle_worker = False
        items = self._taken = [first]  # held: close() fails it if cancelled from here on
        await self._free.wait()  # a fast-path run may hold the inference thread: queue up behind
        size = len(items[0].windows)
        while size < self.max_size and not self._queue.empty():
            item = self._queue.get_nowait()
            items.append(item)
            size += len(item.windows)
        # Top up only while announced texts are on their way (being tokenized): they would
        # otherwise wait a whole run. Nothing expected (a lone request): run at once.
        if self.expected > 0 and size < self.max_size and self.max_wait_s > 0:
            deadline = time.perf_counter() + self.max_wait_s
            while size < self.max_size and (self.expected > 0 or not self._queue.empty()):
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
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
        for group in group_by_length(items, self.max_size):
            live = [i for i in group if not i.future.done()]
            if not live:
                continue
            flat = [w for i in live for w in i.windows]
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
        pending = list(self._taken)
        while self._queue is not None and not self._queue.empty():
            pending.append(self._queue.get_nowait())
        _fail(pending, NotReady("the function stopped before this text was run"))
        self._executor.shutdown(wait=True)


def _fail(items: list[_Item], error: BaseException) -> None:
    for i in items:
        if not i.future.done():
            i.future.set_exception(error)
