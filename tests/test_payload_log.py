"""Prediction monitoring and sampled payload logging (issue 17, item 4).

Unit tests for the sampling decision, hashing, the settings and the per-label metrics; real
uvicorn tests with a local receiver for the logged events of /predict, /v2 and CloudEvents input,
hashed texts, a sink that is down (requests still succeed, drops counted) and the shutdown flush.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from functions.sentiment.model import Prediction
from functions.sentiment.monitoring import PredictionMetrics
from functions.sentiment.payload_log import LOGGED_TYPE, PayloadLogger, items, sampled, text_sha256
from functions.sentiment.sink import EventSink
from shared.config import ConfigError, Settings
from shared.metrics import Metrics
from tests.conftest import ROOT, LiveServer, free_port
from tests.receiver import Received, Receiver

TEXTS = ["I love this phone, the battery is great.", "Awful service, never again.", "It is blue."]
LABELS = {"negative", "neutral", "positive"}
CE_HEADERS = {
    "ce-specversion": "1.0",
    "ce-source": "/tests/payload-log",
    "ce-type": "dev.kubesentiment.sentiment.requested",
    "content-type": "application/json",
}


def prediction(label: str, score: float | None, probs: dict[str, float], tokens: int = 7) -> Any:
    return Prediction(label, score, probs, truncated=False, tokens=tokens)


# --- unit: sampling, hashing, event items --------------------------------------------------------


def test_sampling_decision() -> None:
    def never_drawn() -> float:
        raise AssertionError("a rate of 0 or 1 needs no draw")

    assert sampled(0.0, never_drawn) is False
    assert sampled(1.0, never_drawn) is True
    draws = iter([0.1, 0.3, 0.2499, 0.25])
    assert [sampled(0.25, lambda: next(draws)) for _ in range(4)] == [True, False, True, False]
    rng = random.Random(17)
    share = sum(sampled(0.1, rng.random) for _ in range(20_000)) / 20_000
    assert 0.09 < share < 0.11


def test_texts_hash_to_sha256_of_their_utf8() -> None:
    assert text_sha256("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert text_sha256("héllo") == hashlib.sha256("héllo".encode()).hexdigest()
    assert len(text_sha256("\ud800 lone surrogate")) == 64  # never raises


def test_items_pair_texts_with_predictions_and_hash_on_request() -> None:
    p1 = prediction("positive", 0.9, {"negative": 0.02, "neutral": 0.06, "positive": 0.92})
    p2 = prediction("negative", -0.8, {"negative": 0.85, "neutral": 0.1, "positive": 0.05})
    records = [(["good", "bad"], [p1, p2]), (["third"], [p1])]
    plain = items(records, hash_texts=False)
    assert [i["text"] for i in plain] == ["good", "bad", "third"]
    assert [i["label"] for i in plain] == ["positive", "negative", "positive"]
    assert plain[1]["probabilities"] == p2.probabilities
    assert plain[1]["score"] == -0.8
    hashed = items(records, hash_texts=True)
    assert all("text" not in i for i in hashed)
    assert [i["text_sha256"] for i in hashed] == [text_sha256(t) for t in ("good", "bad", "third")]
    assert "good" not in json.dumps(hashed)


# --- unit: settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"PAYLOAD_LOG_SAMPLE": "1.5"}, "PAYLOAD_LOG_SAMPLE='1.5'", id="above-1"),
        pytest.param({"PAYLOAD_LOG_SAMPLE": "-0.1"}, "PAYLOAD_LOG_SAMPLE='-0.1'", id="negative"),
        pytest.param({"PAYLOAD_LOG_SAMPLE": "nan"}, "PAYLOAD_LOG_SAMPLE='nan'", id="nan"),
        pytest.param({"PAYLOAD_LOG_SAMPLE": "0.1"}, "PAYLOAD_LOG_SINK is required", id="no-sink"),
        pytest.param({"PAYLOAD_LOG_SINK": "ftp://h/x"}, "PAYLOAD_LOG_SINK='ftp://h/x'", id="ftp"),
        pytest.param({"PAYLOAD_LOG_SINK": "http://"}, "PAYLOAD_LOG_SINK='http://'", id="no-host"),
        pytest.param(
            {"PAYLOAD_LOG_HASH_TEXTS": "sometimes"}, "PAYLOAD_LOG_HASH_TEXTS=", id="hash-bool"
        ),
        pytest.param({"PAYLOAD_LOG_MAX_PENDING": "0"}, "PAYLOAD_LOG_MAX_PENDING='0'", id="pending"),
    ],
)
def test_bad_payload_log_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_payload_log_settings_parse() -> None:
    s = Settings.from_env(
        {
            "PAYLOAD_LOG_SAMPLE": "0.25",
            "PAYLOAD_LOG_SINK": " https://sink.example/logs ",
            "PAYLOAD_LOG_HASH_TEXTS": "on",
        }
    )
    assert (s.payload_log_sample, s.payload_log_sink, s.payload_log_hash_texts) == (
        0.25,
        "https://sink.example/logs",
        True,
    )
    assert Settings().payload_log_sample == 0.0  # off by default


def test_sampling_without_a_sink_exits_2_naming_the_variable() -> None:
    env = {**os.environ, "PAYLOAD_LOG_SAMPLE": "0.5", "PAYLOAD_LOG_SINK": ""}
    done = subprocess.run(
        [sys.executable, "-m", "functions.sentiment"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "PAYLOAD_LOG_SINK" in done.stderr
    assert "Traceback" not in done.stderr


def test_off_by_default_installs_nothing(client: TestClient) -> None:
    app: Any = client.app
    assert PayloadLogger not in [m.cls for m in app.user_middleware]
    assert "payload_log" not in app.state.kubesentiment.extras


# --- unit: per-label metrics and the bounded sender -------------------------------------------


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_prediction_metrics_by_variant_and_label() -> None:
    registry = CollectorRegistry()
    watcher = PredictionMetrics(Metrics.create(registry), "v", ["negative", "neutral", "positive"])
    # Every label's series exists (at 0) before its first prediction: its share can be 0.
    before = {"label": "neutral", "variant": "v"}
    assert registry.get_sample_value("kubesentiment_predictions_total", before) == 0.0
    pos = prediction("positive", 0.9, {"negative": 0.03, "neutral": 0.04, "positive": 0.93}, 12)
    neg = prediction("negative", -0.7, {"negative": 0.8, "neutral": 0.1, "positive": 0.1}, 40)
    unscored = prediction("neutral", None, {"negative": 0.2, "neutral": 0.6, "positive": 0.2})
    watcher.observe([pos, pos, neg, unscored])
    pos_l = {"label": "positive", "variant": "v"}
    neg_l = {"label": "negative", "variant": "v"}
    neu_l = {"label": "neutral", "variant": "v"}
    assert sample(registry, "kubesentiment_predictions_total", **pos_l) == 2
    assert sample(registry, "kubesentiment_prediction_score_count", **pos_l) == 2
    # mean score = offset / count - 1
    assert sample(registry, "kubesentiment_prediction_score_offset_total", **pos_l) == (
        pytest.approx(3.8)
    )
    assert sample(registry, "kubesentiment_prediction_score_offset_total", **neg_l) == (
        pytest.approx(0.3)
    )
    assert sample(registry, "kubesentiment_prediction_score_bucket", le="-0.6", **neg_l) == 1
    assert sample(registry, "kubesentiment_prediction_score_bucket", le="0.8", **pos_l) == 0
    assert sample(registry, "kubesentiment_prediction_score_count", **neu_l) == 0  # no score
    assert sample(registry, "kubesentiment_prediction_confidence_count", **neu_l) == 1
    assert sample(registry, "kubesentiment_prediction_confidence_bucket", le="0.8", **neg_l) == 1
    assert sample(registry, "kubesentiment_prediction_confidence_bucket", le="0.9", **pos_l) == 0
    assert sample(registry, "kubesentiment_tokens_per_text_sum", **neg_l) == 40
    assert sample(registry, "kubesentiment_tokens_per_text_bucket", le="16.0", **pos_l) == 2


def test_offer_drops_when_full_instead_of_refusing() -> None:
    registry = CollectorRegistry()
    m = Metrics.create(registry)

    async def main() -> tuple[list[bool], float]:
        sink = EventSink(
            f"http://127.0.0.1:{free_port()}/",
            m,
            "v",
            max_pending=2,
            attempts=1,
            sent=m.payload_log_events,
            pending=m.payload_log_pending,
        )
        event = CloudEvent({"type": LOGGED_TYPE, "source": "/s"}, {})
        offered = [sink.offer(event) for _ in range(3)]
        pending = sample(registry, "kubesentiment_payload_log_pending", variant="v")
        await sink.close(5)
        return offered, pending

    offered, pending = asyncio.run(main())
    assert offered == [True, True, False]
    assert pending == 2
    assert (
        sample(registry, "kubesentiment_payload_log_events_total", outcome="failure", variant="v")
        == 2
    )
    assert sample(registry, "kubesentiment_events_sent_total", outcome="failure", variant="v") == 0


# --- real uvicorn -----------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def logged(received: Received) -> Any:
    return ce_http.from_binary_event(
        ce_http.HTTPMessage(headers=received.headers, body=received.body)
    )


def wait_events(receiver: Receiver, count: int) -> list[Any]:
    got = receiver.wait_for(count, deadline_s=20.0)
    assert len(got) >= count, f"{len(got)} of {count} payload events arrived"
    return [logged(r) for r in got]


def test_logged_events_for_predict_v2_and_cloudevents(
    live_server: Callable[..., LiveServer], receiver: Receiver
) -> None:
    server = live_server({"PAYLOAD_LOG_SAMPLE": "1", "PAYLOAD_LOG_SINK": receiver.url})
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        rest = c.post("/predict", json={"texts": TEXTS}, headers={"x-request-id": "pl-rest"})
        assert rest.status_code == 200, rest.text
        assert len(wait_events(receiver, 1)) == 1
        v2 = c.post(
            "/v2/models/minilm-sentiment/infer",
            json={
                "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": TEXTS[:2]}]
            },
            headers={"x-request-id": "pl-v2"},
        )
        assert v2.status_code == 200, v2.text
        assert len(wait_events(receiver, 2)) == 2
        ce = c.post(
            "/",
            json={"items": [{"id": "a", "text": TEXTS[2]}, {"id": "b", "text": ""}]},
            headers={**CE_HEADERS, "ce-id": "ev-1", "x-request-id": "pl-ce"},
        )
        assert ce.status_code == 200, ce.text
        events = wait_events(receiver, 3)
        health = c.get("/health/readiness")  # not an inference: nothing logged
        assert health.status_code == 200
    by_request = {e.get_extension("requestid"): e for e in events}
    assert set(by_request) == {"pl-rest", "pl-v2", "pl-ce"}
    for event in events:
        assert event.get_type() == LOGGED_TYPE
        assert event.get_source() == "/kubesentiment/cpu-int8"
        data = event.get_data()
        assert data["status"] == 200
        assert data["model"] == "minilm-sentiment"
        assert data["variant"] == "cpu-int8"
        assert data["texts_hashed"] is False
        for item in data["items"]:
            assert item["label"] in LABELS
            assert sum(item["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
            assert item["tokens"] > 2
    rest_data = by_request["pl-rest"].get_data()
    assert rest_data["route"] == "/predict"
    assert rest_data["request_id"] == "pl-rest"
    assert [i["text"] for i in rest_data["items"]] == TEXTS
    results = rest.json()["results"]
    assert [i["label"] for i in rest_data["items"]] == [r["label"] for r in results]
    assert [i["probabilities"] for i in rest_data["items"]] == [r["probabilities"] for r in results]
    v2_data = by_request["pl-v2"].get_data()
    assert v2_data["route"].startswith("/v2/models/")
    assert [i["text"] for i in v2_data["items"]] == TEXTS[:2]
    labels_out = next(o for o in v2.json()["outputs"] if o["name"] == "label")
    assert [i["label"] for i in v2_data["items"]] == labels_out["data"]
    ce_data = by_request["pl-ce"].get_data()
    assert ce_data["route"] == "/"
    # The empty text got a per-item error, not a prediction: only the classified text is logged.
    assert [i["text"] for i in ce_data["items"]] == [TEXTS[2]]
    assert len(receiver.requests) == 3
    metrics = httpx.get(f"{server.url}/metrics", timeout=5.0).text
    assert (
        'kubesentiment_payload_log_events_total{outcome="success",variant="cpu-int8"} 3.0'
        in metrics
    )


def test_hashed_texts_never_leave_the_function(
    live_server: Callable[..., LiveServer], receiver: Receiver
) -> None:
    server = live_server(
        {
            "PAYLOAD_LOG_SAMPLE": "1",
            "PAYLOAD_LOG_SINK": receiver.url,
            "PAYLOAD_LOG_HASH_TEXTS": "on",
        }
    )
    r = httpx.post(f"{server.url}/predict", json={"texts": TEXTS[:2]}, timeout=30.0)
    assert r.status_code == 200
    (event,) = wait_events(receiver, 1)
    data = event.get_data()
    assert data["texts_hashed"] is True
    assert [i["text_sha256"] for i in data["items"]] == [text_sha256(t) for t in TEXTS[:2]]
    assert all("text" not in i for i in data["items"])
    for text in TEXTS[:2]:
        assert text.encode() not in receiver.requests[0].body


def _metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5.0).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_sink_down_requests_succeed_and_drops_are_counted(
    live_server: Callable[..., LiveServer],
) -> None:
    down = f"http://127.0.0.1:{free_port()}/nobody-listens"
    server = live_server(
        {"PAYLOAD_LOG_SAMPLE": "1", "PAYLOAD_LOG_SINK": down, "PAYLOAD_LOG_MAX_PENDING": "1"}
    )
    n = 8
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        for i in range(n):
            r = c.post("/predict", json={"text": f"{TEXTS[0]} {i}"})
            assert r.status_code == 200, r.text
    name = "kubesentiment_payload_log_events_total"
    deadline = time.monotonic() + 20.0
    lost = 0.0
    while time.monotonic() < deadline:
        dropped = _metric(server.url, name, outcome="dropped")
        failed = _metric(server.url, name, outcome="failure")
        lost = dropped + failed
        if lost == n:
            break
        time.sleep(0.1)
    assert lost == n, (dropped, failed)
    assert dropped >= 1
    assert failed >= 1
    assert _metric(server.url, name, outcome="success") == 0


class FlakyReceiver:
    """Holds the first POST for `hold_s` and answers it 503 (Retry-After: 1); accepts the next.

    The accepted attempt comes seconds after the request was answered, so it only arrives when
    the function keeps delivering after SIGTERM (the flush), not when it exits at once."""

    def __init__(self, hold_s: float) -> None:
        self.attempts = 0
        self.accepted: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.attempts += 1
                if receiver.attempts == 1:
                    time.sleep(hold_s)
                    self.send_response(503)
                    self.send_header("retry-after", "1")
                else:
                    receiver.accepted.append(body)
                    self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_events_in_flight_are_flushed_at_shutdown(
    live_server: Callable[..., LiveServer],
) -> None:
    flaky = FlakyReceiver(hold_s=1.0)
    try:
        server = live_server({"PAYLOAD_LOG_SAMPLE": "1", "PAYLOAD_LOG_SINK": flaky.url})
        r = httpx.post(f"{server.url}/predict", json={"text": TEXTS[1]}, timeout=30.0)
        assert r.status_code == 200
        assert server.stop() == 0  # SIGTERM at once: the event's first attempt is still held
        assert flaky.attempts == 2, server.logs()[-2000:]
        assert len(flaky.accepted) == 1
        assert TEXTS[1].encode() in flaky.accepted[0]
        assert "cancelled at shutdown" not in server.logs()
    finally:
        flaky.close()


def test_texts_answered_before_a_deadline_are_watched_and_logged(settings: Settings) -> None:
    """A batch cut by its deadline still answers the texts run in time: they are counted and
    payload-logged; the expired ones are not."""
    from functions.sentiment import core
    from functions.sentiment.monitoring import payload_record
    from shared.errors import DeadlineExceeded

    registry = CollectorRegistry()
    state = core.AppState(settings=settings, metrics=Metrics.create(registry))
    ran = prediction("positive", 0.9, {"negative": 0.03, "neutral": 0.04, "positive": 0.93})

    class Classifier:
        labels = ("negative", "neutral", "positive")

    class Dedup:
        async def run(self, *args: Any, **kwargs: Any) -> list[Any]:
            return [ran, DeadlineExceeded("late")]

    state.classifier, state.batcher = Classifier(), object()  # type: ignore[assignment]
    state.dedup = Dedup()  # type: ignore[assignment]
    records: list[Any] = []

    async def main() -> None:
        token = payload_record.set(records)
        try:
            await core.classify(state, ["in time", "too late"])
        finally:
            payload_record.reset(token)

    with pytest.raises(DeadlineExceeded) as e:
        asyncio.run(main())
    assert e.value.partial == [ran, None]
    labels = {"label": "positive", "variant": settings.variant}
    assert sample(registry, "kubesentiment_predictions_total", **labels) == 1
    assert records == [(["in time"], [ran])]
