"""The micro-batcher with a fake run function: coalescing, the wait policy, bounds and shutdown."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from functions.sentiment.batching import Batcher, _Item, group_by_length
from shared.errors import NotReady, Overloaded

Windows = list[tuple[tuple[int, ...], ...]]


class FakeRun:
    """Records every run's windows; `gate` (when set) blocks runs until released."""

    def __init__(self, *, blocked: bool = False, fail_on: int | None = None) -> None:
        self.runs: list[list[Sequence[int]]] = []
        self.gate = threading.Event()
        self.started = threading.Event()
        self.fail_on = fail_on
        if not blocked:
            self.gate.set()

    def __call__(self, windows: list[Sequence[int]]) -> np.ndarray[Any, np.dtype[np.float32]]:
        self.started.set()
        assert self.gate.wait(30), "test never released the run"
        self.runs.append(list(windows))
        if self.fail_on is not None and any(w[0] == self.fail_on for w in windows):
            raise RuntimeError("boom")
        # One row per window whose first column is the window's first token: lets tests check
        # that every text gets its own answer back.
        return np.array([[float(w[0]), 0.0] for w in windows], dtype=np.float32)


def texts(*firsts: int, width: int = 3) -> Windows:
    return [((f,) + (0,) * (width - 1),) for f in firsts]


async def started(run: FakeRun) -> None:
    await asyncio.wait_for(asyncio.to_thread(run.started.wait, 30), 30)


def test_each_text_gets_its_own_answer_in_order() -> None:
    async def main() -> None:
        run = FakeRun()
        b = Batcher(run, max_size=4)
        await b.start()
        outcome = await b.submit(texts(1, 2, 3, 4, 5, 6))
        assert [float(p[0][0]) for p in outcome.probabilities] == [1, 2, 3, 4, 5, 6]
        assert all(len(r) <= 4 for r in run.runs)
        await b.close()

    asyncio.run(main())


def test_a_lone_request_with_many_texts_does_not_wait_for_company() -> None:
    async def main() -> None:
        run = FakeRun()
        # A 60 s top-up wait: a lone request that waited for it would hit the 10 s deadline.
        b = Batcher(run, max_size=32, max_wait_s=60)
        await b.start()
        outcome = await asyncio.wait_for(b.submit(texts(1, 2, 3, 4, 5)), 10)
        assert len(outcome.probabilities) == 5
        assert len(run.runs) == 1
        await b.close()

    asyncio.run(main())


def test_requests_queued_during_a_run_share_the_next_run() -> None:
    async def main() -> None:
        run = FakeRun(blocked=True)
        b = Batcher(run, max_size=32, max_wait_s=0)
        await b.start()
        first = asyncio.create_task(b.submit(texts(1)))
        await started(run)
        others = [asyncio.create_task(b.submit(texts(i))) for i in range(2, 7)]
        await asyncio.sleep(0)  # let the submits enqueue
        run.gate.set()
        await asyncio.gather(first, *others)
        assert [len(r) for r in run.runs] == [1, 5]
        assert [float(t.result().probabilities[0][0][0]) for t in others] == [2, 3, 4, 5, 6]
        await b.close()

    asyncio.run(main())


def test_group_by_length_keeps_short_texts_apart_from_long_ones() -> None:
    loop = asyncio.new_event_loop()
    try:
        items = [_Item(((1,) * n,), loop.create_future()) for n in (5, 200, 6, 7, 190, 8)]
        groups = group_by_length(items, max_size=32)
        widths = [[i.width for i in g] for g in groups]
        assert widths == [[5, 6, 7, 8], [190, 200]]
        assert [len(g) for g in group_by_length(items, max_size=2)] == [2, 2, 2]
    finally:
        loop.close()


def padded_cost(groups: list[list[_Item]], overhead: int) -> int:
    return sum(overhead + sum(len(i.windows) for i in g) * max(i.width for i in g) for g in groups)


@pytest.mark.parametrize("seed", range(12))
def test_group_by_length_finds_the_cheapest_split(seed: int) -> None:
    # Brute force over every split of the sorted items into contiguous groups.
    rng = random.Random(seed)
    loop = asyncio.new_event_loop()
    try:
        items = [
            _Item(
                tuple((1,) * rng.randint(4, 80) for _ in range(rng.choice((1, 1, 2)))),
                loop.create_future(),
            )
            for _ in range(rng.randint(1, 9))
        ]
        max_size, overhead = 6, 16
        ordered = sorted(items, key=lambda i: i.width)
        best = None
        for mask in range(2 ** (len(ordered) - 1)):
            groups, current = [], [ordered[0]]
            for k, item in enumerate(ordered[1:]):
                if mask >> k & 1:
                    groups.append(current)
                    current = []
                current.append(item)
            groups.append(current)
            if any(len(g) > 1 and sum(len(i.windows) for i in g) > max_size for g in groups):
                continue
            cost = padded_cost(groups, overhead)
            best = cost if best is None else min(best, cost)
        got = group_by_length(items, max_size, overhead)
        assert sorted(id(i) for g in got for i in g) == sorted(id(i) for i in items)
        assert padded_cost(got, overhead) == best
    finally:
        loop.close()


