"""The measured run-cost model, the padding-waste bound it gives the batcher, and the lone text.

The batcher splits a taken batch where the cost model says one more run is cheaper than the
padding it saves; these tests feed the model runs of known cost (as the batcher does with every
real run) and check the split by what runs the batcher makes, never by timing.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from functions.sentiment.batching import Batcher, _Item, group_by_length
from functions.sentiment.cost import MAX_OVERHEAD_TOKENS, CostModel
from functions.sentiment.lanes import RUN_OVERHEAD_TOKENS

SHAPES = ((1, 8), (1, 30), (1, 64), (1, 250), (4, 30), (8, 64), (16, 40), (2, 250))


def fitted(run_s: float, token_s: float, square_s: float = 0.0) -> CostModel:
    model = CostModel()
    for _ in range(8):
        for windows, width in SHAPES:
            model.observe(windows, width, run_s + windows * width * (token_s + square_s * width))
    return model


def test_the_model_recovers_the_cost_of_the_runs_it_saw() -> None:
    model = fitted(0.002, 0.0001, 2e-7)
    assert model.fitted == pytest.approx((0.002, 0.0001, 2e-7))
    assert model.overhead_tokens() == 20
    assert model.seconds(4, 50) == pytest.approx(0.002 + 200 * (0.0001 + 2e-7 * 50))
    assert model.cost(4, 50) == model.seconds(4, 50)


def test_lone_texts_of_different_lengths_measure_the_fixed_cost_too() -> None:
    # Only lone runs (what a lightly loaded function makes): the width term keeps the long texts'
    # extra cost per token from hiding the fixed cost of a run.
    model = CostModel()
    for _ in range(10):
        for width in (4, 8, 16, 32, 64, 128, 250):
            model.observe(1, width, 0.002 + width * (0.0001 + 4e-7 * width))
    assert model.fitted == pytest.approx((0.002, 0.0001, 4e-7))


def test_the_prior_holds_until_the_runs_vary_enough_to_fit() -> None:
    model = CostModel()
    for _ in range(100):
        model.observe(1, 32, 0.004)  # one shape only: the terms cannot be told apart
    assert model.fitted is None
    assert model.overhead_tokens() == RUN_OVERHEAD_TOKENS
    assert model.cost(2, 10) == RUN_OVERHEAD_TOKENS + 20


def test_the_model_follows_a_machine_that_changes() -> None:
    model = fitted(0.0005, 0.0001)  # quiet: a run's fixed cost is 5 tokens' worth
    assert model.overhead_tokens() == 5
    for _ in range(20):  # contended: waking the threads now costs 4 ms
        for windows, width in SHAPES:
            model.observe(windows, width, 0.004 + 0.0001 * windows * width)
    assert model.overhead_tokens() > 30


def test_a_fit_that_makes_tokens_free_is_refused_and_the_overhead_is_capped() -> None:
    model = CostModel()
    for _ in range(20):
        model.observe(1, 10, 0.010)
        model.observe(1, 400, 0.005)  # more tokens, less time: noise, not a cost model
    assert model.fitted is None
    assert fitted(0.05, 0.000001).overhead_tokens() == MAX_OVERHEAD_TOKENS


@pytest.mark.parametrize("seed", range(20))
def test_no_run_costs_more_than_its_texts_run_alone(seed: int) -> None:
    # The padding-waste bound: under the measured model, every run the split makes costs at
    # most what running each of its texts on its own would (so no text pays for its neighbours).
    rng = random.Random(seed)
    loop = asyncio.new_event_loop()
    try:
        model = fitted(
            rng.uniform(0.0002, 0.005), rng.uniform(0.00003, 0.0002), rng.uniform(0, 1e-6)
        )
        items = [
            _Item(
                tuple((1,) * rng.choice((rng.randint(4, 60), rng.randint(100, 256)))
                      for _ in range(rng.choice((1, 1, 1, 2)))),
                loop.create_future(),
            )
            for _ in range(rng.randint(1, 40))
        ]  # fmt: skip
        for group in group_by_length(items, 32, cost=model.cost):
            windows = sum(len(i.windows) for i in group)
            run = model.cost(windows, max(i.width for i in group))
            alone = sum(model.cost(len(i.windows), i.width) for i in group)
            assert run <= alone * (1 + 1e-12)
    finally:
        loop.close()


class Recorder:
    """A run function that records each run's window widths and the thread it ran on."""

    def __init__(self) -> None:
        self.runs: list[list[int]] = []
        self.threads: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, windows: list[Sequence[int]]) -> np.ndarray[Any, np.dtype[np.float32]]:
        self.started.set()
        assert self.gate.wait(30), "test never released the run"
        self.runs.append([len(w) for w in windows])
        self.threads.append(threading.get_ident())
        return np.zeros((len(windows), 2), dtype=np.float32)


