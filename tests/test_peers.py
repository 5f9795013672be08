"""The peer benchmark's own parts: the shared engine, the text mix, the load generator, the goals.

The peer servers themselves run in their own virtualenvs; `make bench-peers` proves each one
answers like the in-process reference (`parity` in docs/peers.json). Here: the engine every peer
uses has our session options and our answers, the texts have the promised length mix, the load
generator counts what a real HTTP server answers, and the goal check reads figures correctly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from benchmarks.peers import loadgen, texts
from benchmarks.peers.engine import Engine
from benchmarks.peers.report import targets
from functions.sentiment.model import Classifier

ROOT = Path(__file__).resolve().parent.parent
INT8 = ROOT / "models" / "minilm-sentiment-int8"
SAMPLE = [
    "I love it",
    "Worst purchase ever, it broke after two days and support never answered my emails.",
    "fine",
]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(INT8, threads=2)


def test_engine_session_has_the_functions_options(engine: Engine) -> None:
    ours = Classifier.load(INT8, intra_op_threads=2).session.get_session_options()
    theirs = engine.session.get_session_options()
    for name in (
        "intra_op_num_threads",
        "inter_op_num_threads",
        "execution_mode",
        "graph_optimization_level",
    ):
        assert getattr(theirs, name) == getattr(ours, name), name
    key = "session.intra_op.allow_spinning"
    assert theirs.get_session_config_entry(key) == ours.get_session_config_entry(key) == "0"


def test_engine_answers_like_the_function(engine: Engine) -> None:
    classifier = Classifier.load(INT8, intra_op_threads=2)
    for text in SAMPLE:  # batch 1 each: dynamic int8 scales then match exactly
        ours = classifier.predict([text])[0]
        theirs = engine.predict([text])[0]
        assert theirs["label"] == ours.label
        for label, p in ours.probabilities.items():
            assert theirs["probabilities"][label] == pytest.approx(p, abs=2e-6)


def test_engine_pads_a_mixed_batch(engine: Engine) -> None:
    batch = engine.probabilities(SAMPLE)
    assert batch.shape == (3, len(engine.labels))
    np.testing.assert_allclose(batch.sum(axis=1), 1.0, atol=1e-4)
    assert [engine.labels[int(i)] for i in batch.argmax(axis=1)][:2] == ["positive", "negative"]


def test_texts_follow_the_length_mix() -> None:
    pairs = texts.load(INT8, n=200)
    assert len(pairs) == 200
    assert pairs == texts.load(INT8, n=200), "the same texts on every run"
    kinds = [k for k, _ in pairs]
    for kind, share in texts.SHARES.items():
        assert kinds.count(kind) == round(200 * share)
    dist = texts.distribution(pairs, INT8)
    assert texts.LONG_MIN <= dist["long"]["min"] <= dist["long"]["max"] <= texts.LONG_MAX  # type: ignore[index]
    assert dist["short"]["max"] < texts.LONG_MIN  # type: ignore[index]


@pytest.fixture
def flaky_server() -> Iterator[str]:
    """A real aiohttp server on loopback, in its own thread: every third request gets 503."""
    calls = {"n": 0}

    async def handle(request: web.Request) -> web.Response:
        calls["n"] += 1
        await request.read()
        if calls["n"] % 3 == 0:
            return web.Response(status=503)
        return web.json_response({"label": "positive"})

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/predict", handle)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/predict"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def test_loadgen_counts_successes_and_errors(flaky_server: str) -> None:
    spec = {
        "url": flaky_server,
        "bodies": ['{"text": "a"}', '{"text": "b"}'],
        "phases": [{"concurrency": 4, "warmup_s": 0.2, "duration_s": 0.8}],
    }
    (r,) = asyncio.run(loadgen.run(spec))
    assert r["concurrency"] == 4
    assert r["ok"] > 0
    assert r["errors"].get("503", 0) > 0
    assert r["ok"] == pytest.approx(2 * r["errors"]["503"], rel=0.2)
    assert r["rps"] == pytest.approx(r["ok"] / 0.8)
    assert r["quantiles_ms"] == sorted(r["quantiles_ms"])
    assert len(r["quantiles_ms"]) == 101
    assert r["ok_total"] >= r["ok"]
    assert r["client_cpu_ms_per_request"] > 0


def test_targets_compare_ours_with_the_best_peer() -> None:
    systems = {
        "kubesentiment-int8": {"rps_c32": 300.0, "rps_c128": 290.0, "p50_ms_c1": 4.0,
                               "cold_start_s": 0.4, "rss_mib": 150.0},
        "litserve": {"rps_c32": 100.0, "rps_c128": 250.0, "p50_ms_c1": 5.0,
                     "cold_start_s": 3.0, "rss_mib": 400.0},
        "bentoml": {"rps_c32": 180.0, "rps_c128": 150.0, "p50_ms_c1": 3.0,
                    "cold_start_s": 1.0, "rss_mib": 140.0},
    }  # fmt: skip
    verdicts = [ok for _, ok in targets(systems, 350.0)]
    # c32 300/180 = 1.67x; c128 290/250 = 1.16x; p50 4.0 > 3.0; cold 0.4 s > 1.0/3 s;
    # RSS 150 > 140 MiB; c32 300/350 = 86 % of the ceiling.
    assert verdicts == [True, False, False, False, False, True]