def test_the_queue_is_bounded_but_a_large_request_is_not_refused_forever() -> None:
    async def main() -> None:
        run = FakeRun(blocked=True)
        b = Batcher(run, max_size=4, max_queued=4)
        await b.start()
        big = asyncio.create_task(b.submit(texts(1, 2, 3, 4, 5, 6)))  # > max_queued, idle: in
        await started(run)
        with pytest.raises(Overloaded) as info:
            await b.submit(texts(7))
        assert info.value.headers["Retry-After"] == "1"
        run.gate.set()
        assert len((await big).probabilities) == 6
        assert len((await b.submit(texts(8))).probabilities) == 1
        await b.close()

    asyncio.run(main())


def test_a_failed_run_fails_only_its_texts_and_the_worker_goes_on() -> None:
    async def main() -> None:
        run = FakeRun(fail_on=13)
        b = Batcher(run, max_size=8)
        await b.start()
        with pytest.raises(RuntimeError):
            await b.submit(texts(13))
        assert len((await b.submit(texts(1, 2))).probabilities) == 2
        await b.close()

    asyncio.run(main())


def test_drain_refuses_new_work_and_close_fails_what_is_still_queued() -> None:
    async def main() -> None:
        run = FakeRun(blocked=True)
        b = Batcher(run, max_size=1, max_wait_s=0)
        await b.start()
        running = asyncio.create_task(b.submit(texts(1)))
        await started(run)
        queued = asyncio.create_task(b.submit(texts(2)))
        await asyncio.sleep(0)
        assert not await b.drain(0.05)  # still busy: drain times out
        with pytest.raises(NotReady):
            await b.submit(texts(3))
        closing = asyncio.create_task(b.close())
        await asyncio.sleep(0)
        run.gate.set()
        await closing
        results = await asyncio.wait_for(
            asyncio.gather(running, queued, return_exceptions=True), 10
        )
        # Nothing hangs: the queued request is refused with 503 instead of waiting forever.
        assert isinstance(results[1], NotReady)

    asyncio.run(main())


def test_drain_waits_for_accepted_work() -> None:
    async def main() -> None:
        run = FakeRun(blocked=True)
        b = Batcher(run, max_size=8)
        await b.start()
        running = asyncio.create_task(b.submit(texts(1, 2)))
        await started(run)
        draining = asyncio.create_task(b.drain(30))
        await asyncio.sleep(0)
        assert not draining.done()
        run.gate.set()
        assert await draining
        assert len((await running).probabilities) == 2
        await b.close()

    asyncio.run(main())


def test_batching_off_runs_each_request_alone_split_at_max_size() -> None:
    async def main() -> None:
        run = FakeRun()
        b = Batcher(run, enabled=False, max_size=2)
        await b.start()
        outcome = await b.submit(texts(1, 2, 3, 4, 5))
        assert [float(p[0][0]) for p in outcome.probabilities] == [1, 2, 3, 4, 5]
        assert [len(r) for r in run.runs] == [2, 2, 1]
        await b.close()

    asyncio.run(main())


async def turns(n: int = 20) -> None:
    """Let the event loop run `n` rounds (no wall-clock wait)."""
    for _ in range(n):
        await asyncio.sleep(0)


def test_the_worker_waits_for_texts_announced_as_on_their_way() -> None:
    async def main() -> None:
        run = FakeRun()
        b = Batcher(run, max_size=32, max_wait_s=30)
        await b.start()
        with b.expecting(1):  # a second request is being tokenized
            first = asyncio.create_task(b.submit(texts(1)))
            await turns()  # the worker took the first text and waits for the announced one
            assert not run.started.is_set()
        second = await b.submit(texts(2))
        await first
        assert [len(r) for r in run.runs] == [2]  # one run for both
        assert float(second.probabilities[0][0][0]) == 2
        await b.close()

    asyncio.run(main())


def test_an_announced_text_that_never_comes_delays_a_run_by_max_wait_at_most() -> None:
    async def main() -> None:
        run = FakeRun()
        b = Batcher(run, max_size=32, max_wait_s=0.05)
        await b.start()
        with b.expecting(1):  # e.g. its tokenization fails
            outcome = await asyncio.wait_for(b.submit(texts(1)), 10)
        assert len(outcome.probabilities) == 1
        assert b.expected == 0
        await b.close()

    asyncio.run(main())
