"""The peer benchmark's own parts: the shared engine, the text mix, the load generator, the goals.

The peer servers themselves run in their own virtualenvs; `make bench-peers` proves each one
answers like the in-process reference (`parity` in docs/peers.json). Here: the engine every peer
uses has our session options and our answers, the texts have the promised length mix, the load
generator counts what a real HTTP server answers, and the goal check reads figures correctly.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from benchmarks.peers import contention, goals, loadgen, report, run, texts
from benchmarks.peers.engine import Engine
from benchmarks.peers.report import targets
from benchmarks.peers.systems import by_key
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


def _figures(rps32: float, rps128: float, p50: float, cpu: float) -> dict[str, float]:
    return {"cold_start_s": 0.5, "p50_ms_c1": p50, "p99_ms_c1": 2 * p50, "rps_c8": rps32,
            "rps_c32": rps32, "rps_c128": rps128, "p99_ms_c32": 90.0, "rss_mib": 180.0,
            "cpu_s_per_1k": cpu, "cpu_s_per_1k_c8": cpu, "cpu_s_per_1k_c32": cpu,
            "cpu_s_per_1k_c128": cpu}  # fmt: skip


def test_issue_26_goals_per_mode() -> None:
    systems = {
        "kubesentiment-int8": _figures(140.0, 130.0, 6.0, 9.0),
        "kubesentiment-int8-aa": _figures(150.0, 120.0, 6.1, 9.5),
        "kserve-v1": _figures(100.0, 110.0, 5.5, 11.0),
        "litserve": _figures(105.0, 90.0, 9.0, 8.5),
    }
    got = [(text, ok) for text, ok in goals.targets(systems)]
    # A/A 150/140 = 7.1 % spread; CPU 9.0 > litserve's 8.5 at every level; c32 140/105 = 1.33x;
    # c128 130/110 = 1.18x; p50 6.0 > kserve's 5.5.
    assert [ok for _, ok in got] == [True, False, False, False, True, False, False]
    assert got[0][0] == "A/A spread at c32 7.1%, goal <= 10%"
    assert "(litserve)" in got[1][0]
    assert "(kserve-v1)" in got[-1][0]
    lines = goals.flattery("contended", {"systems": systems})
    assert any("is larger than the A/A spread of two identical servers (7%)" in x for x in lines)


def test_both_modes_reach_the_json_and_the_markdown(tmp_path: Path) -> None:
    systems = by_key(["kubesentiment-int8", "kubesentiment-int8-aa", "kserve-v1"])
    args = run.parse_args(["--passes", "1", "--levels", "32", "128", "--duration", "2"])
    args.peer_batch = 2
    level = {"concurrency": 32, "rps": 100.0, "p50_ms": 20.0, "p99_ms": 60.0, "errors": {},
             "quantiles_ms": [float(q) for q in range(101)], "client_cpu_ms_per_request": 0.3,
             "ok_total": 500, "cpu_s_per_1k": 9.0}  # fmt: skip
    one = {"cold_start_s": [0.5], "c1": {**level, "concurrency": 1}, "rss_mib": 180.0,
           "levels": [level, {**level, "concurrency": 128, "rps": 90.0, "cpu_s_per_1k": 9.5}],
           "cpu_s_per_1k": 9.2}  # fmt: skip
    ceiling = {"batch_1": 150.0, "padded_2": 140.0, "best": 150.0, "best_padded_batch": 2}
    modes = {
        m.name: report.build_mode(
            m,
            args,
            systems,
            {s.key: [one] for s in systems},
            {"kserve-v1": "pass 2: RuntimeError: gone"} if m.name == "contended" else {},
            ceiling,
        )
        for m in (contention.QUIET, contention.CONTENDED)
    }
    results = report.build({"cores": 2, "cpu": "x", "date": "d", "loadavg_at_start": 0.1,
                            "onnxruntime": "1"}, texts.distribution(texts.load(INT8, 20), INT8),
                           args, modes, {"infinity": "exited with 1"}, {}, "cmd")  # fmt: skip
    assert list(results["modes"]) == ["quiet", "contended"]
    contended = results["modes"]["contended"]
    assert contended["load"] == contention.CONTENDED.description
    assert contended["load_command"].startswith("stress-ng --cpu 1 --cpu-load 50")
    assert contended["systems"]["kserve-v1"]["cpu_s_per_1k_c128"] == 9.5
    assert contended["failed_passes"] == {"kserve-v1": "pass 2: RuntimeError: gone"}
    assert results["modes"]["quiet"]["ceiling_texts_per_s"] == 150.0
    report.write(results, tmp_path)
    md = (tmp_path / "peers.md").read_text()
    assert "## Quiet mode" in md
    assert "## Contended mode" in md
    assert md.count("| kubesentiment-int8 | 0.50 |") == 2
    assert "### What could flatter us in the contended mode" in md
    assert "- infinity: exited with 1" in md
    assert (tmp_path / "peers" / "throughput_contended.png").exists()
    assert json.loads((tmp_path / "peers.json").read_text()) == results


@pytest.mark.skipif(shutil.which("stress-ng") is None, reason="stress-ng not installed")
def test_the_contended_load_runs_for_the_block_and_stops() -> None:
    def loads() -> list[str]:
        return [
            p.read_text().split("\0")[0]
            for p in Path("/proc").glob("[0-9]*/cmdline")
            if p.exists() and "stress-ng" in p.read_text()
        ]

    before = len(loads())
    with contention.background(contention.CONTENDED):
        assert len(loads()) >= before + 2  # stress-ng and its CPU worker
    deadline = time.monotonic() + 10
    while len(loads()) > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(loads()) == before
    assert contention.QUIET.available() is None