def test_a_run_mixing_one_long_and_many_short_texts_is_split() -> None:
    async def main() -> None:
        run = Recorder()
        b = Batcher(run, max_size=32, max_wait_s=0, inline=True)
        b.cost = fitted(0.002, 0.0001)  # measured: a run costs 20 tokens' worth
        await b.start()
        run.gate.clear()
        blocker = asyncio.create_task(b.submit([((1,) * 8,), ((1,) * 8,)]))  # two texts: worker
        await asyncio.to_thread(run.started.wait, 30)
        short = [((1,) * 10,) for _ in range(15)]
        waiting = asyncio.create_task(b.submit([((1,) * 200,), *short]))
        await asyncio.sleep(0)
        run.gate.set()
        await asyncio.gather(blocker, waiting)
        # In one padded run: 20 + 16 x 200 = 3,220 tokens' worth; split: 20 + 150 + 20 + 200.
        assert run.runs[1:] == [[10] * 15, [200]]
        await b.close()

    asyncio.run(main())


def test_near_equal_texts_stay_in_one_run() -> None:
    async def main() -> None:
        run = Recorder()
        b = Batcher(run, max_size=32, max_wait_s=0)
        b.cost = fitted(0.002, 0.0001)
        await b.start()
        await b.submit([((1,) * n,) for n in (10, 11, 12, 12, 14)])
        assert run.runs == [[10, 11, 12, 12, 14]]
        await b.close()

    asyncio.run(main())


def test_a_lone_text_runs_on_the_event_loop_without_waiting_for_company() -> None:
    async def main() -> None:
        run = Recorder()
        # A 60 s batch window: a lone text must not wait for it, nor cross to another thread.
        b = Batcher(run, max_size=32, max_wait_s=60, inline=True)
        b.cost = fitted(0.002, 0.0001)  # measured: 120 tokens run in 14 ms
        await b.start()
        await asyncio.sleep(0)  # the worker reaches its idle wait (the function warms up first)
        loop_thread = threading.get_ident()
        for n in (5, 40, 120):
            outcome = await b.submit([((1,) * n,)])
            assert len(outcome.probabilities) == 1
        assert run.runs == [[5], [40], [120]]
        assert run.threads == [loop_thread] * 3
        assert (b.inline_runs, b.handoffs) == (3, 0)
        await b.close()

    asyncio.run(main())


def test_a_lone_text_with_a_long_or_unmeasured_run_goes_to_the_inference_thread() -> None:
    # The event loop keeps reading requests (priorities, deadlines, probes) during a long run.
    async def main() -> None:
        run = Recorder()
        b = Batcher(run, max_size=32, max_wait_s=60, inline=True)
        await b.start()
        await asyncio.sleep(0)
        await b.submit([((1,) * 20,)])  # no runs measured yet: no estimate, no inline run
        b.cost = fitted(0.002, 0.0005)  # 250 tokens: 127 ms, over INLINE_MAX_S
        await b.submit([((1,) * 250,)])
        await b.submit([((1,) * 20,)])  # 12 ms: inline
        assert run.runs == [[20], [250], [20]]
        assert (b.inline_runs, b.handoffs) == (1, 2)
        assert run.threads[2] == threading.get_ident() != run.threads[0]
        await b.close()

    asyncio.run(main())


def test_a_text_arriving_during_a_run_is_not_run_inline() -> None:
    async def main() -> None:
        run = Recorder()
        b = Batcher(run, max_size=32, max_wait_s=0, inline=True)
        await b.start()
        run.gate.clear()
        first = asyncio.create_task(b.submit([((1,) * 8,), ((1,) * 9,)]))
        await asyncio.to_thread(run.started.wait, 30)
        second = asyncio.create_task(b.submit([((1,) * 8,)]))  # a run is in flight: queue it
        await asyncio.sleep(0)
        run.gate.set()
        await asyncio.gather(first, second)
        assert run.runs == [[8, 9], [8]]
        assert b.inline_runs == 0
        assert b.handoffs == 2
        assert threading.get_ident() not in run.threads
        await b.close()

    asyncio.run(main())
