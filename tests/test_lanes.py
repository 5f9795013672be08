"""Priority lanes and deadlines in the batcher, with a fake run function and a fake clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from functions.sentiment.batching import Batcher
from functions.sentiment.lanes import HIGH, LOW, NORMAL, Item, Lanes, settle
from shared.errors import DeadlineExceeded
from tests.test_batching import FakeRun, started, texts


class Clock:
    """A clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def item(loop: asyncio.AbstractEventLoop, first: int, priority: int) -> Item:
    return Item(((first, 0, 0),), loop.create_future(), priority=priority)


def popped(lanes: Lanes) -> list[int]:
    out = []
    while not lanes.empty():
        out.append(int(lanes.pop().windows[0][0]))
    return out


@pytest.fixture
def loop() -> Any:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_higher_lanes_go_first_and_each_lane_is_fifo(loop: asyncio.AbstractEventLoop) -> None:
    lanes = Lanes(max_wait_s=60, clock=Clock())
    for first, priority in ((1, LOW), (2, NORMAL), (3, HIGH), (4, LOW), (5, HIGH), (6, NORMAL)):
        lanes.put(item(loop, first, priority))
    assert lanes.depth() == {"high": 2, "normal": 2, "low": 2}
    assert popped(lanes) == [3, 5, 2, 6, 1, 4]


def test_with_priorities_off_the_queue_is_arrival_order(loop: asyncio.AbstractEventLoop) -> None:
    lanes = Lanes(enabled=False, max_wait_s=0, clock=Clock())
    for first, priority in ((1, LOW), (2, HIGH), (3, NORMAL), (4, HIGH)):
        lanes.put(item(loop, first, priority))
    assert popped(lanes) == [1, 2, 3, 4]


def test_a_low_text_is_overtaken_for_at_most_the_bound(loop: asyncio.AbstractEventLoop) -> None:
    clock = Clock()
    lanes = Lanes(max_wait_s=0.05, clock=clock)
    lanes.put(item(loop, 1, LOW))  # queued at 0
    clock.now = 0.01
    lanes.put(item(loop, 2, HIGH))
    clock.now = 0.05  # waited exactly the bound: still overtaken
    assert popped_one(lanes) == 2
    lanes.put(item(loop, 3, HIGH))
    clock.now = 0.0501  # waited longer than the bound: before any newer high text
    lanes.put(item(loop, 4, HIGH))
    assert popped(lanes) == [1, 3, 4]


def test_an_older_high_text_still_goes_before_an_overdue_low_one(
    loop: asyncio.AbstractEventLoop,
) -> None:
    clock = Clock()
    lanes = Lanes(max_wait_s=0.05, clock=clock)
    lanes.put(item(loop, 1, HIGH))
    clock.now = 0.01
    lanes.put(item(loop, 2, LOW))
    clock.now = 0.02
    lanes.put(item(loop, 3, NORMAL))
    clock.now = 1.0  # everything is overdue: oldest first
    assert popped(lanes) == [1, 2, 3]


def popped_one(lanes: Lanes) -> int:
    return int(lanes.pop().windows[0][0])


def test_settle_passes_results_raises_other_errors_and_reports_partial_deadlines() -> None:
    late = DeadlineExceeded("late")
    assert settle(["a", "b"]) == ["a", "b"]
    with pytest.raises(RuntimeError):
        settle(["a", late, RuntimeError("boom")])
    with pytest.raises(DeadlineExceeded) as full:
        settle([late, late])
    assert full.value.partial is None
    with pytest.raises(DeadlineExceeded) as some:
        settle(["a", late, "c"])
    assert some.value.partial == ["a", None, "c"]


def order(run: FakeRun) -> list[int]:
    return [int(r[0][0]) for r in run.runs]


@pytest.mark.parametrize(
    ("priorities", "max_wait_s", "expected"),
    [
        pytest.param(True, 60.0, [9, 3, 4, 2, 1], id="by-lane"),
        pytest.param(True, 0.0, [9, 1, 2, 3, 4], id="bound-zero-is-fifo"),
        pytest.param(False, 60.0, [9, 1, 2, 3, 4], id="priorities-off"),
    ],
)
def test_the_batcher_serves_lanes_in_order(
    priorities: bool, max_wait_s: float, expected: list[int]
) -> None:
    async def main() -> None:
        run = FakeRun(blocked=True)
        b = Batcher(run, max_size=1, max_wait_s=0, priorities=priorities)
        b.lanes.max_wait_s = max_wait_s
        await b.start()
        busy = asyncio.create_task(b.submit(texts(9)))  # holds the inference thread
        await started(run)
        queued = [
            asyncio.create_task(b.submit(texts(first), priority=lane))
            for first, lane in ((1, LOW), (2, NORMAL), (3, HIGH), (4, HIGH))
        ]
        await asyncio.sleep(0)  # let the submits enqueue
        run.gate.set()
        await asyncio.gather(busy, *queued)
        assert order(run) == expected
        await b.close()

    asyncio.run(main())


