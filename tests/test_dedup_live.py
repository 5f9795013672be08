"""Duplicate work and the response cache through real uvicorn: answers in order, identical bodies
with and without them, metrics that move."""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.integration

GOOD = "An absolute delight from the first scene to the last, I loved every minute."
BAD = "Dreadful: the plot falls apart and the acting is wooden, a total waste of money."
MEH = "The parcel arrived on Tuesday."
LONG = " ".join(f"The {i}th scene drags on, yet the cast does fine work." for i in range(60))


def metric(server: LiveServer, name: str, **labels: str) -> float:
    """The sample's value in the server's /metrics (0 when absent)."""
    want = "".join(rf'(?=[^}}]*{k}="{re.escape(v)}")' for k, v in labels.items())
    pattern = rf"^{name}\{{{want}[^}}]*\}} (\S+)$"
    match = re.search(pattern, httpx.get(f"{server.url}/metrics").text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_batch_with_duplicates_answers_every_item_in_order(
    live_server: Callable[..., LiveServer],
) -> None:
    server = live_server({"DEDUP": "on"})
    url = f"{server.url}/predict"
    unique = httpx.post(url, json={"texts": [GOOD, BAD, MEH]}, timeout=30).json()["results"]
    assert [r["label"] for r in unique][:2] == ["positive", "negative"]
    before = metric(server, "kubesentiment_deduplicated_texts_total", scope="batch")
    run_before = metric(server, "kubesentiment_batch_size_sum")
    batch = [GOOD, BAD, GOOD, MEH, BAD, GOOD]
    r = httpx.post(url, json={"texts": batch}, timeout=30)
    assert r.status_code == 200, r.text
    answered = r.json()["results"]
    # The unique texts make the same single run as before, so the answers are exactly equal.
    by_text = dict(zip([GOOD, BAD, MEH], unique, strict=True))
    assert answered == [by_text[t] for t in batch]
    after = metric(server, "kubesentiment_deduplicated_texts_total", scope="batch")
    assert after - before == 3
    assert metric(server, "kubesentiment_batch_size_sum") - run_before == 3  # texts run: 3, not 6
    assert metric(server, "kubesentiment_cache_enabled") == 0  # CACHE_SIZE defaults to off


def workload() -> list[tuple[str, dict[str, Any]]]:
    """Batches with duplicates, repeats across requests, chunked long texts, v2 and singles."""
    texts = [GOOD, BAD, MEH, f"{GOOD} Really.", f"{BAD} Never again.", "ok", "OK", "ok "]
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(24):
        picked = [texts[(i * 7 + k * 3) % len(texts)] for k in range(1 + i % 5)]
        out.append(("/predict", {"texts": [*picked, picked[0]]}))
        out.append(("/predict", {"text": texts[i % len(texts)]}))
        if i % 6 == 0:
            out.append(("/predict", {"texts": [LONG, GOOD, LONG], "long_text": "chunk"}))
            out.append(("/predict", {"texts": [LONG, GOOD, LONG]}))
        if i % 4 == 0:
            infer = {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES",
                                 "data": [MEH, picked[0], MEH]}]}  # fmt: skip
            out.append(("/v2/models/minilm-sentiment/infer", infer))
    return out


def test_dedup_and_cache_answer_bit_for_bit_like_neither(
    live_server: Callable[..., LiveServer],
) -> None:
    # Runs of one text: a text's answer then cannot depend on which texts share its ONNX run (with
    # the int8 model's dynamic quantization it moves in the third decimal with them, batching or
    # not: see the README), so any difference here would be the dedup's or the cache's.
    model = {"BATCH_MAX_SIZE": "1"}
    cached = live_server({**model, "DEDUP": "on", "CACHE_SIZE": "5", "CACHE_MIN_HIT_RATE": "0"})
    plain = live_server({**model, "DEDUP": "off", "CACHE_SIZE": "0"})
    requests = workload()

    def send(server: LiveServer) -> list[bytes]:
        def one(req: tuple[str, dict[str, Any]]) -> bytes:
            r = httpx.post(f"{server.url}{req[0]}", json=req[1], timeout=60)
            assert r.status_code == 200, r.text
            return r.content

        with ThreadPoolExecutor(8) as pool:  # concurrent: requests share and join computations
            return list(pool.map(one, requests))

    assert send(cached) == send(plain)
    assert metric(cached, "kubesentiment_cache_hits_total") > 0
    assert metric(cached, "kubesentiment_cache_misses_total") > 0
    assert 0 < metric(cached, "kubesentiment_cache_entries") <= 5  # bounded by CACHE_SIZE
    assert metric(cached, "kubesentiment_cache_enabled") == 1
    assert metric(cached, "kubesentiment_deduplicated_texts_total", scope="batch") > 0
    assert metric(plain, "kubesentiment_deduplicated_texts_total", scope="batch") == 0
    assert metric(plain, "kubesentiment_cache_hits_total") == 0
