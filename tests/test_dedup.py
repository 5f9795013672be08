"""Duplicate work done once and the response cache, with fake computations (no model)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from functions.sentiment.cache import ResponseCache, model_fingerprint
from functions.sentiment.dedup import Dedup, build
from shared.config import ConfigError, Settings
from shared.errors import DeadlineExceeded, Overloaded
from shared.metrics import Metrics
from shared.modeldir import Manifest


class FakeCompute:
    """Answers text -> text.upper(); records every call; `gate` (when cleared) holds answers."""

    def __init__(self, *, error: BaseException | None = None) -> None:
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.error = error
        self.cancelled = 0
        self.finished = 0

    async def __call__(self, texts: list[str]) -> list[Any]:
        self.calls.append(list(texts))
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        if self.error is not None:
            raise self.error
        return [t.upper() for t in texts]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def shared_counts() -> tuple[dict[str, int], Callable[[str, int], None]]:
    counts: dict[str, int] = {}

    def on_shared(scope: str, n: int) -> None:
        counts[scope] = counts.get(scope, 0) + n

    return counts, on_shared


def late() -> DeadlineExceeded:
    return DeadlineExceeded("late")


async def settle_loop() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_duplicates_in_one_batch_are_computed_once_and_fanned_out_in_order() -> None:
    async def main() -> None:
        counts, on_shared = shared_counts()
        d: Dedup[str] = Dedup(on_shared=on_shared)
        compute = FakeCompute()
        out = await d.run("truncate", ["b", "a", "b", "c", "a", "b"], compute)
        assert out == ["B", "A", "B", "C", "A", "B"]
        assert compute.calls == [["b", "a", "c"]]
        assert counts == {"batch": 3}
        assert d.in_flight == 0

    asyncio.run(main())


def test_with_dedup_off_every_text_is_computed() -> None:
    async def main() -> None:
        d: Dedup[str] = Dedup(share=False)
        compute = FakeCompute()
        assert await d.run("truncate", ["a", "a", "b"], compute) == ["A", "A", "B"]
        assert compute.calls == [["a", "a", "b"]]

    asyncio.run(main())


def test_the_option_is_part_of_the_key() -> None:
    async def main() -> None:
        d: Dedup[str] = Dedup()
        compute = FakeCompute()
        compute.gate.clear()
        first = asyncio.create_task(d.run("truncate", ["a"], compute))
        await settle_loop()
        second = asyncio.create_task(d.run("chunk", ["a"], compute))
        await settle_loop()
        compute.gate.set()
        assert await first == ["A"]
        assert await second == ["A"]
        assert compute.calls == [["a"], ["a"]]

    asyncio.run(main())


def test_a_text_in_flight_is_joined_not_computed_again() -> None:
    async def main() -> None:
        counts, on_shared = shared_counts()
        d: Dedup[str] = Dedup(on_shared=on_shared)
        compute = FakeCompute()
        compute.gate.clear()
        first = asyncio.create_task(d.run("truncate", ["a", "b"], compute))
        await settle_loop()
        assert d.in_flight == 2
        second = asyncio.create_task(d.run("truncate", ["c", "b", "a"], compute))
        await settle_loop()
        compute.gate.set()
        assert await first == ["A", "B"]
        assert await second == ["C", "B", "A"]
        assert compute.calls == [["a", "b"], ["c"]]
        assert counts == {"in_flight": 2}
        assert d.in_flight == 0  # answered texts are no longer in flight

    asyncio.run(main())


def test_an_error_reaches_every_request_awaiting_the_computation() -> None:
    async def main() -> None:
        d: Dedup[str] = Dedup()
        compute = FakeCompute(error=Overloaded("too many texts waiting"))
        compute.gate.clear()
        first = asyncio.create_task(d.run("truncate", ["a"], compute))
        await settle_loop()
        second = asyncio.create_task(d.run("truncate", ["a"], compute))
        await settle_loop()
        compute.gate.set()
        for task in (first, second):
            with pytest.raises(Overloaded, match="too many texts waiting"):
                await task
        assert compute.calls == [["a"]]
        assert d.in_flight == 0
        # A failed computation is forgotten: the next request computes again.
        compute.error = None
        assert await d.run("truncate", ["a"], compute) == ["A"]
        assert compute.calls == [["a"], ["a"]]

    asyncio.run(main())


def test_per_item_errors_are_shared_but_never_cached() -> None:
    async def main() -> None:
        cache: ResponseCache[Any] = ResponseCache(8, b"model")

        async def compute(texts: list[str]) -> list[Any]:
            return [late() if t == "x" else t.upper() for t in texts]

        d: Dedup[Any] = Dedup(cache=cache)
        out = await d.run("truncate", ["x", "y", "x"], compute)
        assert isinstance(out[0], DeadlineExceeded)
        assert out[0] is out[2]
        assert out[1] == "Y"
        assert len(cache) == 1

    asyncio.run(main())


def test_a_cancelled_first_request_does_not_cancel_what_others_await() -> None:
    async def main() -> None:
        d: Dedup[str] = Dedup()
        compute = FakeCompute()
        compute.gate.clear()
        first = asyncio.create_task(d.run("truncate", ["a", "b"], compute))
        await settle_loop()
        second = asyncio.create_task(d.run("truncate", ["b"], compute))
        await settle_loop()
        first.cancel()  # the client went away
        await settle_loop()
        assert first.cancelled()
        assert compute.cancelled == 0
        compute.gate.set()
        assert await second == ["B"]
        assert compute.calls == [["a", "b"]]
        assert compute.finished == 1

    asyncio.run(main())


def test_a_computation_nobody_awaits_is_cancelled_and_forgotten() -> None:
    async def main() -> None:
        d: Dedup[str] = Dedup()
        compute = FakeCompute()
        compute.gate.clear()
        first = asyncio.create_task(d.run("truncate", ["a"], compute))
        await settle_loop()
        second = asyncio.create_task(d.run("truncate", ["a"], compute))
        await settle_loop()
        first.cancel()
        second.cancel()
        await settle_loop()
        assert compute.cancelled == 1
        assert d.in_flight == 0
        compute.gate.set()
        assert await d.run("truncate", ["a"], compute) == ["A"]
        assert compute.calls == [["a"], ["a"]]

    asyncio.run(main())


def test_a_request_joins_only_a_computation_at_least_as_urgent() -> None:
    async def main() -> None:
        d: Dedup[str] = Dedup()
        compute = FakeCompute()
        compute.gate.clear()
        low = asyncio.create_task(d.run("truncate", ["a"], compute, rank=2))
        await settle_loop()
        high = asyncio.create_task(d.run("truncate", ["a"], compute, rank=0))
        await settle_loop()
        assert compute.calls == [["a"], ["a"]]  # high computes its own, at its own priority
        normal = asyncio.create_task(d.run("truncate", ["a"], compute, rank=1))
        await settle_loop()
        assert compute.calls == [["a"], ["a"]]  # normal joins the high computation
        compute.gate.set()
        assert [await t for t in (low, high, normal)] == [["A"], ["A"], ["A"]]
        assert d.in_flight == 0

    asyncio.run(main())


def test_a_joined_request_enforces_its_own_deadline() -> None:
    async def main() -> None:
        clock = Clock()
        d: Dedup[Any] = Dedup(clock=clock)
        compute, own = FakeCompute(), FakeCompute()
        compute.gate.clear()
        kw: dict[str, Any] = {"expired": late}
        first = asyncio.create_task(d.run("truncate", ["a"], compute, deadline=1025.0, **kw))
        await settle_loop()
        # Joins with 10 ms left of its own deadline: answered "expired" after them.
        hurried = await d.run("truncate", ["a", "b"], own, deadline=clock.now + 0.01, **kw)
        assert isinstance(hurried[0], DeadlineExceeded)
        assert hurried[1] == "B"  # its own text is awaited until the batcher answers it
        assert own.calls == [["b"]]
        assert not first.done()
        compute.gate.set()
        assert await first == ["A"]  # the computation went on for the first request

    asyncio.run(main())


def test_a_joined_request_with_time_left_recomputes_what_ran_out_of_time() -> None:
    async def main() -> None:
        clock = Clock()
        d: Dedup[Any] = Dedup(clock=clock)
        compute = FakeCompute(error=DeadlineExceeded("the deadline passed"))
        again = FakeCompute()
        compute.gate.clear()
        kw: dict[str, Any] = {"expired": late}
        first = asyncio.create_task(d.run("truncate", ["a"], compute, deadline=1001.0, **kw))
        await settle_loop()
        second = asyncio.create_task(d.run("truncate", ["a"], again, deadline=1030.0, **kw))
        await settle_loop()
        assert again.calls == []  # joined
        compute.gate.set()
        with pytest.raises(DeadlineExceeded):
            await first
        assert await second == ["A"]
        assert compute.calls == [["a"]]
        assert again.calls == [["a"]]

    asyncio.run(main())


def registry_metrics() -> tuple[CollectorRegistry, dict[str, Any]]:
    reg = CollectorRegistry()
    return reg, {
        "hits": Counter("h_total", "h", registry=reg),
        "misses": Counter("m_total", "m", registry=reg),
        "entries": Gauge("e", "e", registry=reg),
        "enabled_gauge": Gauge("on", "on", registry=reg),
    }


def test_cache_hits_misses_and_lru_eviction() -> None:
    reg, metrics = registry_metrics()
    cache: ResponseCache[str] = ResponseCache(2, b"model", **metrics)
    a, b, c = (cache.key("truncate", t) for t in "abc")
    assert cache.get(a) is None
    cache.put(a, "A")
    cache.put(b, "B")
    assert cache.get(a) == "A"  # a is now the most recently used
    cache.put(c, "C")  # evicts b, the least recently used
    assert cache.get(b) is None
    assert cache.get(a) == "A"
    assert cache.get(c) == "C"
    assert len(cache) == 2
    assert reg.get_sample_value("h_total") == 3
    assert reg.get_sample_value("m_total") == 2
    assert reg.get_sample_value("e") == 2
    assert reg.get_sample_value("on") == 1


def test_cache_keys_separate_models_options_and_texts() -> None:
    one = model_fingerprint({"model.onnx": "00" * 32, "tokenizer.json": "11" * 32})
    two = model_fingerprint({"model.onnx": "22" * 32, "tokenizer.json": "11" * 32})
    keys = {
        ResponseCache[str](1, fp).key(option, text)
        for fp in (one, two)
        for option in ("truncate", "chunk")
        for text in ("good", "good ", "\ud800 lone surrogate")
    }
    assert len(keys) == 12
    assert all(len(k) == hashlib.sha256().digest_size for k in keys)  # bounded per entry


def test_the_guard_turns_a_cache_that_cannot_pay_off_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg, metrics = registry_metrics()
    cache: ResponseCache[str] = ResponseCache(100, b"m", min_hit_rate=0.25, window=8, **metrics)
    key = cache.key("truncate", "same")
    cache.put(key, "S")
    with caplog.at_level(logging.WARNING, logger="kubesentiment.cache"):
        for i in range(7):  # 2 hits out of 8 is exactly 0.25: stays on
            if i < 2:
                assert cache.get(key) == "S"
            else:
                assert cache.get(cache.key("truncate", f"miss {i}")) is None
        assert cache.enabled
        assert cache.get(cache.key("truncate", "miss 7")) is None
        assert cache.window_hit_rate == 0.25
        assert cache.enabled
        assert cache.get(cache.key("truncate", "miss 8")) is None  # 1 of the last 8: off
        assert not cache.enabled
        assert len(cache) == 0
        assert cache.get(key) is None  # no lookups, no counts, once off
        cache.put(key, "S")
        assert len(cache) == 0
    assert [r.getMessage() for r in caplog.records].count(
        "response cache turned off: hit rate too low to pay"
    ) == 1
    assert reg.get_sample_value("on") == 0
    assert reg.get_sample_value("e") == 0
    assert reg.get_sample_value("h_total") == 2
    assert reg.get_sample_value("m_total") == 7


def test_with_a_cache_a_repeat_is_not_computed_and_results_are_identical() -> None:
    async def main() -> None:
        workload = [["a", "b", "a"], ["b", "c"], ["c", "a", "d", "d"], ["e"], ["a"]]
        plain, cached = FakeCompute(), FakeCompute()
        d_plain: Dedup[str] = Dedup(share=False)
        d_cached: Dedup[str] = Dedup(cache=ResponseCache(3, b"m"))
        for texts in workload:
            assert await d_plain.run("truncate", texts, plain) == await d_cached.run(
                "truncate", texts, cached
            )
        assert cached.calls == [["a", "b"], ["c"], ["d"], ["e"]]  # "a" was still cached last
        assert sum(map(len, plain.calls)) == 11

    asyncio.run(main())


def test_cache_with_dedup_off_serves_hits_and_computes_the_rest() -> None:
    async def main() -> None:
        d: Dedup[str] = Dedup(share=False, cache=ResponseCache(8, b"m"))
        compute = FakeCompute()
        assert await d.run("truncate", ["a", "b"], compute) == ["A", "B"]
        assert await d.run("truncate", ["b", "c", "b"], compute) == ["B", "C", "B"]
        assert await d.run("truncate", ["a", "c"], compute) == ["A", "C"]
        assert compute.calls == [["a", "b"], ["c"]]

    asyncio.run(main())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"CACHE_SIZE": "-1"}, "CACHE_SIZE='-1' is invalid", id="size"),
        pytest.param({"CACHE_MIN_HIT_RATE": "1.5"}, "CACHE_MIN_HIT_RATE='1.5'", id="rate"),
        pytest.param({"CACHE_MIN_HIT_RATE": "nan"}, "CACHE_MIN_HIT_RATE='nan'", id="nan"),
        pytest.param({"CACHE_GUARD_WINDOW": "0"}, "CACHE_GUARD_WINDOW='0'", id="window"),
        pytest.param({"DEDUP": "sometimes"}, "DEDUP='sometimes'", id="dedup"),
    ],
)
def test_bad_dedup_and_cache_settings_fail_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_build_follows_the_settings() -> None:
    manifest = Manifest("m", "1", ("negative", "positive"), 128, "int8", files={"a": "00"})
    m = Metrics.create(CollectorRegistry())
    off = Settings.from_env({"DEDUP": "off", "CACHE_SIZE": "0"})
    assert build(off, m, manifest) is None  # the plain path: no dedup object at all
    shared = build(Settings.from_env({}), m, manifest)
    assert shared is not None
    assert shared.share
    assert shared.cache is None
    cached = build(Settings.from_env({"DEDUP": "off", "CACHE_SIZE": "7"}), m, manifest)
    assert cached is not None
    assert not cached.share
    assert cached.cache is not None
    assert cached.cache.size == 7
    assert m.registry.get_sample_value("kubesentiment_cache_enabled", {"variant": "cpu-int8"}) == 1
    other = Manifest("m", "1", ("negative", "positive"), 128, "int8", files={"a": "01"})
    again = build(Settings.from_env({"CACHE_SIZE": "7"}), m, other)
    assert again is not None
    assert again.cache is not None
    assert again.cache.key("truncate", "x") != cached.cache.key("truncate", "x")