def test_the_starvation_bound_holds_in_the_batcher() -> None:
    async def main() -> None:
        clock = Clock()
        run = FakeRun(blocked=True)
        b = Batcher(run, max_size=1, max_wait_s=0, priority_max_wait_s=0.05)
        b.lanes.clock = clock
        await b.start()
        busy = asyncio.create_task(b.submit(texts(9)))
        await started(run)
        low = asyncio.create_task(b.submit(texts(1), priority=LOW))
        await asyncio.sleep(0)
        clock.now = 0.06  # the low text has now waited past the bound
        highs = [asyncio.create_task(b.submit(texts(f), priority=HIGH)) for f in (2, 3)]
        await asyncio.sleep(0)
        run.gate.set()
        await asyncio.gather(busy, low, *highs)
        assert order(run) == [9, 1, 2, 3]
        await b.close()

    asyncio.run(main())


class Expiries:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, texts: int, priority: int) -> None:
        self.calls.append((texts, priority))


@pytest.mark.parametrize("batching", [True, False], ids=["batching", "no-batching"])
def test_a_deadline_already_passed_is_never_run(batching: bool) -> None:
    async def main() -> None:
        run, expiries = FakeRun(), Expiries()
        b = Batcher(run, enabled=batching, on_expired=expiries)
        await b.start()
        with pytest.raises(DeadlineExceeded) as e:
            await b.submit(texts(1, 2), deadline=time.monotonic() - 1, priority=LOW)
        assert e.value.status == 504
        assert e.value.partial is None
        with pytest.raises(DeadlineExceeded):  # the lone-request fast path checks too
            await b.submit(texts(3), deadline=time.monotonic() - 1)
        assert run.runs == []
        assert expiries.calls == [(2, LOW), (1, NORMAL)]
        assert b.queued == 0
        await b.close()

    asyncio.run(main())


def test_a_text_whose_deadline_passes_while_queued_is_dropped_not_run() -> None:
    async def main() -> None:
        run, expiries = FakeRun(blocked=True), Expiries()
        b = Batcher(run, max_size=8, max_wait_s=0, on_expired=expiries)
        await b.start()
        busy = asyncio.create_task(b.submit(texts(9)))
        await started(run)
        deadline = time.monotonic() + 0.05
        late = asyncio.create_task(b.submit(texts(1, 2), deadline=deadline, priority=HIGH))
        on_time = asyncio.create_task(b.submit(texts(3), deadline=time.monotonic() + 60))
        while time.monotonic() <= deadline:  # the deadline passes while they are queued
            await asyncio.sleep(0.01)
        run.gate.set()
        await busy
        with pytest.raises(DeadlineExceeded) as e:
            await late
        assert e.value.partial is None
        assert float((await on_time).probabilities[0][0][0]) == 3
        assert order(run) == [9, 3]  # texts 1 and 2 never reached the model
        assert expiries.calls == [(1, HIGH), (1, HIGH)]
        await b.close()

    asyncio.run(main())


class SlowFirstRun(FakeRun):
    """The first run lasts until `until` (a time.monotonic() instant) has passed."""

    def __init__(self) -> None:
        super().__init__()
        self.until = 0.0

    def __call__(self, windows: list[Sequence[int]]) -> np.ndarray[Any, np.dtype[np.float32]]:
        if not self.runs:
            while time.monotonic() <= self.until:
                time.sleep(0.005)
        return super().__call__(windows)


@pytest.mark.parametrize("batching", [True, False], ids=["batching", "no-batching"])
def test_texts_run_before_the_deadline_keep_their_results(batching: bool) -> None:
    async def main() -> None:
        run, expiries = SlowFirstRun(), Expiries()
        b = Batcher(run, enabled=batching, max_size=2, on_expired=expiries)
        await b.start()
        run.until = deadline = time.monotonic() + 0.05
        with pytest.raises(DeadlineExceeded) as e:
            await b.submit(texts(1, 2, 3, 4, 5), deadline=deadline)
        partial = e.value.partial
        assert partial is not None
        assert [None if p is None else float(p[0][0]) for p in partial] == [1, 2, None, None, None]
        assert order(run) == [1]  # one run of two texts; the other three never ran
        assert sum(n for n, _ in expiries.calls) == 3
        assert b.queued == 0
        await b.close()

    asyncio.run(main())
